"""Scoring the suite: every unique image crop and text embedded once (sharded across ranks), then
each benchmark scored by its protocol; retrieval sets and zero-shot classification on their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, Subset

from callbacks.embedding import embed_images, embed_texts, gather_shards, shard
from callbacks.protocols import Similarities, score
from callbacks.retrieval import retrieval_recall
from callbacks.zero_shot import class_embeddings, classification_metrics, elevater_metric, zero_shot_logits
from datamodules.benchmarks import Benchmark, ClassificationSet, ImageFiles, RetrievalSet, sugarcrepe_averages


def embed_sharded_images(
    model: LightningModule, refs: list, transform: Callable, batch_size: int, num_workers: int, trainer: Trainer | None
) -> torch.Tensor:
    """Embeddings of image paths / crops in order, each embedded by exactly one rank."""
    loader = DataLoader(
        Subset(ImageFiles(refs, transform), list(shard(len(refs)))), batch_size=batch_size, num_workers=num_workers
    )
    return gather_shards(embed_images(model, loader, trainer, desc="suite images"), len(refs))


def embed_sharded_texts(
    model: LightningModule, texts: list[str], batch_size: int, trainer: Trainer | None
) -> torch.Tensor:
    """Embeddings of texts in order, each embedded by exactly one rank."""
    mine = [texts[i] for i in shard(len(texts))]
    return gather_shards(embed_texts(model, mine, batch_size, trainer, desc="suite texts"), len(texts))


@torch.no_grad()
def embed_benchmarks(
    model: LightningModule,
    benchmarks: list[Benchmark],
    transform: Callable,
    batch_size: int = 128,
    num_workers: int = 2,
    trainer: Trainer | None = None,
) -> Similarities:
    """Embed every unique image crop and text of ``benchmarks`` once (sharded across ranks)."""
    refs = sorted({ref for b in benchmarks for item in b.items for ref in item.images}, key=lambda r: r.key)
    texts = sorted({t for b in benchmarks for item in b.items for t in item.texts})
    return Similarities(
        embed_sharded_images(model, refs, transform, batch_size, num_workers, trainer).cpu(),
        embed_sharded_texts(model, texts, batch_size, trainer).cpu(),
        {ref.key: i for i, ref in enumerate(refs)},
        {t: i for i, t in enumerate(texts)},
    )


@torch.no_grad()
def evaluate_retrieval_set(
    model: LightningModule,
    data: RetrievalSet,
    transform: Callable,
    batch_size: int = 128,
    num_workers: int = 2,
    trainer: Trainer | None = None,
) -> dict[str, float]:
    """Recall@1/5/10 both ways on a retrieval set (COCO / Flickr30k Karpathy), ties counted as failures.
    Each distinct caption is embedded once, so repeated captions tie exactly whatever the batches or ranks."""
    images = embed_sharded_images(model, data.images, transform, batch_size, num_workers, trainer)
    unique = list(dict.fromkeys(data.texts))
    position = {text: i for i, text in enumerate(unique)}
    texts = embed_sharded_texts(model, unique, batch_size, trainer)[torch.tensor([position[t] for t in data.texts])]
    figures = retrieval_recall(images, texts, data.text_to_image)
    return {**figures, "items": len(data.images), "skipped": data.skipped}


def evaluate_suite(
    model: LightningModule,
    benchmarks: list[Benchmark | RetrievalSet | ClassificationSet],
    scorer: str = "cosine",
    **embed_kwargs: Any,
) -> dict[str, dict]:
    """Figures of every benchmark, by name. Multiple-choice style benchmarks share one embedding pass;
    zero-shot classification runs on every rank (identical figures; its shards are read by all). A ``scorer``
    other than ``cosine`` scores a generative model (:func:`callbacks.suite.generative.evaluate_generative`)."""
    if scorer != "cosine":
        from callbacks.suite.generative import evaluate_generative

        return evaluate_generative(model, benchmarks, scorer, embed_kwargs.get("batch_size", 16))
    transform = model.data_transforms()["eval_transform"]
    items = [b for b in benchmarks if isinstance(b, Benchmark)]
    results: dict[str, dict] = {}
    if items:
        sims = embed_benchmarks(model, items, transform, **embed_kwargs)
        results.update({b.name: score(b, sims) for b in items})
    trainer = embed_kwargs.get("trainer")
    for data in benchmarks:
        if isinstance(data, RetrievalSet):
            results[data.name] = evaluate_retrieval_set(model, data, transform, **embed_kwargs)
        elif isinstance(data, ClassificationSet):
            loader = data.dataloader(embed_kwargs.get("batch_size", 128), embed_kwargs.get("num_workers", 2))
            classifier = class_embeddings(model, data.classnames, data.templates, trainer=trainer)
            logits, labels = zero_shot_logits(model, loader, classifier, trainer)
            figures = classification_metrics(logits, labels)
            if data.metric in ("11point_mAP", "roc_auc"):  # ELEVATER's other metrics
                figures[data.metric] = elevater_metric(data.metric, logits, labels)
            results[data.name] = {
                **figures,
                "items": len(labels),
                "skipped": data.skipped,
            }
    categories = {name: r["accuracy"] for name, r in results.items() if name.startswith("sugarcrepe/")}
    if averages := sugarcrepe_averages(categories):  # the paper's REPLACE / SWAP / ADD
        results["sugarcrepe/averages"] = {**averages, "items": sum(results[n]["items"] for n in categories)}
    return results
