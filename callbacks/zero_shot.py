"""Zero-shot classification: prompt-ensembled class embeddings, logits and clip_benchmark's metrics.

As CLIP / open_clip / clip_benchmark: each class embedding is the L2-normalised mean of the
L2-normalised embeddings of its prompts (one per template); an image's logits are
``100 * image_embedding @ class_embeddings.T``; top-K accuracy and mean per-class recall are
defined as ``clip_benchmark.metrics.zeroshot_classification`` defines them, ties counted as failures (see
:func:`classification_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer

from callbacks.embedding import embed_texts, progress
from callbacks.retrieval import pessimistic_rank
from datamodules.benchmarks.classification import ELEVATER_METRICS
from datamodules.benchmarks.prompts import Template, class_prompts, format_prompt

LOGIT_SCALE = 100.0  # CLIP's fixed zero-shot scale (clip_benchmark, open_clip); rankings do not depend on it


@torch.no_grad()
def class_embeddings(
    model: Any,
    classnames: Sequence[str],
    templates: Sequence[Template] | Mapping[str, Sequence[str]],
    batch_size: int = 256,
    trainer: Trainer | None = None,
) -> torch.Tensor:
    """Zero-shot classifier ``[C, D]``: row ``c`` is the L2-normalised mean of the L2-normalised text
    embeddings of class ``c``'s prompts (float32, on the model's device).

    ``model`` is anything with ``encode_text(list[str])``; prompts are embedded ``batch_size`` at a time
    across classes (clip_benchmark embeds one class per forward, open_clip ten: same figures up to
    float rounding). clip_benchmark returns the transpose, ``[D, C]``.
    """
    prompts = class_prompts(classnames, templates)
    features = embed_texts(model, [p for ps in prompts for p in ps], batch_size, trainer, desc="zero-shot prompts")
    features = F.normalize(features.float(), dim=-1)
    counts = [len(ps) for ps in prompts]
    if len(set(counts)) == 1:
        means = features.reshape(len(prompts), counts[0], -1).mean(dim=1)
    else:
        means = torch.stack([chunk.mean(dim=0) for chunk in features.split(counts)])
    return F.normalize(means, dim=-1)


def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _images_and_labels(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["image"], torch.as_tensor(batch["label"])
    images, labels = batch[0], batch[1]
    return images, torch.as_tensor(labels)


@torch.no_grad()
def zero_shot_logits(
    model: Any,
    batches: Iterable[Any],
    classifier: torch.Tensor,
    trainer: Trainer | None = None,
    scale: float = LOGIT_SCALE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, C]`` = ``scale * image_embedding @ classifier.T`` and labels ``[N]`` (float32 /
    int64 on the CPU) for ``(images, labels)`` or ``{"image", "label"}`` batches."""
    device = _device(model)
    classifier = classifier.to(device).float()
    all_logits, all_labels = [], []
    for batch in progress(batches, trainer, desc="zero-shot images"):
        images, labels = _images_and_labels(batch)
        features = F.normalize(model.encode_image(images.to(device)).float(), dim=-1)
        all_logits.append((scale * features @ classifier.T).float().cpu())
        all_labels.append(labels.long().cpu())
    if not all_logits:
        raise ValueError("zero-shot evaluation got no images")
    return torch.cat(all_logits), torch.cat(all_labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-K accuracies and mean per-class recall, as clip_benchmark 1.6 defines them, ties counted as failures.

    Both come from one rank per sample, :func:`~callbacks.retrieval.pessimistic_rank`: 1 + the number of
    other classes whose logit is at least the label's (a tie with another class is lost, whatever order
    ``torch.topk`` would give equal logits).

    * ``top{k}``: fraction of samples with rank <= ``k``. Without ties this is clip_benchmark's
      ``accuracy`` (one ``logits.topk(max k)`` sliced to ``k``); with ties clip_benchmark's count depends
      on PyTorch's tie order and is never lower. A ``k`` larger than the number of classes gives NaN, as
      clip_benchmark reports ``acc5`` for datasets with fewer than 5 classes.
    * ``mean_per_class_recall``: the mean over the classes *present in* ``labels`` of the fraction of that
      class's samples with rank 1. Without ties at the top this is clip_benchmark's
      ``sklearn.metrics.balanced_accuracy_score(labels, logits.argmax(1))``; a tie at the top, which
      ``argmax`` gives to the first class, is a failure here.

    Args:
        logits: ``[N, C]`` scores.
        labels: ``[N]`` class indices in ``[0, C)``.
    """
    logits, labels = logits.detach().float().cpu(), torch.as_tensor(labels).detach().long().cpu()
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, C] and labels [N]; got {tuple(logits.shape)} and {tuple(labels.shape)}")
    n, num_classes = logits.shape
    if n == 0:
        raise ValueError("no samples")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be >= 1, got {tuple(ks)}")
    rank = pessimistic_rank(logits, labels[:, None] == torch.arange(num_classes))
    metrics = {f"top{k}": int((rank <= k).sum()) / n if k <= num_classes else math.nan for k in ks}
    right = rank == 1
    recalls = [int(right[labels == c].sum()) / int((labels == c).sum()) for c in labels.unique().tolist()]
    metrics["mean_per_class_recall"] = sum(recalls) / len(recalls)
    return metrics


def eleven_point_average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """PASCAL VOC 2007's 11-point interpolated AP of one class, as ELEVATER's zero-shot evaluation
    computes it from scikit-learn's precision-recall curve: the mean over recall levels
    t = 0, 0.1, …, 1 of the highest precision at recall ≥ t. The curve's last point (recall 0,
    precision 1) makes the t = 0 term 1, as in ELEVATER.

    Args:
        scores: ``[N]`` scores of the class (raw logits: ELEVATER ranks by them).
        positives: ``[N]`` bool, True where the sample belongs to the class.
    """
    positives = positives.bool()
    n_positive = int(positives.sum())
    if n_positive == 0:
        raise ValueError("11-point AP needs at least one positive sample of the class")
    order = scores.double().argsort(descending=True, stable=True)
    sorted_scores, hits = scores.double()[order], positives[order].double()
    last_of_each_score = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_each_score[:-1] = sorted_scores[1:] != sorted_scores[:-1]  # one point per distinct threshold
    true_positives = hits.cumsum(0)[last_of_each_score]
    predicted = torch.arange(1, len(hits) + 1, dtype=torch.float64)[last_of_each_score]
    precision = torch.cat([true_positives / predicted, torch.ones(1, dtype=torch.float64)])
    recall = torch.cat([true_positives / n_positive, torch.zeros(1, dtype=torch.float64)])
    levels = torch.from_numpy(np.linspace(1, 0, 11))  # ELEVATER's recall levels, compared exactly
    interpolated = [float(precision[recall >= t].max()) if (recall >= t).any() else 0.0 for t in levels]
    return sum(interpolated) / 11


def roc_auc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of a binary task (ELEVATER: the score of class 1), as the probability
    that a random positive outranks a random negative, ties counting one half."""
    positives = positives.bool()
    n_positive, n_negative = int(positives.sum()), int((~positives).sum())
    if n_positive == 0 or n_negative == 0:
        raise ValueError("ROC-AUC needs both positive and negative samples")
    pos, neg = scores.double()[positives], scores.double()[~positives]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins) / (n_positive * n_negative)


