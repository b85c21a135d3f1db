"""The data half of REACT's retrieval stage (Liu et al., "Learning Customized Visual Models with
Retrieval-Augmented Knowledge", CVPR 2023): a web-scale image-caption corpus, its stored embeddings,
FAISS indexes over them, class-name queries and the retrieved pairs written as webdataset shards.

Nothing here loads or runs a model: embedding the corpus and the queries, and the command line
(``python -m callbacks.retrieval_stage build-index | retrieve``), live in :mod:`callbacks.retrieval_stage`.

* :mod:`.corpus`: corpus shards (webdataset tars or manifest row chunks), ``corpus.json`` and the
  per-shard embedding files ``embeddings/<shard>.npz``;
* :mod:`.index`: ``flat`` / ``hnsw`` / ``ivfpq`` inner-product indexes (``<modality>.faiss`` +
  ``<modality>.json`` build parameters + ``metadata.jsonl``), reloading and recall against exact search;
* :mod:`.queries`: class names, prompt templates and per-class search with de-duplication;
* :mod:`.output`: hits written as ``retrieved-%06d.tar`` shards with the original image bytes.
"""

from datamodules.retrieval.corpus import (
    MANIFEST_SUFFIXES,
    MODALITIES,
    CorpusShard,
    ShardImages,
    list_corpus_shards,
    load_embeddings,
    read_corpus,
)
from datamodules.retrieval.index import (
    IndexConfig,
    LoadedIndex,
    approximate_recall,
    build_faiss_index,
    build_index,
    load_index,
)
from datamodules.retrieval.output import write_retrieved
from datamodules.retrieval.queries import MODE_MODALITY, Hit, load_classnames, load_templates, search_classes

__all__ = [
    "MANIFEST_SUFFIXES",
    "MODALITIES",
    "MODE_MODALITY",
    "CorpusShard",
    "Hit",
    "IndexConfig",
    "LoadedIndex",
    "ShardImages",
    "approximate_recall",
    "build_faiss_index",
    "build_index",
    "list_corpus_shards",
    "load_classnames",
    "load_embeddings",
    "load_index",
    "load_templates",
    "read_corpus",
    "search_classes",
    "write_retrieved",
]
