"""REACT's retrieval stage (Liu et al., "Learning Customized Visual Models with Retrieval-Augmented
Knowledge", CVPR 2023): embed a web-scale image-caption corpus once, index it with FAISS, and
retrieve the pairs most relevant to a task's class names.

    python -m datamodules.retrieval build-index --corpus 'kb/{000000..000009}.tar' \\
        (--checkpoint last.ckpt [--module zoo.CLIP] | --model ViT-B-32-quickgelu --pretrained openai) \\
        --out index_dir [--kind hnsw|flat|ivfpq] [--modality image|text|both] [--batch-size 256]
    python -m datamodules.retrieval retrieve --index index_dir --classnames classes.txt | "red circle,blue square" \\
        [--templates default|templates.txt] [--mode t2i|t2t] [--k 100] --out retrieved/ [--dedup-across-classes]

``build-index`` embeds every corpus shard (webdataset tars, or fixed-size row chunks of a manifest)
into ``index_dir/embeddings/<shard>.npz`` (L2-normalised image and first-caption embeddings, keys,
all captions), skipping shards already embedded, so an interrupted run resumes; under ``torchrun``
rank r embeds shards r, r + w, ... Rank 0 then builds one inner-product index per modality
(``image.faiss`` / ``text.faiss`` + ``image.json`` / ``text.json`` build parameters) over the shard
files read in corpus order, writes ``metadata.jsonl`` (one row per vector) and prints the
approximate index's recall@k against exact search. ``retrieve`` embeds one query per class x prompt
template, takes the top-K of each query from the image index (``t2i``) or the caption index
(``t2t``), de-duplicates each class's union (and optionally across classes), and writes the
retrieved pairs, original image bytes and captions, as ``out/retrieved-%06d.tar`` webdataset shards
plus ``out/summary.json`` (unique pairs per class).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from braceexpand import braceexpand
from lightning.pytorch import LightningModule
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from callbacks.embedding import embed_texts
from callbacks.zero_shot import class_prompts, format_prompt
from datamodules.sources import (
    IMAGE_EXTENSIONS,
    CorruptSampleError,
    ManifestDataset,
    decode_webdataset_sample,
    open_image,
)
from zoo.loading import load_model
from zoo.losses.distributed import rank, world_size

MANIFEST_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv")
MODALITIES = ("image", "text")
MODE_MODALITY = {"t2i": "image", "t2t": "text"}
FINGERPRINT_TEXT = "a photo of a dog."
FINGERPRINT_MIN_COSINE = 0.999


# ------------------------------------------------------------------------------------------ corpus
@dataclass(frozen=True)
class CorpusShard:
    """One unit of embedding work: a webdataset tar (``rows`` None) or rows ``[start, stop)`` of a manifest."""

    name: str
    source: str
    rows: tuple[int, int] | None = None


def _shard_stem(url: str) -> str:
    base = url.split()[-1].rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"\.(tar|tgz|tar\.gz)$", "", base)
    return re.sub(r"[^A-Za-z0-9._-]", "_", base) or "shard"


def list_corpus_shards(corpus: str | Sequence[str], manifest_chunk: int = 10_000) -> list[CorpusShard]:
    """The corpus's shards in a fixed order: webdataset URLs (brace patterns expanded) or, for one
    manifest file (.json/.jsonl/.csv/.tsv), chunks of ``manifest_chunk`` rows."""
    patterns = [corpus] if isinstance(corpus, str) else list(corpus)
    if len(patterns) == 1 and Path(patterns[0]).suffix in MANIFEST_SUFFIXES and Path(patterns[0]).is_file():
        if manifest_chunk < 1:
            raise ValueError(f"manifest_chunk must be positive, got {manifest_chunk}")
        n = len(_manifest(patterns[0], True))
        stem = _shard_stem(Path(patterns[0]).stem)
        return [
            CorpusShard(f"{stem}-{i:06d}", patterns[0], (start, min(start + manifest_chunk, n)))
            for i, start in enumerate(range(0, n, manifest_chunk))
        ]
    urls = [url for pattern in patterns for url in braceexpand(pattern)]
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not Path(u).is_file()]
    if not urls or len(missing) == len(urls):
        raise FileNotFoundError(
            f"no shards matched {patterns!r}" + (f" (e.g. {missing[0]} is missing)" if missing else "")
        )
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(urls)} shards of {patterns!r} are missing, e.g. {missing[:3]}")
    stems = [_shard_stem(u) for u in urls]
    if len(set(stems)) < len(stems):
        stems = [f"{i:06d}-{s}" for i, s in enumerate(stems)]
    return [CorpusShard(stem, url) for stem, url in zip(stems, urls)]


@lru_cache(maxsize=4)
def _manifest(path: str, skip_corrupt: bool) -> ManifestDataset:
    """A manifest parsed once per process (it is split into many shards)."""
    return ManifestDataset(path, skip_corrupt=skip_corrupt)


def _raw_tar_samples(url: str) -> Iterator[dict[str, Any]]:
    """Undecoded samples of one tar, in file order, in every process (no node / worker split)."""
    return iter(wds.WebDataset(url, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False))


class _ShardImages(IterableDataset):
    """``{"position", "key", "image", "captions"}`` of one shard, split across DataLoader workers."""

    def __init__(self, shard: CorpusShard, transform: Any, skip_corrupt: bool) -> None:
        self.shard, self.transform, self.skip_corrupt = shard, transform, skip_corrupt
        self.manifest = _manifest(shard.source, skip_corrupt) if shard.rows is not None else None

    def _records(self, worker: int, workers: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
        if self.shard.rows is None:
            for position, raw in enumerate(_raw_tar_samples(self.shard.source)):
                if position % workers == worker:
                    try:
                        yield position, decode_webdataset_sample(raw)
                    except CorruptSampleError:
                        if not self.skip_corrupt:
                            raise
        else:
            for position in range(*self.shard.rows)[worker::workers]:
                yield position, self.manifest[position]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for position, record in self._records(worker, workers):
            if record is not None:
                yield {**record, "position": position, "image": self.transform(record["image"])}


def _collate(records: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([r["image"] for r in records]),
        **{name: [r[name] for r in records] for name in ("position", "key", "captions")},
    }


# --------------------------------------------------------------------------------------- embedding
@torch.no_grad()
def model_fingerprint(model: LightningModule) -> dict[str, list[float]]:
    """Embeddings of a fixed caption and a fixed grey image: tells apart weights of the same shape."""
    grey = model.data_transforms()["eval_transform"](Image.new("RGB", (64, 64), (128, 128, 128)))
    return {
        "text": model.encode_text([FINGERPRINT_TEXT]).float()[0].cpu().tolist(),
        "image": model.encode_image(grey[None].to(model.device)).float()[0].cpu().tolist(),
    }


def check_same_model(expected: dict[str, list[float]], got: dict[str, list[float]], where: str) -> None:
    """Raise unless two fingerprints have the same dimension and (nearly) the same embeddings."""
    for tower in MODALITIES:
        a, b = np.asarray(expected[tower]), np.asarray(got[tower])
        if a.shape != b.shape:
            raise ValueError(f"{where} has {tower} embeddings of dimension {a.size}, the model gives {b.size}")
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        if cosine < FINGERPRINT_MIN_COSINE:
            raise ValueError(f"{where} was embedded with another model ({tower} fingerprint cosine {cosine:.4f})")


@torch.no_grad()
def _embed_shard(
    model: LightningModule,
    shard: CorpusShard,
    batch_size: int,
    num_workers: int,
    skip_corrupt: bool,
    dim: int,
    bar: tqdm,
) -> dict[str, np.ndarray]:
    """The arrays of a shard's embedding file: image and first-caption embeddings (float32), keys and
    captions (JSON), in the shard's own sample order whatever the number of loader workers."""
    dataset = _ShardImages(shard, model.data_transforms()["eval_transform"], skip_corrupt)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    positions, keys, captions = [], [], []
    images, texts = [torch.zeros(0, dim)], [torch.zeros(0, dim)]  # an empty shard gives [0, dim] arrays
    for batch in loader:
        images.append(model.encode_image(batch["image"].to(model.device)).float().cpu())
        texts.append(model.encode_text([c[0] for c in batch["captions"]]).float().cpu())
        positions += batch["position"]
        keys += batch["key"]
        captions += batch["captions"]
        bar.update(len(batch["key"]))
    duplicates = len(keys) - len(set(keys))
    if duplicates:
        raise CorruptSampleError(f"shard {shard.source}: {duplicates} duplicate keys (samples are re-read by key)")
    order = np.argsort(positions, kind="stable")
    return {
        "image_emb": torch.cat(images).numpy()[order],
        "text_emb": torch.cat(texts).numpy()[order],
        "keys": np.array(keys, dtype=str)[order],
        "captions": np.array(json.dumps([captions[i] for i in order])),
        "source": np.array(shard.source),
    }


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix) to write, renamed over ``path`` on success."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    yield tmp
    os.replace(tmp, path)


