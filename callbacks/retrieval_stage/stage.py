"""REACT's model steps: embed every corpus shard (resumably, sharded over ranks), embed the queries, retrieve."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from callbacks.embedding import embed_texts
from callbacks.suite import describe_model
from datamodules.benchmarks.prompts import class_prompts
from datamodules.retrieval import (
    MODE_MODALITY,
    load_classnames,
    load_index,
    load_templates,
    search_classes,
    write_retrieved,
)
from datamodules.retrieval.corpus import (
    MODALITIES,
    CorpusShard,
    ShardImages,
    atomic_path,
    collate_images,
    list_corpus_shards,
    write_json,
)
from datamodules.sources import CorruptSampleError
from zoo.losses.distributed import rank, world_size

FINGERPRINT_TEXT = "a photo of a dog."
FINGERPRINT_MIN_COSINE = 0.999


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
    dataset = ShardImages(shard, model.data_transforms()["eval_transform"], skip_corrupt)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images)
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
        write_json(
            model_file, {"fingerprint": fingerprint, "description": describe_model(model), "source": model_source}
        )
    if rank() == 0:
        write_json(Path(index_dir) / "corpus.json", [asdict(s) for s in shards])
    mine = shards[rank() :: world_size()]
    dim = len(fingerprint["image"])
    with tqdm(desc=f"embedding corpus (rank {rank()}/{world_size()})", unit="img", disable=rank() != 0 or None) as bar:
        for shard in tqdm(mine, desc="shards", unit="shard", leave=False, disable=rank() != 0 or None):
            path = out / f"{shard.name}.npz"
            if path.is_file():
                with np.load(path) as done:
                    if str(done["source"]) != shard.source:
                        raise ValueError(f"{path} holds {done['source']}, not {shard.source}: use a fresh index_dir")
                continue
            arrays = _embed_shard(model, shard, batch_size, num_workers, skip_corrupt, dim, bar)
            for name in ("image_emb", "text_emb"):
                arrays[name] = arrays[name].astype(dtype)
            with atomic_path(path) as tmp:
                np.savez(tmp, **arrays)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return shards


@torch.no_grad()
def embed_queries(
    model: LightningModule, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> tuple[list[list[str]], np.ndarray]:
    """Each class's prompts and their text embeddings ``[C * T, D]`` (class-major, float32)."""
    prompts = class_prompts(classnames, templates)
    flat = [p for ps in prompts for p in ps]
    return prompts, embed_texts(model.eval(), flat, batch_size, desc="query prompts").cpu().numpy()


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
    write_json(Path(out_dir) / "summary.json", summary)
    return counts
