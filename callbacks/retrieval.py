"""Zero-shot image-text retrieval: Recall@K in both directions, COCO / Flickr30k style."""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from callbacks.embedding import EpochEndEvaluation, embed_images, embed_texts


def pessimistic_rank(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Rank of each query's best positive with every tie against a negative counted as lost.

    ``rank[q] = 1 + #{j : not positive[q, j] and scores[q, j] >= max_p {scores[q, p] : positive[q, p]}}``.
    A query is right at K when ``rank <= K``: ties count as failures, whatever order ``torch.topk`` or
    ``sort`` would give equal scores, so permuting the gallery never changes a rank. Ties between
    positives cost nothing (only negatives are counted). A query without a positive gets
    ``gallery + 1``; a NaN score counts against the query (a NaN negative beats every positive; a NaN
    best positive loses to every negative).

    Args:
        scores: ``[Q, G]`` similarities of each query to the gallery.
        positive: ``[Q, G]`` bool, True where the gallery item is a right answer for the query.

    Returns:
        ``[Q]`` int64 ranks in ``[1, G + 1]``.
    """
    positive = positive.bool()
    best = scores.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)
    return 1 + (~(scores < best) & ~positive).sum(dim=1)


def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K for image→text and text→image retrieval with several captions per image.

    As clip_benchmark and the COCO / Flickr30k protocols: a text query is right at K when its own
    image is among the K most similar images; an image query is right at K when *any* of its captions
    is among the K most similar texts. Ties count as failures (:func:`pessimistic_rank`): a query is
    right at K when fewer than K wrong items score at least as high as its best right one (K larger
    than the gallery: every query with a right item). Similarities are computed ``chunk_size`` queries
    at a time, so memory stays O(images + captions + chunk x max(images, captions)).

    Args:
        image_features: ``[N, D]`` embeddings (normalised for cosine similarity).
        text_features: ``[T, D]`` embeddings.
        text_to_image: ``[T]`` index of each caption's image.

    Returns:
        fractions in [0, 1]: ``i2t_R@K`` and ``t2i_R@K`` for each K.
    """
    n_images, n_texts = len(image_features), len(text_features)
    text_to_image = text_to_image.to(image_features.device)
    t2i_hits = {k: 0 for k in ks}
    i2t_hits = {k: 0 for k in ks}
    for start in range(0, n_texts, chunk_size):
        scores = text_features[start : start + chunk_size] @ image_features.T
        own = text_to_image[start : start + chunk_size, None]
        rank = pessimistic_rank(scores, own == torch.arange(n_images, device=scores.device))
        for k in ks:
            t2i_hits[k] += int((rank <= min(k, n_images)).sum())
    for start in range(0, n_images, chunk_size):
        scores = image_features[start : start + chunk_size] @ text_features.T
        own = torch.arange(start, start + len(scores), device=scores.device)
        rank = pessimistic_rank(scores, text_to_image[None, :] == own[:, None])
        for k in ks:
            i2t_hits[k] += int((rank <= min(k, n_texts)).sum())
    metrics = {f"i2t_R@{k}": i2t_hits[k] / n_images for k in ks}
    metrics.update({f"t2i_R@{k}": t2i_hits[k] / n_texts for k in ks})
    return metrics


def retrieval_chance(captions_per_image: list[int], ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Expected Recall@K of a random ranking (the baseline to quote next to a result)."""
    n_images, n_texts = len(captions_per_image), sum(captions_per_image)
    chance = {}
    for k in ks:
        # an image misses at K when none of its c captions is among K texts drawn without replacement
        misses = [
            math.prod((n_texts - c - j) / (n_texts - j) for j in range(min(k, n_texts))) for c in captions_per_image
        ]
        chance[f"i2t_R@{k}"] = 1 - sum(misses) / n_images
        chance[f"t2i_R@{k}"] = min(k, n_images) / n_images
    return chance


class RetrievalEvaluation(EpochEndEvaluation):
    """Zero-shot retrieval on the data module's held-out split after validation (and test) epochs.

    Embeds every image once and every caption once, logs ``{stage}/retrieval/{i2t,t2i}_R@K`` and
    writes them with the chance level to ``<log_dir>/retrieval/{stage}-epoch{E}.json``.
    The data module must offer ``retrieval_dataloader(split)`` with ``image`` and ``captions`` batches.

    Args:
        ks: the K of Recall@K.
        text_batch_size: captions embedded per forward.
        every_n_epochs: evaluate every n validation epochs.
    """

    name = "retrieval"

    def __init__(self, ks: tuple[int, ...] = (1, 5, 10), text_batch_size: int = 256, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        self.ks = tuple(ks)
        self.text_batch_size = text_batch_size

    def evaluate(self, trainer: Trainer | None, model: LightningModule, loader: Any) -> dict[str, Any]:
        """Recall@K (and chance) of ``model`` on a loader of ``image`` / ``captions`` batches."""
        captions: list[list[str]] = []

        def images():
            for batch in loader:
                captions.extend(batch["captions"])
                yield batch["image"]

        image_features = embed_images(model, images(), trainer, desc="retrieval images")
        flat = [c for caps in captions for c in caps]
        text_to_image = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
        text_features = embed_texts(model, flat, self.text_batch_size, trainer, desc="retrieval captions")
        metrics = retrieval_recall(image_features, text_features, text_to_image, self.ks)
        return {
            "metrics": metrics,
            "chance": retrieval_chance([len(c) for c in captions], self.ks),
            "n_images": len(captions),
            "n_captions": len(flat),
        }

    def summary(self, result: dict[str, Any]) -> str:
        return ", ".join(
            f"{metric} {100 * value:.1f}% (chance {100 * result['chance'][metric]:.1f}%)"
            for metric, value in result["metrics"].items()
        )

    def run(self, trainer: Trainer, model: LightningModule, stage: str) -> dict[str, Any]:
        loader = trainer.datamodule.retrieval_dataloader(stage)
        return self.evaluate(trainer, model, itertools.islice(loader, self.max_batches(trainer)))