def _write_json(path: Path, content: Any) -> None:
    with _atomic(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str))


def embed_corpus(
    model: LightningModule,
    corpus: str | Sequence[str],
    index_dir: str | Path,
    batch_size: int = 256,
    num_workers: int = 4,
    manifest_chunk: int = 10_000,
    dtype: str = "float16",
    skip_corrupt: bool = False,
    model_source: dict[str, Any] | None = None,
) -> list[CorpusShard]:
    """Embed the corpus into ``index_dir/embeddings/<shard>.npz``; this rank does shards rank, rank + world, ...

    A shard whose file exists is skipped (files are written atomically), so reruns resume; a file
    from another source or another model is an error. Returns every shard of the corpus.
    """
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be float16 or float32, got {dtype!r}")
    shards = list_corpus_shards(corpus, manifest_chunk)
    out = Path(index_dir) / "embeddings"
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    fingerprint = model_fingerprint(model)
    model_file = out / "model.json"
    if model_file.is_file():
        check_same_model(json.loads(model_file.read_text())["fingerprint"], fingerprint, f"embeddings in {out}")
    elif rank() == 0:
        from callbacks.suite import describe_model

        _write_json(
            model_file, {"fingerprint": fingerprint, "description": describe_model(model), "source": model_source}
        )
    if rank() == 0:
        _write_json(Path(index_dir) / "corpus.json", [asdict(s) for s in shards])
    mine = shards[rank() :: world_size()]
    dim = len(fingerprint["image"])
    with tqdm(desc=f"embedding corpus (rank {rank()}/{world_size()})", unit="img", disable=rank() != 0) as bar:
        for shard in tqdm(mine, desc="shards", unit="shard", leave=False, disable=rank() != 0):
            path = out / f"{shard.name}.npz"
            if path.is_file():
                with np.load(path) as done:
                    if str(done["source"]) != shard.source:
                        raise ValueError(f"{path} holds {done['source']}, not {shard.source}: use a fresh index_dir")
                continue
            arrays = _embed_shard(model, shard, batch_size, num_workers, skip_corrupt, dim, bar)
            for name in ("image_emb", "text_emb"):
                arrays[name] = arrays[name].astype(dtype)
            with _atomic(path) as tmp:
                np.savez(tmp, **arrays)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return shards


