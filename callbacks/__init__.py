"""Evaluation and training callbacks of vlzoo."""

from callbacks.compositionality import CompositionalityEvaluation, multiple_choice_accuracy
from callbacks.progress_log import FileProgressLog
from callbacks.retrieval import RetrievalEvaluation, retrieval_chance, retrieval_recall
from callbacks.run_summary import RunSummary
from callbacks.suite import EvaluationSuite, evaluate_suite, load_benchmarks
from callbacks.vqa import AnswerWriter, VQAEvaluation, majority_answers, normalize_answer, vqa_scores
from callbacks.zero_shot import (
    class_embeddings,
    classification_metrics,
    evaluate_zero_shot,
    format_prompt,
    zero_shot_logits,
)

__all__ = [
    "AnswerWriter",
    "CompositionalityEvaluation",
    "EvaluationSuite",
    "FileProgressLog",
    "RetrievalEvaluation",
    "RunSummary",
    "VQAEvaluation",
    "class_embeddings",
    "classification_metrics",
    "evaluate_suite",
    "evaluate_zero_shot",
    "format_prompt",
    "load_benchmarks",
    "majority_answers",
    "multiple_choice_accuracy",
    "normalize_answer",
    "retrieval_chance",
    "retrieval_recall",
    "vqa_scores",
    "zero_shot_logits",
]
