"""The suite as a callback: every benchmark after validation / test epochs (a forgetting monitor)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import Subset

from callbacks.embedding import EpochEndEvaluation
from callbacks.suite.report import describe_model, to_markdown
from callbacks.suite.scoring import evaluate_suite
from callbacks.suite.specs import load_benchmarks
from datamodules.benchmarks import Benchmark, ClassificationSet, RetrievalSet


def _head(data: Benchmark | RetrievalSet | ClassificationSet, n: int) -> Benchmark | RetrievalSet | ClassificationSet:
    """The first ``n`` items of a benchmark (for ``fast_dev_run``)."""
    if isinstance(data, Benchmark):
        data.items = data.items[:n]
    elif isinstance(data, RetrievalSet):
        data.images, data.captions = data.images[:n], data.captions[:n]
    elif hasattr(data.dataset, "__len__"):
        data.dataset = Subset(data.dataset, range(min(n, len(data.dataset))))
    return data


class EvaluationSuite(EpochEndEvaluation):
    """Run the suite after validation / test epochs (a forgetting monitor while fine-tuning).

    Args:
        benchmarks: specs ``{"kind": ..., **loader arguments}``; default: ShapesWorld's counterparts, with
            the seed and image size of the data module's ShapesWorld config when it has one.
        batch_size: images / texts per forward.
        num_workers: image decoding workers.
        every_n_epochs: evaluate every n validation epochs.
        scorer: ``cosine`` (CLIP family) or a generative model's scorer (``vqascore``, ``mc_letters``, ``mc_full``,
            ``generation``: :mod:`callbacks.suite.generative`).
    """

    name = "suite"

    def __init__(
        self,
        benchmarks: list[dict[str, Any]] | None = None,
        batch_size: int = 128,
        num_workers: int = 2,
        every_n_epochs: int = 1,
        scorer: str = "cosine",
    ) -> None:
        super().__init__(every_n_epochs)
        self.scorer = scorer
        self.specs = benchmarks or [{"kind": "shapesworld"}]
        self.batch_size = batch_size
        self.num_workers = num_workers

    def run(self, trainer: Trainer, model: LightningModule, stage: str) -> dict[str, Any]:
        transform = model.data_transforms()["eval_transform"]
        if trainer.is_global_zero:  # generated benchmarks are written once, then read everywhere
            load_benchmarks(self.specs, trainer.datamodule, transform)
        trainer.strategy.barrier()
        benchmarks = load_benchmarks(self.specs, trainer.datamodule, transform)
        if self.max_batches(trainer):  # a smoke test: a few items of every benchmark
            benchmarks = [_head(b, self.max_batches(trainer) * 8) for b in benchmarks]
        results = evaluate_suite(
            model, benchmarks, self.scorer, batch_size=self.batch_size, num_workers=self.num_workers, trainer=trainer
        )
        metrics = {f"{name}/{k}": v for name, figures in results.items() for k, v in figures.items() if k != "skipped"}
        return {
            "metrics": {k: v for k, v in metrics.items() if not k.endswith("/items")},
            "benchmarks": results,
            "sources": {b.name: b.source for b in benchmarks},
            "model": describe_model(model, str(trainer.precision)),
            "checkpoint": trainer.ckpt_path,
            "table": to_markdown(results),
        }

    def summary(self, result: dict[str, Any]) -> str:
        return "\n" + result["table"]
