"""FSC-CLIP losses (Oh et al., "Preserving Multi-Modal Capabilities of Pre-trained VLMs for Improving
Vision-Linguistic Compositionality"): global and local hard-negative losses with selective
calibrated regularisation (focal loss + label smoothing)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.losses.distributed import gather, gather_with_grad


def local_score(
    token_features: torch.Tensor,
    token_mask: torch.Tensor,
    patch_features: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Local token-patch alignment score S_l of each caption with its image.

    Per token w_t: r_tp = <w_t, v_p> (raw dot products); a_tp = min-max normalisation of r_t over the
    patches, renormalised to sum 1 and detached (stop-gradient); v̂_t = normalise(Σ_p a_tp v_p);
    s_t = cos(w_t, v̂_t); S_l = logsumexp over valid tokens of s·s_t. When all r_tp of a token are
    equal (max = min, 0/0) the weights are uniform.

    Args:
        token_features: ``[N, L, D]`` projected text tokens (after ``ln_final``).
        token_mask: ``[N, L]`` True for the tokens that count (SOT and padding dropped, EOT kept).
        patch_features: ``[N, P, D]`` projected patch tokens of each caption's image (CLS dropped).
        logit_scale: the CLIP temperature s (already exponentiated and clamped).

    Returns:
        ``[N]`` local scores.
    """
    relevance = torch.einsum("nld,npd->nlp", token_features, patch_features)
    low = relevance.min(dim=-1, keepdim=True).values
    span = relevance.max(dim=-1, keepdim=True).values - low
    flat = span == 0
    weights = torch.where(flat, torch.ones_like(relevance), (relevance - low) / torch.where(flat, 1, span))
    weights = (weights / weights.sum(dim=-1, keepdim=True)).detach()
    attended = F.normalize(torch.einsum("nlp,npd->nld", weights, patch_features), dim=-1)
    token_scores = (F.normalize(token_features, dim=-1) * attended).sum(-1)
    logits = (logit_scale * token_scores).masked_fill(~token_mask, float("-inf"))
    return torch.logsumexp(logits, dim=-1)


def calibrated_hard_negative_loss(
    logits: torch.Tensor, negative_mask: torch.Tensor, gamma: float = 2.0, beta: float = 0.02
) -> torch.Tensor:
    """Selective calibrated regularisation over (1+K)-way rows, exact global mean over valid rows.

    Per row with K' = 1 + Σ m: targets y_0 = (1−β) + β/K', y_j = (β/K')·m_j; p = softmax(z) over
    the positive and the valid negatives (invalid ones are −∞; the official code keeps them at logit 0);
    loss = Σ_j y_j (1 − p_j)^γ (−log p_j), gradient through the focal factor; the mean runs over rows
    with at least one valid negative, across all ranks (γ = 0, β = 0 is plain cross-entropy).

    Args:
        logits: ``[B, 1+K]``, column 0 the positive.
        negative_mask: ``[B, K]`` True where the negative exists.
    """
    candidates = torch.cat([torch.ones_like(negative_mask[:, :1]), negative_mask], dim=1)
    log_p = torch.log_softmax(logits.masked_fill(~candidates, float("-inf")), dim=-1)
    log_p = log_p.masked_fill(~candidates, 0.0)  # excluded candidates: no term, and no 0·∞ in backward
    k = candidates.sum(dim=1, keepdim=True).to(logits.dtype)
    targets = (beta / k) * candidates.to(logits.dtype)
    targets[:, 0] += 1 - beta
    focal = (1 - log_p.exp()).pow(gamma)
    per_row = -(targets * focal * log_p).sum(dim=-1)
    rows = gather(negative_mask.any(dim=1).to(torch.uint8)).bool()
    per_row = gather_with_grad(per_row)
    if not rows.any():
        return per_row.sum() * 0  # no row has a negative: nothing to learn, keep the graph
    return per_row[rows].mean()


def fsc_hard_negative_losses(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    negative_features: torch.Tensor,
    negative_mask: torch.Tensor,
    logit_scale: torch.Tensor,
    local_scores: torch.Tensor | None = None,
    gamma: float = 2.0,
    beta: float = 0.02,
) -> dict[str, torch.Tensor]:
    """The global HN loss on z = s·[cos(v_i, t_i), cos(v_i, t̃_i^k)] and, given ``local_scores``
    ``[B, 1+K]`` (S_l of the caption then of each negative), the local HN loss on S_l."""
    candidates = torch.cat([text_features[:, None], negative_features], dim=1)
    global_logits = logit_scale * torch.einsum("bd,bkd->bk", image_features, candidates)
    losses = {"global_hn_loss": calibrated_hard_negative_loss(global_logits, negative_mask, gamma, beta)}
    if local_scores is not None:
        losses["local_hn_loss"] = calibrated_hard_negative_loss(local_scores, negative_mask, gamma, beta)
    return losses
