"""The shared LightningModule base: optimiser recipe, LR schedule and loss logging."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import LightningModule
from torch import nn

NO_DECAY_MARKERS = ("bias", "ln", "norm", "bn", "embedding", "logit_scale", "logit_bias")


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """open_clip's rule plus embeddings: no decay for <2-d tensors, norms, biases, embeddings, temperature."""
    return param.ndim < 2 or any(marker in name for marker in NO_DECAY_MARKERS)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 0 to 1 over ``warmup_steps``, then cosine to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ZooModule(LightningModule):
    """Base of every method: AdamW with no-decay groups and a warmup + cosine (or constant) schedule.

    Subclasses implement :meth:`features` (batch → per-sample tensors the loss needs) and
    :meth:`loss_terms` (features → dict of named ``*_loss`` terms); the base logs every term and
    optimises their sum.

    Contrastive accumulation (``contrastive_accumulation: k``) contrasts k micro-batches as one
    batch, as open_clip's ``accum_freq`` / GradCache do: the features of all k are computed without
    gradients, then each micro-batch is recomputed with gradients and the loss over the whole
    accumulated batch is back-propagated through it alone; the sum of the k backward passes is the
    gradient of one batch of k·B (tested). The loss's own parameters (the temperature) take their
    gradient in the first pass only. Forward passes must be deterministic (no dropout).

    Args:
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay for matrices (not biases, norms, embeddings, temperature).
        betas: AdamW betas (CLIP: 0.9, 0.98).
        eps: AdamW epsilon (CLIP: 1e-6).
        warmup_steps: linear warmup length in optimiser steps.
        lr_schedule: ``"cosine"`` decays to ``min_lr_ratio * lr`` at the last step; ``"constant"`` stays at ``lr``.
        min_lr_ratio: final LR as a fraction of ``lr`` for the cosine schedule.
        contrastive_accumulation: micro-batches contrasted together per optimiser step.
    """

    def __init__(
        self,
        lr: float = 5e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int = 0,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        min_lr_ratio: float = 0.0,
        contrastive_accumulation: int = 1,
    ) -> None:
        super().__init__()
        if lr <= 0 or weight_decay < 0 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1 or contrastive_accumulation < 1:
            raise ValueError(
                f"invalid optimiser settings: lr={lr}, weight_decay={weight_decay}, "
                f"warmup_steps={warmup_steps}, min_lr_ratio={min_lr_ratio}, "
                f"contrastive_accumulation={contrastive_accumulation}"
            )
        self.optim_args = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self.min_lr_ratio = min_lr_ratio
        self.contrastive_accumulation = contrastive_accumulation
        self.automatic_optimization = contrastive_accumulation == 1
        self._pending: list[dict[str, Any]] = []

    def features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Per-sample tensors the loss needs, row i for sample i (what accumulation caches)."""
        raise NotImplementedError

    def loss_terms(
        self, features: dict[str, torch.Tensor | None], detach_parameters: bool = False
    ) -> dict[str, torch.Tensor]:
        """Named loss terms of (possibly accumulated) features; ``detach_parameters``: the loss's own
        parameters (the temperature) take no gradient."""
        raise NotImplementedError

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named loss terms for a batch; the optimised total is their sum."""
        return self.loss_terms(self.features(batch))

    def accumulated_losses(
        self, batches: list[dict[str, Any]], backward: Callable[[torch.Tensor], None] = torch.Tensor.backward
    ) -> dict[str, torch.Tensor]:
        """Back-propagate the loss of ``batches`` contrasted as one batch, one micro-batch at a time;
        returns the (detached) loss terms."""
        with torch.no_grad():
            cached = [self.features(batch) for batch in batches]
        for j, batch in enumerate(batches):
            fresh = self.features(batch)
            merged = {
                key: None if value is None else torch.cat([value if i == j else c[key] for i, c in enumerate(cached)])
                for key, value in fresh.items()
            }
            terms = self.loss_terms(merged, detach_parameters=j > 0)
            backward(torch.stack(list(terms.values())).sum())
        return {name: term.detach() for name, term in terms.items()}

    def _accumulated_step(self, batches: list[dict[str, Any]]) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        terms = self.accumulated_losses(batches, self.manual_backward)
        optimizer.step()
        schedule = self.lr_schedulers()
        if schedule is not None:
            schedule.step()
        self._log_terms(terms, "train", sum(len(batch["image"]) for batch in batches))

    def _log_terms(self, terms: dict[str, torch.Tensor], stage: str, batch_size: int) -> torch.Tensor:
        """Log every term and their sum (``{stage}/loss``); returns the sum."""
        total = torch.stack(list(terms.values())).sum()
        sync = stage != "train"
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=batch_size, sync_dist=sync)
        self.log(f"{stage}/loss", total, prog_bar=True, batch_size=batch_size, sync_dist=sync)
        return total

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        return self._log_terms(self.losses(batch), stage, len(batch["image"]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self._step(batch, "train")
        self._pending.append(batch)
        if len(self._pending) == self.contrastive_accumulation:
            batches, self._pending = self._pending, []
            self._accumulated_step(batches)
        return None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The RNG states (Python, NumPy, torch, CUDA) go into every checkpoint, so a resumed run draws
        the same augmentations and dataloader worker seeds as an uninterrupted one."""
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        name, keys, position, has_gauss, cached = states["numpy"]  # as tensors and numbers: weights_only loads
        states["numpy"] = [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached]
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint and self._trainer is not None:  # resuming a fit, not loading weights
            states = dict(checkpoint["rng_states"])
            name, keys, position, has_gauss, cached = states["numpy"]
            states["numpy"] = (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)
            _set_rng_states(states)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split into weight-decay and no-decay groups."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if param.requires_grad:
                (no_decay if no_weight_decay(name, param) else decay).append(param)
        return [
            {"params": decay, "weight_decay": self.optim_args["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def configure_optimizers(self) -> dict[str, Any]:
        # fused AdamW: one kernel for all parameters (CUDA and CPU), numerically the same update rule
        optimizer = torch.optim.AdamW(self.parameter_groups(), **self.optim_args, fused=True)
        if self.lr_schedule == "constant":
            return {"optimizer": optimizer}
        total_steps = self.trainer.estimated_stepping_batches / self.contrastive_accumulation
        if not math.isfinite(total_steps):
            raise ValueError(
                "the cosine schedule needs the run's length, and a streaming source (webdataset) has none: "
                "set --trainer.max_steps, or --model.init_args.lr_schedule constant"
            )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_cosine(step, self.warmup_steps, int(total_steps), self.min_lr_ratio),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
