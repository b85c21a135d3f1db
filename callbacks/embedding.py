"""Batched embedding loops and the epoch-end hook shared by the evaluation callbacks."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from tqdm.auto import tqdm

from zoo.losses.distributed import rank, world_size


def progress(iterable: Iterable, trainer: Trainer | None, desc: str, total: int | None = None) -> Iterable:
    """A tqdm bar on the global-zero process (silent elsewhere, when the trainer hides bars, and when stderr is
    no terminal: under nohup / SLURM a bar's carriage returns would flood the log file)."""
    show = trainer is None or (trainer.is_global_zero and trainer.progress_bar_callback is not None)
    show = show and sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, leave=False, disable=not show)


@torch.no_grad()
def embed_images(
    model: LightningModule, batches: Iterable[torch.Tensor], trainer: Trainer | None = None, desc: str = "images"
) -> torch.Tensor:
    """L2-normalised image embeddings ``[N, D]`` (float32, on the model's device)."""
    out = [model.encode_image(images.to(model.device)).float() for images in progress(batches, trainer, desc)]
    return torch.cat(out)


@torch.no_grad()
def embed_texts(
    model: LightningModule, texts: list[str], batch_size: int, trainer: Trainer | None = None, desc: str = "texts"
) -> torch.Tensor:
    """L2-normalised text embeddings ``[N, D]`` of raw strings, ``batch_size`` at a time."""
    chunks = range(0, len(texts), batch_size)
    out = [
        model.encode_text(texts[i : i + batch_size]).float() for i in progress(chunks, trainer, desc, total=len(chunks))
    ]
    return torch.cat(out)


class EpochEndEvaluation(Callback):
    """Base of the evaluation callbacks: runs :meth:`run` after validation epochs (every
    ``every_n_epochs``, not during the sanity check) and after test epochs, under the trainer's
    precision context, and writes results as JSON under ``<log_dir>/<name>/``; ``written`` lists the
    files written, in order (what :class:`callbacks.run_summary.RunSummary` reports)."""

    name = "evaluation"

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.written: list[Path] = []

    @staticmethod
    def max_batches(trainer: Trainer) -> int | None:
        """Batches to evaluate: all, or as many as ``fast_dev_run`` asks for."""
        return int(trainer.fast_dev_run) or None

    def run(self, trainer: Trainer, model: LightningModule, stage: str) -> dict[str, Any]:
        """Evaluate; return the metrics to log as ``{"metrics": {name: float}, ...anything else}``."""
        raise NotImplementedError

    def summary(self, result: dict[str, Any]) -> str:
        """One printed line of results (percentages)."""
        return ", ".join(f"{metric} {100 * value:.1f}%" for metric, value in result["metrics"].items())

    def _evaluate_and_log(self, trainer: Trainer, model: LightningModule, stage: str) -> None:
        with trainer.strategy.precision_plugin.forward_context():
            result = self.run(trainer, model, stage)
        for metric, value in result["metrics"].items():
            model.log(f"{stage}/{self.name}/{metric}", value, rank_zero_only=True)
        rank_zero_info(f"{stage} {self.name} (epoch {trainer.current_epoch}): {self.summary(result)}")
        log_dir = trainer.log_dir  # a broadcast: every rank asks
        if trainer.is_global_zero and log_dir is not None:
            out = Path(log_dir) / self.name / f"{stage}-epoch{trainer.current_epoch}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2, default=str))
            self.written.append(out)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0:
            self._evaluate_and_log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate_and_log(trainer, pl_module, "test")


def shard(n: int) -> range:
    """This rank's share of ``n`` items: indices rank, rank + world, ... (each item exactly once)."""
    return range(rank(), n, world_size())


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble ``[n, ...]`` in item order from every rank's :func:`shard` rows (no padded duplicates)."""
    world = world_size()
    if world == 1:
        return local
    size = -(-n // world)  # ceil: ranks hold size or size - 1 rows
    padded = local.new_zeros(size, *local.shape[1:])
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = local.new_empty(n, *local.shape[1:])
    for source, part in enumerate(parts):
        rows = range(source, n, world)
        out[list(rows)] = part[: len(rows)]
    return out
