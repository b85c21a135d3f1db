"""The shared LightningModule base: optimiser recipe, LR schedule, loss logging, contrastive accumulation,
exact resume and trainable-only checkpoints, each behind a small hook a method fills."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from zoo.checkpoints import complete_trainable_only, trainable_only

NO_DECAY_MODULES = (
    nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase
)


def no_decay_by_module_type(module: nn.Module) -> set[str]:
    """Names of the parameters of ``module`` that take no weight decay, decided by the owning module's type:
    every parameter of fewer than 2 dims (biases, scales, gates) and every parameter of an embedding or a
    normalisation layer (``nn.Embedding``, ``LayerNorm``, ``RMSNorm``, batch / group norms, and any class
    whose name ends in ``Norm``, such as transformers' ``LlamaRMSNorm``). The default rule of
    :meth:`ZooModule.no_weight_decay`; a backbone adapter may answer with its own (open_clip's)."""
    exempt = set()
    for module_name, child in module.named_modules():
        whole = isinstance(child, NO_DECAY_MODULES) or type(child).__name__.endswith("Norm")
        for param_name, param in child.named_parameters(recurse=False):
            if whole or param.ndim < 2:
                exempt.add(f"{module_name}.{param_name}" if module_name else param_name)
    return exempt


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
    optimises their sum. Hooks a method may fill: :meth:`batch_size` (rows of a batch),
    :meth:`no_weight_decay` (the backbone's exemption rule), :meth:`frozen_base_reference` (where its
    frozen pre-trained weights come from, for trainable-only checkpoints) and :meth:`fsdp_wrap_classes`
    (the blocks :class:`zoo.strategies.ZooFSDPStrategy` shards by default).

    Contrastive accumulation (``contrastive_accumulation: k``) contrasts k micro-batches as one
    batch, as open_clip's ``accum_freq`` / GradCache do: the features of all k are computed without
    gradients, then each micro-batch is recomputed with gradients and the loss over the whole
    accumulated batch is back-propagated through it alone; the sum of the k backward passes is the
    gradient of one batch of k·B (tested). The loss's own parameters (the temperature) take their
    gradient in the first pass only. Forward passes must be deterministic (no dropout). It runs in
    manual optimisation: the trainer's ``gradient_clip_val`` / ``gradient_clip_algorithm`` are applied
    inside the step (Lightning refuses them in manual mode, so the module takes them over); micro-batches
    left over at the end of an epoch are dropped and counted (``accumulation`` in the checkpoint), and
    micro-batches waiting when a checkpoint is written are saved in it, so a resumed run steps on them.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay for matrices (not biases, norms, embeddings, temperature).
        betas: AdamW betas (CLIP: 0.9, 0.98).
        eps: AdamW epsilon (CLIP: 1e-6).
        warmup_steps: linear warmup length in optimiser steps.
        warmup_ratio: warmup as a fraction of the run's optimiser steps (LLaVA: 0.03), rounded up; replaces
            ``warmup_steps`` when positive.
        lr_schedule: ``"cosine"`` decays to ``min_lr_ratio * lr`` at the last step; ``"constant"`` stays at ``lr``.
        min_lr_ratio: final LR as a fraction of ``lr`` for the cosine schedule.
        contrastive_accumulation: micro-batches per optimiser step, accumulated by :meth:`accumulated_losses`
            (contrasted together by default; a method with another loss overrides it, e.g. LLaVA's token mean).
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
        warmup_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        invalid_schedule = not 0 <= warmup_ratio < 1 or warmup_steps < 0 or not 0 <= min_lr_ratio <= 1
        invalid_schedule = invalid_schedule or contrastive_accumulation < 1
        if lr <= 0 or weight_decay < 0 or invalid_schedule:
            raise ValueError(
                f"invalid optimiser settings: lr={lr}, weight_decay={weight_decay}, "
                f"warmup_steps={warmup_steps}, min_lr_ratio={min_lr_ratio}, "
                f"contrastive_accumulation={contrastive_accumulation}"
            )
        self.optim_args = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
        self.warmup_steps = warmup_steps
        self.warmup_ratio = warmup_ratio
        self.lr_schedule = lr_schedule
        self.min_lr_ratio = min_lr_ratio
        self.contrastive_accumulation = contrastive_accumulation
        self.automatic_optimization = contrastive_accumulation == 1
        self._pending: list[dict[str, Any]] = []
        self._dropped_micro_batches = 0
        self._gradient_clipping: tuple[float, str] | None = None

    # ------------------------------------------------------------------------------------ hooks
    def features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | None]:
        """Per-sample tensors the loss needs, row i for sample i (what accumulation caches)."""
        raise NotImplementedError

    def loss_terms(
        self, features: dict[str, torch.Tensor | None], detach_parameters: bool = False
    ) -> dict[str, torch.Tensor]:
        """Named loss terms of (possibly accumulated) features; ``detach_parameters``: the loss's own
        parameters (the temperature) take no gradient."""
        raise NotImplementedError

    def batch_size(self, batch: dict[str, Any]) -> int:
        """Samples in a batch, for logging (not tiles, not tokens). Image-text batches count their
        ``image`` rows; a method whose batches carry ``pixel_values`` with several tiles per sample, or
        only tokens, answers from its own keys."""
        if "image" not in batch:
            raise KeyError(
                f"{type(self).__name__} cannot count the samples of a batch without 'image' (keys: "
                f"{sorted(batch)}): override ZooModule.batch_size"
            )
        return len(batch["image"])

    def no_weight_decay(self) -> set[str]:
        """Names (as in ``named_parameters``) of the parameters that take no weight decay. Default: by
        module type (:func:`no_decay_by_module_type`); a method over a backbone asks the backbone."""
        return no_decay_by_module_type(self)

    def frozen_base_reference(self) -> dict[str, Any]:
        """The hyper-parameters that rebuild this model's frozen pre-trained weights, by dotted name
        (``{"backbone.pretrained": "openai"}``; an HF id or folder for an LVLM), with the values to save
        (files as absolute paths). A checkpoint of a run that freezes part of such a base holds only the
        trainable tensors plus this reference and a checksum of the frozen ones; a run with no frozen
        weights saves every tensor and these hyper-parameters as None (loading never fetches them).
        Default: no pre-trained base."""
        return {}

    def fsdp_wrap_classes(self) -> set[type[nn.Module]]:
        """Module classes that become one FSDP unit each by default (the backbone's blocks)."""
        return set()

    def learning_rates(self) -> dict[str, float]:
        """Learning rates of their own for parameters under some module names (``{"model.model.vision_tower":
        2e-6}``: every parameter whose name starts with that prefix and a dot); the rest use ``lr``."""
        return {}

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named loss terms for a batch; the optimised total is their sum."""
        return self.loss_terms(self.features(batch))

    # ------------------------------------------------------------------ contrastive accumulation
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

    def configure_callbacks(self) -> list:
        """Take the trainer's gradient clipping over in manual optimisation (Lightning refuses
        ``gradient_clip_val`` there): :meth:`_accumulated_step` clips with it before stepping. DeepSpeed
        clips inside its own step, so there the value goes into its config (``gradient_clipping``)."""
        trainer = self.trainer
        if not self.automatic_optimization and trainer.gradient_clip_val:
            algorithm = trainer.gradient_clip_algorithm or "norm"
            self._gradient_clipping = (float(trainer.gradient_clip_val), str(getattr(algorithm, "value", algorithm)))
            if isinstance(trainer.strategy, DeepSpeedStrategy) and isinstance(trainer.strategy.config, dict):
                trainer.strategy.config.setdefault("gradient_clipping", self._gradient_clipping[0])
            trainer.gradient_clip_val = None
        return []

    def _accumulated_step(self, batches: list[dict[str, Any]]) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        terms = self.accumulated_losses(batches, self.manual_backward)
        if self._gradient_clipping is not None:
            value, algorithm = self._gradient_clipping
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)
        optimizer.step()
        schedule = self.lr_schedulers()
        if schedule is not None:
            schedule.step()
        self._log_terms(terms, "train", sum(self.batch_size(batch) for batch in batches))

    def on_train_epoch_end(self) -> None:
        """Micro-batches left at the end of an epoch (fewer than ``contrastive_accumulation``) are
        dropped, never carried into the next epoch's contrast; the count goes into checkpoints."""
        if self._pending:
            self._dropped_micro_batches += len(self._pending)
            rank_zero_warn(
                f"epoch {self.current_epoch} ended with {len(self._pending)} micro-batch(es) short of a "
                f"contrastive_accumulation={self.contrastive_accumulation} step: dropped "
                f"({self._dropped_micro_batches} so far; use a multiple of it as the number of batches per epoch)"
            )
            self._pending = []

    # ----------------------------------------------------------------------------------- steps
    def _log_terms(self, terms: dict[str, torch.Tensor], stage: str, batch_size: int) -> torch.Tensor:
        """Log every term and their sum (``{stage}/loss``); returns the sum."""
        total = torch.stack(list(terms.values())).sum()
        sync = stage != "train"
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=batch_size, sync_dist=sync)
        self.log(f"{stage}/loss", total, prog_bar=True, batch_size=batch_size, sync_dist=sync)
        return total

    def _step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        return self._log_terms(self.losses(batch), stage, self.batch_size(batch))

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

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Every checkpoint holds the RNG states (Python, NumPy, torch, CUDA), so a resumed run draws the
        same augmentations and worker seeds as an uninterrupted one; the accumulation state (micro-batches
        waiting for their step, micro-batches dropped at epoch ends); and, for a run that freezes part of a
        pre-trained base, only the trainable tensors (see :meth:`frozen_base_reference`)."""
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        name, keys, position, has_gauss, cached = states["numpy"]  # as tensors and numbers: weights_only loads
        states["numpy"] = [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached]
        checkpoint["rng_states"] = states
        if not self.automatic_optimization:
            checkpoint["accumulation"] = {
                "pending": move_data_to_device(self._pending, "cpu"),
                "dropped_micro_batches": self._dropped_micro_batches,
            }
        frozen = {name: p for name, p in self.named_parameters() if not p.requires_grad}
        trainable_only(checkpoint, frozen, self.frozen_base_reference())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Complete a trainable-only checkpoint with the frozen base this model was just built from (its
        checksum must match); when resuming a fit, restore the RNG states and the accumulation state."""
        frozen = {name: p for name, p in self.named_parameters() if not p.requires_grad}
        complete_trainable_only(checkpoint, frozen)
        if self._trainer is None:  # loading weights, not resuming a fit
            return
        if "rng_states" in checkpoint:
            states = dict(checkpoint["rng_states"])
            name, keys, position, has_gauss, cached = states["numpy"]
            states["numpy"] = (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)
            _set_rng_states(states)
        accumulation = checkpoint.get("accumulation")
        if accumulation is not None and not self.automatic_optimization:
            self._pending = move_data_to_device(list(accumulation["pending"]), self.device)
            self._dropped_micro_batches = accumulation["dropped_micro_batches"]

    # ---------------------------------------------------------------------------- optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split into weight-decay and no-decay groups (:meth:`no_weight_decay`), and by
        learning rate (:meth:`learning_rates`; the longest matching prefix wins)."""
        exempt = self.no_weight_decay()
        prefixes = sorted(self.learning_rates().items(), key=lambda item: -len(item[0]))
        groups: dict[tuple[float | None, bool], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                lr = next((lr for prefix, lr in prefixes if name.startswith(prefix + ".")), None)
                groups.setdefault((lr, name in exempt), []).append(param)
        groups.setdefault((None, False), [])  # the two groups at ``lr`` always exist: decay first, then no-decay
        groups.setdefault((None, True), [])
        ordered = sorted(groups.items(), key=lambda item: (item[0][0] is not None, item[0][0] or 0.0, item[0][1]))
        return [
            {"params": params, "weight_decay": 0.0 if no_decay else self.optim_args["weight_decay"]}
            | ({} if lr is None else {"lr": lr})
            for (lr, no_decay), params in ordered
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
        warmup = math.ceil(self.warmup_ratio * total_steps) if self.warmup_ratio > 0 else self.warmup_steps
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup, int(total_steps), self.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
