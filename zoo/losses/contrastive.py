"""Contrastive image-text losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.losses.distributed import gather_with_grad


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE of CLIP (Radford et al., 2021, Fig. 3 pseudo-code).

    L = ½ [CE(s·V·Tᵀ, I) + CE(s·T·Vᵀ, I)] over the *global* batch: features are gathered from
    every rank with gradients, so the loss equals the single-process loss on the whole batch.

    Args:
        image_features: L2-normalised image embeddings ``[B, D]`` of this rank.
        text_features: L2-normalised text embeddings ``[B, D]``; row i pairs with image i.
        logit_scale: the temperature ``s = exp(t)`` (0-d or shape ``[1]``), already clamped.

    Returns:
        ``{"contrastive_loss": scalar}``.
    """
    images = gather_with_grad(image_features)
    texts = gather_with_grad(text_features)
    logits = logit_scale * images @ texts.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    return {"contrastive_loss": loss}
