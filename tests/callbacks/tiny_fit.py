"""A two-epoch fit of the tiny CLIP on a 16-scene ShapesWorld with retrieval evaluation, for the callbacks
that report on a run (run summary, progress lines)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback, Trainer

import zoo
from callbacks import RetrievalEvaluation
from datamodules import ImageCaptionDataModule
from datamodules.image_caption import ShapesWorldConfig
from tests.conftest import TINY_MODEL_CFG

BATCH_SIZE = 4
TRAIN_BATCHES = 2  # per epoch


class Recorder(Callback):
    """The validation figures of every validation epoch, copied as the trainer logged them."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.epochs.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})


def tiny_fit(root: Path, callbacks: list[Callback], max_epochs: int = 2) -> tuple[Trainer, zoo.CLIP, object]:
    """Fit under ``root``; returns the trainer, the model and the data module (for a later test run)."""
    torch.manual_seed(0)
    model = zoo.CLIP(backbone={"model_name": "t", "model_cfg": TINY_MODEL_CFG})
    data = ImageCaptionDataModule(
        shapesworld=ShapesWorldConfig(n_train=16, n_val=8, n_test=8, image_size=32),
        batch_size=BATCH_SIZE,
        num_workers=0,
        benchmark_dir=str(root / "benchmarks"),
    )
    data.connect(**model.data_transforms())
    trainer = Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_epochs=max_epochs,
        limit_train_batches=TRAIN_BATCHES,
        enable_model_summary=False,
        callbacks=[RetrievalEvaluation(), *callbacks],
    )
    trainer.fit(model, data)
    return trainer, model, data
