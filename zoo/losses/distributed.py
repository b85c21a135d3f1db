"""Distributed helpers shared by every loss: written once, read at call time.

Lightning builds modules before the strategy starts the process group, so nothing here is
captured at construction: each call asks ``torch.distributed`` for the current rank and world.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] from every rank along dim 0, keeping gradients.

    Every rank must pass the same ``B``. The backward of ``all_gather`` sums the gradient of each
    slot over ranks; since every rank computes the same global loss, that sum is ``world`` times
    the single-process gradient, and DDP's gradient averaging divides it back: 2 processes x B
    samples give exactly the loss and parameter gradients of 1 process x 2B samples.
    """
    if world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x.contiguous()), dim=0)


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [B, ...] from every rank along dim 0, without gradients (masks, ids)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over every rank, without gradients (token counts, normalisers)."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