def read_corpus(index_dir: str | Path) -> list[CorpusShard]:
    """The shards recorded by :func:`embed_corpus`, in corpus order."""
    path = Path(index_dir) / "corpus.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: embed the corpus first (build-index)")
    return [
        CorpusShard(s["name"], s["source"], tuple(s["rows"]) if s["rows"] is not None else None)
        for s in json.loads(path.read_text())
    ]


def load_embeddings(index_dir: str | Path, modality: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """All ``modality`` embeddings ``[N, D]`` (float32) and one metadata row each (shard, key,
    captions), read shard by shard in corpus order: independent of how many ranks embedded them."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    vectors, metadata = [], []
    for shard in read_corpus(index_dir):
        path = Path(index_dir) / "embeddings" / f"{shard.name}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: rerun the embedding step (it resumes)")
        with np.load(path) as arrays:
            vectors.append(arrays[f"{modality}_emb"].astype(np.float32))
            captions = json.loads(str(arrays["captions"]))
            metadata += [{"shard": shard.name, "key": str(k), "captions": c} for k, c in zip(arrays["keys"], captions)]
    if not metadata:
        raise ValueError(f"the corpus of {index_dir} has no samples")
    return np.concatenate(vectors), metadata


# ------------------------------------------------------------------------------------------- index
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
    with _atomic(index_dir / f"{modality}.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    with _atomic(index_dir / "metadata.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in metadata))
    _write_json(index_dir / f"{modality}.json", build)
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


# ----------------------------------------------------------------------------------------- queries
def load_templates(spec: str | Sequence[str] | None = None) -> list[str]:
    """Prompt templates (``{c}`` or ``{}``): ``None`` / ``"default"`` gives the 80 OpenAI ImageNet
    templates; a path to a JSON list or a text file (one per line); or a list of templates."""
    if spec is None or spec == "default":
        from datamodules.benchmarks.imagenet import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"template file {spec} does not exist (or pass 'default')")
        text = path.read_text()
        spec = json.loads(text) if path.suffix == ".json" else [line.strip() for line in text.splitlines()]
    templates = [t for t in spec if t]
    if not templates:
        raise ValueError("no templates")
    for template in templates:
        try:
            ok = "\x00" in format_prompt(template, "\x00")
        except (KeyError, IndexError):
            ok = False
        if not ok:
            raise ValueError(f"template {template!r} needs one class-name placeholder, {{c}} or {{}}")
    return templates


def load_classnames(spec: str | Sequence[str]) -> list[str]:
    """Class names: a list, a path to a JSON list or a text file (one per line), or a comma-separated string."""
    if isinstance(spec, str):
        path = Path(spec)
        if path.is_file():
            text = path.read_text()
            spec = json.loads(text) if path.suffix == ".json" else text.splitlines()
        elif path.suffix in (".txt", ".json"):
            raise FileNotFoundError(f"class-name file {spec} does not exist")
        else:
            spec = spec.split(",")
    names = [str(n).strip() for n in spec if str(n).strip()]
    if not names:
        raise ValueError("empty class list")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate class names: {duplicates[:10]}")
    return names


@torch.no_grad()
def embed_queries(
    model: LightningModule, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> tuple[list[list[str]], np.ndarray]:
    """Each class's prompts and their text embeddings ``[C * T, D]`` (class-major, float32)."""
    prompts = class_prompts(classnames, templates)
    flat = [p for ps in prompts for p in ps]
    return prompts, embed_texts(model.eval(), flat, batch_size, desc="query prompts").cpu().numpy()


@dataclass(frozen=True)
class Hit:
    """A retrieved corpus row, its best score for the class and the prompt that scored it."""

    row: int
    score: float
    query: str


def search_classes(
    index: LoadedIndex, queries: np.ndarray, prompts: list[list[str]], k: int, dedup_across_classes: bool = False
) -> list[list[Hit]]:
    """Top-``k`` rows of every query, united per class (a row keeps its best score) and, with
    ``dedup_across_classes``, given only to the class that scores it highest (first class on ties).
    Each class's hits are sorted by score, best first."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(queries) != sum(len(ps) for ps in prompts):
        raise ValueError(f"{len(queries)} query embeddings for {sum(len(ps) for ps in prompts)} prompts")
    scores, rows = index.search(queries, k)
    per_class: list[dict[int, Hit]] = []
    start = 0
    for texts in prompts:
        best: dict[int, Hit] = {}
        for q, prompt in enumerate(texts, start):
            for score, row in zip(scores[q].tolist(), rows[q].tolist()):
                if row >= 0 and (row not in best or score > best[row].score):
                    best[row] = Hit(row, score, prompt)
        per_class.append(best)
        start += len(texts)
    if dedup_across_classes:
        owner: dict[int, int] = {}
        for c, best in enumerate(per_class):
            for row, hit in best.items():
                if row not in owner or hit.score > per_class[owner[row]][row].score:
                    owner[row] = c
        per_class = [{r: h for r, h in best.items() if owner[r] == c} for c, best in enumerate(per_class)]
    return [sorted(best.values(), key=lambda h: (-h.score, h.row)) for best in per_class]


# ------------------------------------------------------------------------------------------ output
def _source_images(shard: CorpusShard, keys: set[str]) -> dict[str, tuple[str, bytes]]:
    """``key -> (extension, original image bytes)`` for ``keys`` of one shard, reading it once."""
    found: dict[str, tuple[str, bytes]] = {}
    if shard.rows is None:
        for raw in _raw_tar_samples(shard.source):
            if raw["__key__"] in keys:
                ext = next(e for e in IMAGE_EXTENSIONS if e in raw)
                found[raw["__key__"]] = (ext, raw[ext])
    else:
        for record in _manifest(shard.source, True).records[slice(*shard.rows)]:
            if record is not None and record["key"] in keys:
                path = Path(record["image"])
                ext = path.suffix.lower().lstrip(".")
                if ext in IMAGE_EXTENSIONS:
                    found[record["key"]] = (ext, path.read_bytes())
                else:
                    buffer = io.BytesIO()
                    open_image(path, f"{path} (key {record['key']})").save(buffer, format="PNG")
                    found[record["key"]] = ("png", buffer.getvalue())
    lost = keys - found.keys()
    if lost:
        raise FileNotFoundError(f"{shard.source} no longer holds {len(lost)} indexed samples, e.g. {sorted(lost)[:3]}")
    return found


def write_retrieved(
    index: LoadedIndex, hits: list[list[Hit]], classnames: Sequence[str], out_dir: str | Path, shard_size: int = 10_000
) -> dict[str, int]:
    """Write every hit as a webdataset sample (original image bytes, ``txt`` = first caption, ``cls``,
    ``json`` = captions, class, class_index, score, query, source_shard, source_key) to
    ``out_dir/retrieved-%06d.tar``, reading each source shard once. Returns unique pairs per class."""
    if len(hits) != len(classnames):
        raise ValueError(f"{len(hits)} hit lists for {len(classnames)} classes")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("retrieved-*.tar")):
        raise FileExistsError(f"{out} already holds retrieved-*.tar shards: choose an empty output directory")
    by_shard: dict[str, list[tuple[int, Hit]]] = {}
    for c, class_hits in enumerate(hits):
        for hit in class_hits:
            by_shard.setdefault(index.metadata[hit.row]["shard"], []).append((c, hit))
    pattern = str(out).replace("%", "%%") + "/retrieved-%06d.tar"
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, encoder=False, mtime=0.0) as sink:
        for name in [n for n in index.shards if n in by_shard]:
            wanted = sorted(by_shard[name], key=lambda ch: (ch[1].row, ch[0]))
            images = _source_images(index.shards[name], {index.metadata[h.row]["key"] for _, h in wanted})
            for c, hit in wanted:
                row = index.metadata[hit.row]
                ext, data = images[row["key"]]
                meta = {
                    "captions": row["captions"],
                    "class": classnames[c],
                    "class_index": c,
                    "score": hit.score,
                    "query": hit.query,
                    "source_shard": name,
                    "source_key": row["key"],
                }
                sink.write(
                    {
                        "__key__": f"c{c:05d}_r{hit.row:010d}",
                        ext: data,
                        "txt": row["captions"][0].encode("utf-8"),
                        "cls": str(c).encode(),
                        "json": json.dumps(meta).encode("utf-8"),
                    }
                )
    return {name: len(class_hits) for name, class_hits in zip(classnames, hits)}


def retrieve(
    model: LightningModule,
    index_dir: str | Path,
    classnames: str | Sequence[str],
    out_dir: str | Path,
    templates: str | Sequence[str] | None = None,
    mode: str = "t2i",
    k: int = 100,
    dedup_across_classes: bool = False,
    batch_size: int = 256,
    shard_size: int = 10_000,
) -> dict[str, int]:
    """REACT retrieval: class x template queries against the image (``t2i``) or caption (``t2t``)
    index, top-``k`` each, written as webdataset shards plus ``summary.json``; returns unique pairs per class."""
    if mode not in MODE_MODALITY:
        raise ValueError(f"mode must be t2i or t2t, got {mode!r}")
    names, templates = load_classnames(classnames), load_templates(templates)
    index = load_index(index_dir, MODE_MODALITY[mode])
    model.eval()
    fingerprint = model_fingerprint(model)
    if len(fingerprint["text"]) != index.index.d:
        raise ValueError(f"the model embeds in dimension {len(fingerprint['text'])}, the index in {index.index.d}")
    check_same_model(index.build["model"]["fingerprint"], fingerprint, f"the index in {index_dir}")
    prompts, queries = embed_queries(model, names, templates, batch_size)
    hits = search_classes(index, queries, prompts, k, dedup_across_classes)
    counts = write_retrieved(index, hits, names, out_dir, shard_size)
    summary = {
        "index": str(index_dir),
        "mode": mode,
        "k": k,
        "templates": templates,
        "dedup_across_classes": dedup_across_classes,
        "total": sum(counts.values()),
        "pairs_per_class": counts,
    }
    _write_json(Path(out_dir) / "summary.json", summary)
    return counts


# --------------------------------------------------------------------------------------------- CLI
def _device() -> str:
    """This process's GPU under torchrun (``LOCAL_RANK``), else the CPU."""
    return f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"


def _model_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--checkpoint", help="a zoo checkpoint (.ckpt)")
    source.add_argument("--model", help="open_clip model name or local-dir:/path")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or weights file")
    parser.add_argument("--module", default="zoo.CLIP", help="the zoo class of --checkpoint")


def _build_command(args: argparse.Namespace) -> None:
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    model, source = load_model(args.checkpoint, args.module, args.model, args.pretrained, _device())
    embed_corpus(
        model,
        args.corpus,
        args.out,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        manifest_chunk=args.manifest_chunk,
        dtype=args.dtype,
        skip_corrupt=args.skip_corrupt,
        model_source=source,
    )
    if rank() == 0:
        config = IndexConfig(**{name: getattr(args, name) for name in IndexConfig.__dataclass_fields__})
        for modality in MODALITIES if args.modality == "both" else (args.modality,):
            build = build_index(args.out, modality, config, args.recall_k, args.recall_queries)
            recall = build["approximate_recall"]
            print(
                f"{modality} index: {build['kind']} {build['params']}, {build['num_vectors']} vectors of dim "
                f"{build['dim']}; recall@{recall['k']} vs exact search on {recall['queries']} corpus queries: "
                f"{recall['recall']:.4f}"
            )
    if dist.is_initialized():
        dist.destroy_process_group()


def _retrieve_command(args: argparse.Namespace) -> None:
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise SystemExit("retrieve runs in one process: start it with python, not torchrun")
    if not Path(args.index).is_dir():
        raise FileNotFoundError(f"index directory {args.index} does not exist")
    if args.checkpoint or args.model:
        model, _ = load_model(args.checkpoint, args.module, args.model, args.pretrained, _device())
    else:
        index = Path(args.index) / f"{MODE_MODALITY[args.mode]}.json"
        if not index.is_file():
            raise FileNotFoundError(f"{index} does not exist: run build-index (or check --index / --mode)")
        source = json.loads(index.read_text())["model"]["source"]
        if not source:
            raise SystemExit("the index does not record how to load its model: pass --checkpoint or --model")
        model, _ = load_model(
            source.get("checkpoint"), source.get("module", "zoo.CLIP"), source.get("model"), source.get("pretrained"), _device()
        )
    counts = retrieve(
        model,
        args.index,
        args.classnames,
        args.out,
        templates=args.templates,
        mode=args.mode,
        k=args.k,
        dedup_across_classes=args.dedup_across_classes,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
    )
    for name, count in counts.items():
        print(f"{name}: {count} unique pairs")
    print(f"{sum(counts.values())} pairs for {len(counts)} classes in {args.out} (summary.json)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build-index", help="embed a corpus and build its FAISS index")
    build.add_argument("--corpus", required=True, nargs="+", help="webdataset URLs / brace patterns, or a manifest")
    _model_arguments(build, required=True)
    build.add_argument("--out", required=True, help="index directory")
    build.add_argument("--kind", default="hnsw", choices=["hnsw", "flat", "ivfpq"])
    defaults = IndexConfig()
    for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m", "pq_nbits", "nprobe"):
        build.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    build.add_argument("--modality", default="both", choices=["image", "text", "both"])
    build.add_argument("--batch-size", type=int, default=256)
    build.add_argument("--num-workers", type=int, default=4)
    build.add_argument("--manifest-chunk", type=int, default=10_000, help="manifest rows per resumable shard")
    build.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored embeddings")
    build.add_argument("--skip-corrupt", action="store_true", help="skip unreadable samples instead of failing")
    build.add_argument("--recall-k", type=int, default=10)
    build.add_argument("--recall-queries", type=int, default=1000)
    build.set_defaults(run=_build_command)

    fetch = commands.add_parser("retrieve", help="retrieve image-caption pairs for class names")
    fetch.add_argument("--index", required=True, help="index directory of build-index")
    fetch.add_argument("--classnames", required=True, help="file (one per line / JSON list) or 'a,b,c'")
    fetch.add_argument("--templates", default="default", help="'default' (80 OpenAI ImageNet) or a file")
    fetch.add_argument("--mode", default="t2i", choices=sorted(MODE_MODALITY))
    fetch.add_argument("--k", type=int, default=100)
    fetch.add_argument("--out", required=True)
    fetch.add_argument("--dedup-across-classes", action="store_true")
    fetch.add_argument("--batch-size", type=int, default=256)
    fetch.add_argument("--shard-size", type=int, default=10_000, help="samples per output shard")
    _model_arguments(fetch, required=False)
    fetch.set_defaults(run=_retrieve_command)

    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
