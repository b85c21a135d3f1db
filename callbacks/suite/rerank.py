"""Retrieval by reranking: a CLIP-family model ranks the whole gallery, a generative model's image–text score
(VQAScore) reorders each query's top ``k``, as VQAScore is used for retrieval (Lin et al., 2024).

For each image query the CLIP's top-k captions, and for each caption query its top-k images, are scored by the
generative model (each distinct pair once) and placed above the rest of the gallery in that order; the rest keep the
CLIP's order. Recall@K is then counted as everywhere in the suite (:func:`callbacks.retrieval.retrieval_recall`, ties
as failures), so R@K for K ≤ k can only move by reranking, and K > k sees the CLIP's ranking beyond the top k.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule

from callbacks.retrieval import retrieval_recall
from datamodules.benchmarks import ImageFiles, RetrievalSet

PairScorer = Callable[[list[tuple[int, int]]], torch.Tensor]
"""(image index, caption index) pairs → their scores (higher: better)."""


def reranked(first: torch.Tensor, top: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Rows of ``first`` [Q, G] with each row's ``top`` [Q, k] entries set to ``offset + scores`` [Q, k]: above
    every other entry, in the order of ``scores``."""
    offset = first.max() - scores.min() + 1
    return first.scatter(1, top, offset + scores)


def reranked_recall(
    first_stage: torch.Tensor, text_to_image: torch.Tensor, score_pairs: PairScorer, k: int = 10
) -> dict[str, float]:
    """Recall@1/5/10 both ways from first-stage similarities [N images, T captions] with each query's top ``k``
    reranked by ``score_pairs``."""
    k_texts, k_images = min(k, first_stage.shape[1]), min(k, first_stage.shape[0])
    image_top = first_stage.topk(k_texts, dim=1).indices  # [N, k] captions of each image query
    text_top = first_stage.T.topk(k_images, dim=1).indices  # [T, k] images of each caption query
    pairs = sorted({(i, int(t)) for i, row in enumerate(image_top) for t in row}
                   | {(int(i), t) for t, row in enumerate(text_top) for i in row})  # fmt: skip
    found = dict(zip(pairs, score_pairs(pairs).tolist()))
    i2t = reranked(first_stage, image_top, torch.tensor([[found[(i, int(t))] for t in row]
                                                         for i, row in enumerate(image_top)]))  # fmt: skip
    t2i = reranked(first_stage.T, text_top, torch.tensor([[found[(int(i), t)] for i in row]
                                                          for t, row in enumerate(text_top)]))  # fmt: skip
    eye = torch.eye(len(first_stage))  # features whose dot products are the given scores
    image_side = retrieval_recall(eye, i2t.T.contiguous(), text_to_image)
    text_side = retrieval_recall(eye, t2i.contiguous(), text_to_image)
    return {**{n: v for n, v in image_side.items() if n.startswith("i2t")},
            **{n: v for n, v in text_side.items() if n.startswith("t2i")}}  # fmt: skip


@torch.no_grad()
def vqascore_reranked_retrieval(
    model: LightningModule, clip: LightningModule, data: RetrievalSet, k: int = 10, batch_size: int = 16
) -> dict[str, float]:
    """:func:`reranked_recall` of a retrieval set: ``clip``'s cosine first, ``model``'s VQAScore on each top k."""
    from callbacks.suite.scoring import embed_sharded_images, embed_sharded_texts

    texts = [c for captions in data.captions for c in captions]
    transform = clip.data_transforms()["eval_transform"]
    images = embed_sharded_images(clip, data.images, transform, batch_size, 0, None).cpu()
    first = images @ embed_sharded_texts(clip, texts, batch_size, None).cpu().T
    files = ImageFiles(data.images, lambda image: image.convert("RGB"))

    def score_pairs(pairs: list[tuple[int, int]]) -> torch.Tensor:
        pictures = {i: files[i] for i in sorted({i for i, _ in pairs})}
        return model.vqa_score([pictures[i] for i, _ in pairs], [texts[t] for _, t in pairs], batch_size)

    figures = reranked_recall(first, data.text_to_image, score_pairs, k)
    return {**figures, "items": len(data.images), "skipped": data.skipped, "rerank_k": k}
