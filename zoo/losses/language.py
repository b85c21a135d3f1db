"""Masked causal language-model loss, normalised over the supervised tokens of the global batch.

LLaVA's loss is the mean next-token cross-entropy over the supervised tokens (labels ≠ −100) of the
whole optimiser step: every rank and every accumulated micro-batch. A per-rank (or per-micro-batch)
mean weights a short sample's tokens more than a long one's, so 2 processes x B would not equal
1 process x 2B. Here each call returns ``Σ_local CE / N_global · world``: DDP's gradient averaging divides
by ``world`` again, so the step's gradient is exactly ``∇ Σ_global CE / N_global``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.losses.distributed import all_reduce_sum, world_size

IGNORE_INDEX = -100


def supervised_token_count(labels: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Number of supervised next-token targets (``labels[:, 1:] != -100``) in ``labels`` [B, L] (or a list of
    micro-batches), summed over every rank: the normaliser of :func:`causal_lm_loss`."""
    parts = labels if isinstance(labels, list | tuple) else [labels]
    count = sum((part[:, 1:] != IGNORE_INDEX).sum() for part in parts)
    return all_reduce_sum(torch.as_tensor(count, device=parts[0].device))


def causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None = None,
    num_supervised: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Next-token cross-entropy of a causal LM, from its final hidden states.

    Args:
        hidden: [B, L, D] final hidden states (after the final norm); position t predicts ``labels[:, t + 1]``.
        labels: [B, L] token ids, −100 where no loss is taken; not shifted (this function shifts).
        head_weight, head_bias: the LM head ([V, D], [V]); logits are computed only at supervised positions,
            never for the whole [B·L, V].
        num_supervised: the normaliser N (default: :func:`supervised_token_count` of ``labels``, all ranks);
            pass the count of every micro-batch of an accumulated step so k micro-batches equal one batch.

    Returns:
        ``{"lm_loss": Σ CE / N · world}``; with one process, the mean CE over supervised tokens.
    """
    total, _ = sequence_nll(hidden, labels, head_weight, head_bias)
    if num_supervised is None:
        num_supervised = supervised_token_count(labels)
    # clamp: a step with no supervised token anywhere gives 0, not NaN (the data module refuses such samples)
    return {"lm_loss": total.sum() * world_size() / num_supervised.clamp(min=1).to(total.dtype)}


def sequence_nll(
    hidden: torch.Tensor, labels: torch.Tensor, head_weight: torch.Tensor, head_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed next-token cross-entropy and supervised-token count, ``([B], [B])``.

    Position t of ``hidden`` [B, L, D] predicts ``labels[:, t + 1]``; logits are computed only at supervised
    positions (labels ≠ −100), in float32. A row's values do not depend on the other rows of the batch.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    logits = F.linear(hidden[:, :-1][keep], head_weight, head_bias).float()
    per_token = F.cross_entropy(logits, targets[keep], reduction="none")
    rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(targets)[keep]
    total = torch.zeros(len(labels), device=per_token.device, dtype=per_token.dtype).index_add(0, rows, per_token)
    return total, keep.sum(1)
