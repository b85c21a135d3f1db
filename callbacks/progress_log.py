"""Plain progress lines for runs without a terminal (``nohup``, SLURM): a log file gets

    epoch 0 step 50/1560 loss 3.2107 lr 4.90e-05 samples/s 812.3   (+ tokens/s 10230.4 for token batches)
    epoch 0 step 156 val/loss 2.9870 val/retrieval/i2t_R@1 0.1240 ...

instead of a progress bar redrawn with carriage returns and printed only at exit. In a terminal the
callback does nothing and the bars stay.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from callbacks.run_summary import figures, say


def samples_in(batch: Any, model: LightningModule) -> int:
    """Samples in a batch: the module's ``batch_size(batch)`` hook when it has one, else the length of
    the first tensor found (0 when there is none)."""
    if callable(getattr(model, "batch_size", None)):
        return int(model.batch_size(batch))
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else [batch]
    return next((len(item) for item in items if isinstance(item, torch.Tensor) and item.ndim > 0), 0)


class FileProgressLog(Callback):
    """Without a terminal on stdout: one line every ``every_n_steps`` optimiser steps (epoch, step / total,
    training loss, learning rate, samples per second over all processes, validation time excluded; for token
    batches, attended tokens per second too, padding excluded) and
    one line per validation epoch with its figures; Lightning's progress bar is disabled. In a terminal:
    nothing.

    Args:
        every_n_steps: optimiser steps between two lines.
        force: ``True`` / ``False`` to log / stay silent whatever stdout is; ``None``: log when stdout is
            not a terminal.
    """

    def __init__(self, every_n_steps: int = 50, force: bool | None = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.force = force
        self.active = False
        self._total = math.inf
        self._samples = self._tokens = 0
        self._since = 0.0  # start of the current measuring window (moved forward by validation time)
        self._paused_at: float | None = None
        self._last_step = -1

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.active = not sys.stdout.isatty() if self.force is None else self.force
        if self.active and trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.disable()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._total = trainer.estimated_stepping_batches
        self._samples, self._tokens, self._since, self._last_step = 0, 0, time.monotonic(), trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        self._samples += samples_in(batch, pl_module) * trainer.world_size
        if isinstance(batch, Mapping) and isinstance(batch.get("attention_mask"), torch.Tensor):  # LM batches
            self._tokens += int(batch["attention_mask"].sum()) * trainer.world_size  # padding excluded
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        elapsed = max(time.monotonic() - self._since, 1e-9)
        total = f"/{int(self._total)}" if math.isfinite(self._total) else ""
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None:
            loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        loss_text = f"{float(loss):.4f}" if loss is not None else "-"
        lr = f"{trainer.optimizers[0].param_groups[0]['lr']:.2e}" if trainer.optimizers else "-"
        tokens = f" tokens/s {self._tokens / elapsed:.1f}" if self._tokens else ""
        say(
            trainer,
            f"epoch {trainer.current_epoch} step {step}{total} loss {loss_text} lr {lr} "
            f"samples/s {self._samples / elapsed:.1f}{tokens}",
        )
        self._samples, self._tokens, self._since = 0, 0, time.monotonic()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._paused_at = time.monotonic()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._paused_at is not None:
            self._since += time.monotonic() - self._paused_at  # validation time is no training time
            self._paused_at = None
        if not self.active or trainer.sanity_checking:
            return
        shown = " ".join(f"{name} {value:.4f}" for name, value in figures(trainer.callback_metrics, "val").items())
        say(trainer, f"epoch {trainer.current_epoch} step {trainer.global_step} {shown}".rstrip())
