"""Masked causal language-model loss, normalised over the supervised tokens of the global batch.

LLaVA's loss is the mean next-token cross-entropy over the supervised tokens (labels ≠ −100) of the
whole optimiser step: every rank and every accumulated micro-batch. A per-rank (or per-micro-batch)
mean weights a short sample's tokens more than a long one's, so 2 processes x B would not equal
1 process x 2B. Here each call returns ``Σ_local CE / N_global · world``: DDP's gradient averaging divides
by ``world`` again, so the step's gradient is exactly ``∇ Σ_global CE / N_global``.

The [tokens × vocabulary] logits are never materialised: logits exist only at supervised positions, and
there (:func:`linear_cross_entropy`) only ``chunk_size`` rows at a time, in the forward and again, recomputed,
in the backward, so the loss's peak memory is O(chunk × V) instead of O(N_supervised × V).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.losses.distributed import all_reduce_sum, world_size

IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 1024  # tokens; x V = 32k: 125 MiB of float32 logits a chunk


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
    *,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> dict[str, torch.Tensor]:
    """Next-token cross-entropy of a causal LM, from its final hidden states.

    Args:
        hidden: [B, L, D] final hidden states (after the final norm); position t predicts ``labels[:, t + 1]``.
        labels: [B, L] token ids, −100 where no loss is taken; not shifted (this function shifts).
        head_weight, head_bias: the LM head ([V, D], [V]); logits are computed only at supervised positions,
            never for the whole [B·L, V].
        num_supervised: the normaliser N (default: :func:`supervised_token_count` of ``labels``, all ranks);
            pass the count of every micro-batch of an accumulated step so k micro-batches equal one batch.
        chunk_size: supervised tokens per chunk of logits (see :func:`linear_cross_entropy`); ``None``: all at once.

    Returns:
        ``{"lm_loss": Σ CE / N · world}``; with one process, the mean CE over supervised tokens.
    """
    total, _ = sequence_nll(hidden, labels, head_weight, head_bias, chunk_size=chunk_size)
    if num_supervised is None:
        num_supervised = supervised_token_count(labels)
    # clamp: a step with no supervised token anywhere gives 0, not NaN (the data module refuses such samples)
    return {"lm_loss": total.sum() * world_size() / num_supervised.clamp(min=1).to(total.dtype)}


def sequence_nll(
    hidden: torch.Tensor,
    labels: torch.Tensor,
    head_weight: torch.Tensor,
    head_bias: torch.Tensor | None = None,
    *,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed next-token cross-entropy and supervised-token count, ``([B], [B])``.

    Position t of ``hidden`` [B, L, D] predicts ``labels[:, t + 1]``; logits are computed only at supervised
    positions (labels ≠ −100), in float32, ``chunk_size`` tokens at a time (:func:`linear_cross_entropy`).
    A row's values do not depend on the other rows of the batch.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    per_token = linear_cross_entropy(hidden[:, :-1][keep], targets[keep], head_weight, head_bias, chunk_size)
    rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(targets)[keep]
    total = torch.zeros(len(labels), device=per_token.device, dtype=per_token.dtype).index_add(0, rows, per_token)
    return total, keep.sum(1)


def linear_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Per-token ``CE(hidden @ weight.T + bias, targets)`` [N] in float32, from ``hidden`` [N, D], ``targets`` [N]
    (all in [0, V)), ``weight`` [V, D] and ``bias`` [V].

    ``chunk_size=None`` is the plain computation (one [N, V] logits tensor, kept for the backward).
    Otherwise :class:`ChunkedLinearCrossEntropy`: equal loss and gradients (w.r.t. hidden, weight, bias) with
    O(chunk_size × V) memory. Logits are computed in the dtype ``F.linear`` would use (autocast's, or the
    inputs'), then cast to float32, as the plain path does.
    """
    if chunk_size is None:
        return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="none")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of tokens or None, got {chunk_size}")
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    with torch.autocast(device, enabled=False):  # casts are explicit inside; the backward sees the same dtype
        return ChunkedLinearCrossEntropy.apply(hidden, targets, weight, bias, chunk_size, dtype)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Linear layer + per-token cross-entropy, ``chunk_size`` rows at a time, in plain PyTorch (any device,
    any strategy).

    Forward: per chunk, logits [c, V] → float32 → logsumexp; keeps only the logsumexp [N] (besides the inputs).
    Backward: per chunk, the logits again, ``g · (softmax − one-hot)`` with ``g`` the incoming per-token
    gradient, then ``∂hidden = dlogits @ W`` (that chunk's rows), ``∂W += dlogitsᵀ @ hidden`` (float32
    accumulator), ``∂b += Σ dlogits``. Recomputing costs one more [c, D] × [D, V] product a chunk than the
    plain backward, but holds nothing of size V between forward and backward, needs no scalar loss (per-row
    weights such as :func:`sequence_nll`'s work), and wastes nothing under ``no_grad``. Gradients are skipped
    for inputs that do not need them (a frozen head, hidden states without grad).

    Future work: on a GPU a fused Triton kernel (liger-kernel's ``LigerFusedLinearCrossEntropyFunction``,
    which computes the gradients in the forward and scales them by a scalar in the backward) could be used
    where installed and verified equal to this; it has no CPU path.
    """

    @staticmethod
    def forward(ctx, hidden, targets, weight, bias, chunk_size, dtype):
        dtype = dtype or torch.promote_types(hidden.dtype, weight.dtype)
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        lse = torch.empty(len(hidden), device=hidden.device, dtype=torch.float32)
        per_token = torch.empty_like(lse)
        for start in range(0, len(hidden), chunk_size):
            rows = slice(start, start + chunk_size)
            logits = F.linear(hidden[rows].to(dtype), w, b).float()
            lse[rows] = torch.logsumexp(logits, dim=1)
            per_token[rows] = lse[rows] - logits.gather(1, targets[rows, None]).squeeze(1)
        ctx.save_for_backward(hidden, targets, weight, bias, lse)
        ctx.chunk_size, ctx.dtype = chunk_size, dtype
        return per_token

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_per_token):
        hidden, targets, weight, bias, lse = ctx.saved_tensors
        need_hidden, _, need_weight, need_bias = ctx.needs_input_grad[:4]
        dtype = ctx.dtype
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros(len(weight), device=weight.device, dtype=torch.float32) if need_bias else None
        for start in range(0, len(hidden), ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            x = hidden[rows].to(dtype)
            grad_logits = F.linear(x, w, b).float().sub_(lse[rows, None]).exp_()  # softmax, in place
            grad_logits.scatter_add_(1, targets[rows, None], grad_logits.new_full((len(x), 1), -1.0))
            grad_logits.mul_(grad_per_token[rows, None].float())
            if need_bias:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(dtype)
            if need_hidden:
                grad_hidden[rows] = grad_logits @ w
            if need_weight and dtype == torch.float32:
                grad_weight.addmm_(grad_logits.T, x)
            elif need_weight:
                grad_weight += (grad_logits.T @ x).float()
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, None, grad_weight, grad_bias, None, None
