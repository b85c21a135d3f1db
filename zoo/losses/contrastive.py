"""Contrastive image-text losses: CLIP, NegCLIP and UniCL (REACT), over the global batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.losses.distributed import gather, gather_with_grad


def _same_image_mask(
    image_ids: torch.Tensor | None, n_columns: int, keep: torch.Tensor | None = None
) -> torch.Tensor | None:
    """[N, n_columns] True where column j < N is another caption of row i's image (a false negative); ``keep``:
    the gathered rows that take part."""
    if image_ids is None:
        return None
    ids = gather(image_ids)
    if keep is not None:
        ids = ids[keep]
    same = ids[:, None] == ids[None, :]
    same.fill_diagonal_(False)
    return F.pad(same, (0, n_columns - len(ids)), value=False)


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE of CLIP (Radford et al., 2021, Fig. 3 pseudo-code).

    L = ½ [CE(s·V·Tᵀ, I) + CE(s·T·Vᵀ, I)] over the *global* batch: features are gathered from
    every rank with gradients, so the loss equals the single-process loss on the whole batch.

    Args:
        image_features: L2-normalised image embeddings ``[B, D]`` of this rank.
        text_features: L2-normalised text embeddings ``[B, D]``; row i pairs with image i.
        logit_scale: the temperature ``s = exp(t)`` (0-d or shape ``[1]``), already clamped.
        image_ids: optional ``[B]`` image identities; another caption of the same image is then not
            used as a negative (its logit is removed from both softmaxes).
        valid: optional ``[B]`` bool, False for a row without a pair (an image without a short caption): it is
            neither a query nor a negative; the loss is over the valid rows of the global batch (0 if none).

    Returns:
        ``{"contrastive_loss": scalar}``.
    """
    return negclip_loss(image_features, text_features, None, None, logit_scale, image_ids, "contrastive_loss", valid)


def negclip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    negative_features: torch.Tensor | None,
    negative_mask: torch.Tensor | None,
    logit_scale: torch.Tensor,
    image_ids: torch.Tensor | None = None,
    name: str = "negclip_loss",
    valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """NegCLIP (Yuksekgonul et al., ICLR 2023, Sec. 4): CLIP with hard-negative captions.

    Image→text cross-entropy runs over all texts of the global batch, the N originals followed by
    the N·K hard negatives; text→image runs over the N originals only:
    L = ½ [CE(s·V·[T; T̃]ᵀ, I) + CE(s·T·Vᵀ, I)]. Invalid negatives (``negative_mask`` False) get a
    logit of −∞, so they contribute nothing to the loss or its gradient.

    Args:
        image_features, text_features: L2-normalised ``[B, D]`` of this rank, row i pairs with image i.
        negative_features: L2-normalised ``[B, K, D]`` hard negatives of each caption, or None.
        negative_mask: ``[B, K]`` bool, True where the negative exists.
        logit_scale: the temperature ``s = exp(t)``, already clamped.
        image_ids: optional ``[B]`` image identities (see :func:`contrastive_loss`).
        valid: optional ``[B]`` rows that take part (see :func:`contrastive_loss`; not with hard negatives).

    Returns:
        ``{name: scalar}``.
    """
    images = gather_with_grad(image_features)
    texts = gather_with_grad(text_features)
    keep = None
    if valid is not None:
        if negative_features is not None:
            raise ValueError("valid rows with hard negatives are not supported")
        keep = gather(valid.bool())
        images, texts = images[keep], texts[keep]
        if not len(images):  # no pair anywhere: nothing to contrast (a zero that keeps the graph connected)
            return {name: (image_features.sum() + text_features.sum()) * 0}
    candidates, column_valid = texts, None
    if negative_features is not None:
        negatives = gather_with_grad(negative_features).flatten(0, 1)
        candidates = torch.cat([texts, negatives])
        valid = gather(negative_mask.to(torch.uint8)).flatten().bool()
        column_valid = torch.cat([torch.ones(len(texts), dtype=torch.bool, device=valid.device), valid])
    logits_per_image = logit_scale * images @ candidates.T
    logits_per_text = logit_scale * texts @ images.T
    if column_valid is not None:
        logits_per_image = logits_per_image.masked_fill(~column_valid[None, :], float("-inf"))
    false_negatives = _same_image_mask(image_ids, logits_per_image.shape[1], keep)
    if false_negatives is not None:
        logits_per_image = logits_per_image.masked_fill(false_negatives, float("-inf"))
        logits_per_text = logits_per_text.masked_fill(false_negatives[:, : len(images)], float("-inf"))
    labels = torch.arange(len(images), device=images.device)
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    return {name: loss}


# captions whose text embeddings agree to this tolerance count as identical (float rounding)
SAME_TEXT_TOLERANCE = 1e-6


def unicl_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    threshold: float = 0.9,
) -> dict[str, torch.Tensor]:
    """UniCL's bidirectional contrastive loss as REACT uses it (Liu et al., 2023, eq. 2.4-2.6).

    The positives of image i are every text j of the global batch with cos(t_j, t_i) ≥ γ (always
    j = i); each direction averages −log softmax over an anchor's positives:
    L_i2t = −1/B Σ_i 1/|P(i)| Σ_{k∈P(i)} log(exp(s·v_i·t_k) / Σ_j exp(s·v_i·t_j)), L_t2i likewise over
    images, L = ½ (L_i2t + L_t2i). With γ = 1 and unique captions P(i) = {i}: exactly the CLIP loss.
    The positive sets come from the text features without gradient.

    Args:
        image_features, text_features: L2-normalised ``[B, D]`` of this rank, row i pairs with image i.
        logit_scale: the temperature ``s``, already clamped.
        threshold: γ (REACT: 0.9 for classification customisation).

    Returns:
        ``{"unicl_loss": scalar}``.
    """
    images = gather_with_grad(image_features)
    texts = gather_with_grad(text_features)
    with torch.no_grad():
        positive = texts @ texts.T >= threshold - SAME_TEXT_TOLERANCE
        positive.fill_diagonal_(True)
    targets = positive.to(images.dtype)
    logits = logit_scale * images @ texts.T
    image_to_text = -(targets * logits.log_softmax(dim=1)).sum(1) / targets.sum(1)
    text_to_image = -(targets.T * logits.T.log_softmax(dim=1)).sum(1) / targets.sum(0)
    return {"unicl_loss": (image_to_text.mean() + text_to_image.mean()) / 2}
