"""FAISS inner-product indexes over a corpus's stored embeddings: build, save, reload, search, recall."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from datamodules.retrieval.corpus import CorpusShard, atomic_path, load_embeddings, read_corpus, write_json


@dataclass
class IndexConfig:
    """FAISS inner-product index: ``flat`` (exact), ``hnsw`` (graph) or ``ivfpq`` (compressed, large corpora).

    ``hnsw_m`` / ``ef_construction`` / ``ef_search``: HNSW links per node, build and search beam widths.
    ``nlist`` / ``nprobe``: IVF cells and cells visited per query; ``pq_m`` sub-quantizers of
    ``pq_nbits`` bits each (``pq_m`` must divide the dimension). IVF-PQ needs at least
    ``max(nlist, 2 ** pq_nbits)`` training vectors (FAISS recommends 39x that).
    """

    kind: str = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    nlist: int = 1024
    pq_m: int = 16
    pq_nbits: int = 8
    nprobe: int = 32

    def params(self) -> dict[str, int]:
        """The parameters that matter for ``kind``, under FAISS's names."""
        if self.kind == "flat":
            return {}
        if self.kind == "hnsw":
            return {"M": self.hnsw_m, "efConstruction": self.ef_construction, "efSearch": self.ef_search}
        if self.kind == "ivfpq":
            return {"nlist": self.nlist, "pq_m": self.pq_m, "pq_nbits": self.pq_nbits, "nprobe": self.nprobe}
        raise ValueError(f"index kind must be flat, hnsw or ivfpq, got {self.kind!r}")


def _set_search_params(index: faiss.Index, kind: str, params: dict[str, int]) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivfpq":
        index.nprobe = params["nprobe"]


def build_faiss_index(vectors: np.ndarray, config: IndexConfig) -> faiss.Index:
    """An inner-product FAISS index over ``vectors`` ``[N, D]`` (float32), trained if it needs to be."""
    params = config.params()
    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if config.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
    else:
        if dim % config.pq_m:
            raise ValueError(f"pq_m={config.pq_m} must divide the embedding dimension {dim}")
        needed = max(config.nlist, 2**config.pq_nbits)
        if n < needed:
            raise ValueError(
                f"IVF-PQ with nlist={config.nlist}, pq_nbits={config.pq_nbits} needs at least {needed} training "
                f"vectors (FAISS recommends {39 * needed}), got {n}: lower nlist / pq_nbits or use --kind hnsw"
            )
        index = faiss.IndexIVFPQ(
            faiss.IndexFlatIP(dim), dim, config.nlist, config.pq_m, config.pq_nbits, faiss.METRIC_INNER_PRODUCT
        )
        index.train(vectors)
    _set_search_params(index, config.kind, params)
    index.add(vectors)
    return index


def _search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, index.ntotal)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def _recall(approximate: faiss.Index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, truth = _search(exact, queries, k)
    _, found = _search(approximate, queries, k)
    return float(np.mean([len(set(t) & set(f[f >= 0])) / len(t) for t, f in zip(truth, found)]))


def _recall_queries(vectors: np.ndarray, queries: np.ndarray | int) -> np.ndarray:
    if isinstance(queries, int):
        if queries < 1:
            raise ValueError(f"need at least one recall query, got {queries}")
        sample = np.random.default_rng(0).choice(len(vectors), size=min(queries, len(vectors)), replace=False)
        return vectors[np.sort(sample)]
    if queries.ndim != 2 or queries.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries must be [Q, {vectors.shape[1]}], got {tuple(queries.shape)}")
    return queries


def build_index(
    index_dir: str | Path,
    modality: str = "image",
    config: IndexConfig | None = None,
    recall_k: int = 10,
    recall_queries: int = 1000,
) -> dict[str, Any]:
    """Index the embedded corpus's ``modality`` vectors; write ``<modality>.faiss``, ``<modality>.json``
    (build parameters, model, size, recall@``recall_k`` vs exact search on ``recall_queries`` corpus
    vectors) and ``metadata.jsonl``. Returns the build parameters."""
    config = config or IndexConfig()
    index_dir = Path(index_dir)
    vectors, metadata = load_embeddings(index_dir, modality)
    index = build_faiss_index(vectors, config)
    queries = _recall_queries(vectors, recall_queries)
    model = json.loads((index_dir / "embeddings" / "model.json").read_text())
    build = {
        "kind": config.kind,
        "params": config.params(),
        "modality": modality,
        "model": model,
        "num_vectors": int(index.ntotal),
        "dim": int(index.d),
        "num_shards": len(read_corpus(index_dir)),
        "faiss_version": faiss.__version__,
        "approximate_recall": {
            "k": recall_k,
            "queries": len(queries),
            "recall": _recall(index, vectors, queries, recall_k),
        },
    }
    with atomic_path(index_dir / f"{modality}.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(index_dir / "metadata.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in metadata))
    write_json(index_dir / f"{modality}.json", build)
    return build


@dataclass
class LoadedIndex:
    """A saved index with its metadata rows, build parameters and corpus shards."""

    index: faiss.Index
    metadata: list[dict[str, Any]]
    build: dict[str, Any]
    shards: dict[str, CorpusShard] = field(repr=False)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and rows ``[Q, min(k, N)]`` of the best matches (row -1: fewer results found)."""
        if queries.ndim != 2 or queries.shape[1] != self.index.d:
            raise ValueError(f"queries of dimension {queries.shape[-1]} do not match the index's {self.index.d}")
        return _search(self.index, queries, k)


def load_index(index_dir: str | Path, modality: str = "image") -> LoadedIndex:
    """Reload an index written by :func:`build_index` (no re-embedding)."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise FileNotFoundError(f"index directory {index_dir} does not exist")
    files = [index_dir / f"{modality}.faiss", index_dir / f"{modality}.json", index_dir / "metadata.jsonl"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{index_dir} has no {modality} index (missing {missing}): run build-index")
    index = faiss.read_index(str(files[0]))
    build = json.loads(files[1].read_text())
    _set_search_params(index, build["kind"], build["params"])
    metadata = [json.loads(line) for line in files[2].read_text().splitlines()]
    if len(metadata) != index.ntotal:
        raise ValueError(f"{files[2]} has {len(metadata)} rows for {index.ntotal} vectors: rebuild the index")
    return LoadedIndex(index, metadata, build, {s.name: s for s in read_corpus(index_dir)})


def approximate_recall(
    index_dir: str | Path, queries: np.ndarray | int = 1000, k: int = 10, modality: str = "image"
) -> float:
    """Recall@k of the saved index against exact (flat) search over the same vectors, for ``queries``
    ``[Q, D]`` or that many corpus vectors sampled with a fixed seed."""
    loaded = load_index(index_dir, modality)
    vectors, _ = load_embeddings(index_dir, modality)
    return _recall(loaded.index, vectors, _recall_queries(vectors, queries), k)

