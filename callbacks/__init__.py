"""Evaluation and training callbacks of vlzoo."""

from callbacks.compositionality import CompositionalityEvaluation, multiple_choice_accuracy
from callbacks.progress_log import FileProgressLog
from callbacks.retrieval import RetrievalEvaluation, retrieval_chance, retrieval_recall
from callbacks.run_summary import RunSummary
from callbacks.suite import EvaluationSuite, evaluate_suite, load_benchmarks
from callbacks.zero_shot import (
    class_embeddings,
    classification_metrics,
    evaluate_zero_shot,
    format_prompt,
    zero_shot_logits,
)

__all__ = [
    "CompositionalityEvaluation",
    "EvaluationSuite",
    "FileProgressLog",
    "RetrievalEvaluation",
    "RunSummary",
    "class_embeddings",
    "classification_metrics",
    "evaluate_suite",
    "evaluate_zero_shot",
    "format_prompt",
    "load_benchmarks",
    "multiple_choice_accuracy",
    "retrieval_chance",
    "retrieval_recall",
    "zero_shot_logits",
]