def elevater_metric(metric: str, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """A dataset's ELEVATER metric: ``accuracy`` (top-1), ``mean-per-class`` (balanced accuracy),
    ``11point_mAP`` (mean over classes of :func:`eleven_point_average_precision`; labels ``[N]`` or
    multi-hot ``[N, C]``) or ``roc_auc`` (binary: :func:`roc_auc` of the class-1 logit)."""
    logits = logits.detach().float().cpu()
    labels = torch.as_tensor(labels).detach().cpu()
    if metric in ("accuracy", "mean-per-class"):
        figures = classification_metrics(logits, labels, ks=(1,))
        return figures["top1"] if metric == "accuracy" else figures["mean_per_class_recall"]
    if metric == "11point_mAP":
        targets = labels if labels.ndim == 2 else F.one_hot(labels.long(), logits.shape[1])
        present = [c for c in range(logits.shape[1]) if targets[:, c].any()]
        return sum(eleven_point_average_precision(logits[:, c], targets[:, c]) for c in present) / len(present)
    if metric == "roc_auc":
        if logits.shape[1] != 2:
            raise ValueError(f"roc_auc is ELEVATER's metric for binary datasets; got {logits.shape[1]} classes")
        return roc_auc(logits[:, 1], labels == 1)
    raise ValueError(f"unknown ELEVATER metric {metric!r}; known: {ELEVATER_METRICS}")


@torch.no_grad()
def evaluate_zero_shot(
    model: Any,
    loader: Iterable[Any],
    classnames: Sequence[str],
    templates: Sequence[Template] | Mapping[str, Sequence[str]],
    ks: Sequence[int] = (1, 5),
    text_batch_size: int = 256,
    trainer: Trainer | None = None,
) -> dict[str, float]:
    """Zero-shot classification of ``loader``'s ``(images, labels)`` batches with prompt-ensembled class
    embeddings; returns :func:`classification_metrics` (``top1``, ``top5``, ``mean_per_class_recall``)."""
    classifier = class_embeddings(model, classnames, templates, text_batch_size, trainer)
    logits, labels = zero_shot_logits(model, loader, classifier, trainer)
    return classification_metrics(logits, labels, ks)


__all__ = [
    "LOGIT_SCALE",
    "class_embeddings",
    "class_prompts",
    "classification_metrics",
    "elevater_metric",
    "eleven_point_average_precision",
    "evaluate_zero_shot",
    "format_prompt",
    "roc_auc",
    "zero_shot_logits",
]
