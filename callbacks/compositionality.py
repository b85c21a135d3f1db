"""Image→text multiple-choice compositionality accuracy (SugarCrepe-style records)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from callbacks.embedding import EpochEndEvaluation, embed_images, embed_texts
from datamodules.benchmarks import ImageFiles, load_compositional_benchmark
from datamodules.benchmarks.shapesworld import shapesworld_benchmark_file, shapesworld_settings


def multiple_choice_accuracy(
    positive_scores: torch.Tensor, negative_scores: torch.Tensor, categories: list[str]
) -> dict[str, float]:
    """Share of records whose positive scores strictly above the negative (a tie is a failure),
    per category, plus ``mean`` (the macro average over categories)."""
    correct = (positive_scores > negative_scores).tolist()
    per_category: dict[str, list[bool]] = defaultdict(list)
    for category, ok in zip(categories, correct):
        per_category[category].append(ok)
    accuracy = {c: sum(v) / len(v) for c, v in sorted(per_category.items())}
    accuracy["mean"] = sum(accuracy.values()) / len(accuracy)
    return accuracy


class CompositionalityEvaluation(EpochEndEvaluation):
    """Multiple-choice accuracy per category on a compositional benchmark JSON.

    Records are ``{"image", "positive", "negative", "category"}``; a record is right when
    s(image, positive) > s(image, negative). Without ``benchmark`` ShapesWorld's compositional split
    is used, written on first use (``compositional-seed{seed}-n{n}-px{image_size}/compositional.json``
    under ``benchmark_dir``), so the same code scores real and synthetic data with any data module.
    Logs ``{stage}/compositionality/{category}`` and ``.../mean``.

    Args:
        benchmark: path of a benchmark JSON, or ``None`` for ShapesWorld's split.
        batch_size: images / texts per forward.
        num_workers: image loading workers.
        every_n_epochs: evaluate every n validation epochs.
        n: scenes of the ShapesWorld split.
        seed, image_size, benchmark_dir: of the ShapesWorld split; ``None`` takes the data module's
            (its ``shapesworld`` config and ``benchmark_dir``, when it has them), else 0, 64 and
            ``shapesworld/`` of the cache folder (``$VLZOO_CACHE`` or ``~/.cache/vlzoo``).
    """

    name = "compositionality"

    def __init__(
        self,
        benchmark: str | None = None,
        batch_size: int = 128,
        num_workers: int = 2,
        every_n_epochs: int = 1,
        n: int = 500,
        seed: int | None = None,
        image_size: int | None = None,
        benchmark_dir: str | None = None,
    ) -> None:
        super().__init__(every_n_epochs)
        self.benchmark = benchmark
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.n = n
        self.seed, self.image_size, self.benchmark_dir = seed, image_size, benchmark_dir

    def evaluate(
        self, trainer: Trainer | None, model: LightningModule, benchmark: str | Path, limit: int | None = None
    ) -> dict[str, float]:
        """Accuracy per category of ``model`` on the benchmark file (its first ``limit`` records if given)."""
        records = load_compositional_benchmark(benchmark)[:limit]
        images = sorted({r["image"] for r in records})
        texts = sorted({t for r in records for t in (r["positive"], r["negative"])})
        loader = DataLoader(
            ImageFiles(images, model.data_transforms()["eval_transform"]),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )
        image_features = embed_images(model, loader, trainer, desc="compositional images")
        text_features = embed_texts(model, texts, self.batch_size, trainer, desc="compositional texts")
        image_index = {path: i for i, path in enumerate(images)}
        text_index = {text: i for i, text in enumerate(texts)}
        rows = image_features[[image_index[r["image"]] for r in records]]
        positives = text_features[[text_index[r["positive"]] for r in records]]
        negatives = text_features[[text_index[r["negative"]] for r in records]]
        return multiple_choice_accuracy(
            (rows * positives).sum(-1), (rows * negatives).sum(-1), [r["category"] for r in records]
        )

    def _benchmark(self, trainer: Trainer) -> Path:
        if self.benchmark is not None:
            return Path(self.benchmark)
        where = shapesworld_settings(trainer.datamodule, self.seed, self.image_size, self.benchmark_dir)
        if trainer.is_global_zero:  # write the synthetic split once, then every rank reads it
            shapesworld_benchmark_file("compositional", self.n, **where)
        trainer.strategy.barrier()
        return shapesworld_benchmark_file("compositional", self.n, **where)

    def run(self, trainer: Trainer, model: LightningModule, stage: str) -> dict[str, Any]:
        benchmark = self._benchmark(trainer)
        max_batches = self.max_batches(trainer)
        limit = max_batches and max_batches * self.batch_size
        return {"metrics": self.evaluate(trainer, model, benchmark, limit), "benchmark": str(benchmark)}
