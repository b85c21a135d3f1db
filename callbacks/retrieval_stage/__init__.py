"""REACT's retrieval stage, the steps that need a model: embed a web-scale image-caption corpus once
(resumable, sharded over ``torchrun`` ranks), index it with FAISS and retrieve the pairs most
relevant to a task's class names. The data half (corpus, indexes, queries, output shards) is
:mod:`datamodules.retrieval`; the command line is ``python -m callbacks.retrieval_stage`` (:mod:`.cli`).
"""

from callbacks.retrieval_stage.cli import main
from callbacks.retrieval_stage.stage import check_same_model, embed_corpus, embed_queries, model_fingerprint, retrieve

__all__ = ["check_same_model", "embed_corpus", "embed_queries", "main", "model_fingerprint", "retrieve"]
