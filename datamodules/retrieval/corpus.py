"""REACT's retrieval corpus: the shards of a web-scale image-caption corpus and their stored embeddings.

A corpus is webdataset tars (brace patterns) or one manifest cut into fixed-size row chunks; each
shard is one unit of (resumable, rank-sharded) embedding work. ``index_dir/corpus.json`` lists the
shards in corpus order and ``index_dir/embeddings/<shard>.npz`` holds each shard's L2-normalised image
and first-caption embeddings, keys and captions. Embedding itself needs a model: it lives in
:mod:`callbacks.retrieval_stage`, which hands its batches the :class:`ShardImages` datasets built here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from torch.utils.data import IterableDataset

from datamodules.sources import CorruptSampleError, ManifestDataset, dataloader_worker, decode_webdataset_sample

MANIFEST_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv")
MODALITIES = ("image", "text")


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
        n = len(read_manifest(patterns[0], True))
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
def read_manifest(path: str, skip_corrupt: bool) -> ManifestDataset:
    """A manifest parsed once per process (it is split into many shards)."""
    return ManifestDataset(path, skip_corrupt=skip_corrupt)


def raw_tar_samples(url: str) -> Iterator[dict[str, Any]]:
    """Undecoded samples of one tar, in file order, in every process (no node / worker split)."""
    return iter(wds.WebDataset(url, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False))


class ShardImages(IterableDataset):
    """``{"position", "key", "image", "captions"}`` of one shard, split across DataLoader workers."""

    def __init__(self, shard: CorpusShard, transform: Any, skip_corrupt: bool) -> None:
        self.shard, self.transform, self.skip_corrupt = shard, transform, skip_corrupt
        self.manifest = read_manifest(shard.source, skip_corrupt) if shard.rows is not None else None

    def _records(self, worker: int, workers: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
        if self.shard.rows is None:
            for position, raw in enumerate(raw_tar_samples(self.shard.source)):
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
        worker, workers = dataloader_worker()
        for position, record in self._records(worker, workers):
            if record is not None:
                yield {**record, "position": position, "image": self.transform(record["image"])}


def collate_images(records: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of :class:`ShardImages` records: stacked images, lists of positions, keys and captions."""
    return {
        "image": torch.stack([r["image"] for r in records]),
        **{name: [r[name] for r in records] for name in ("position", "key", "captions")},
    }



@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path`` (same suffix) to write, renamed over ``path`` on success."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    yield tmp
    os.replace(tmp, path)


def write_json(path: Path, content: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str))



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

