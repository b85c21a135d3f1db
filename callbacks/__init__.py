"""Evaluation and training callbacks of vlzoo."""

from callbacks.compositionality import CompositionalityEvaluation, multiple_choice_accuracy
from callbacks.retrieval import RetrievalEvaluation, retrieval_chance, retrieval_recall

__all__ = [
    "CompositionalityEvaluation",
    "RetrievalEvaluation",
    "multiple_choice_accuracy",
    "retrieval_chance",
    "retrieval_recall",
]
