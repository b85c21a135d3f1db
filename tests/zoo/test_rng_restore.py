"""Exact resume: a checkpoint's RNG states (Python, NumPy, torch) come back when a fit resumes, and
only then (loading weights for inference leaves the caller's random streams alone)."""

import io
import random

import numpy as np
import torch
from lightning.pytorch import Trainer

import zoo


def _checkpoint(model) -> dict:
    """What Lightning would write for ``model`` now, through a ``weights_only`` save and load."""
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _draws() -> tuple:
    return torch.rand(4).tolist(), random.random(), np.random.rand(4).tolist()


def _trainer() -> Trainer:
    return Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def test_resuming_a_fit_restores_the_rng_states(tiny_cfg):
    model = zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg})
    torch.manual_seed(11), random.seed(12), np.random.seed(13)
    checkpoint = _checkpoint(model)
    after_save = _draws()  # what an uninterrupted run draws next
    assert _draws() != after_save  # the streams moved on
    resumed = zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg})
    resumed.trainer = _trainer()  # resuming a fit: the module is attached to a trainer
    resumed.on_load_checkpoint(checkpoint)
    assert _draws() == after_save


def test_loading_weights_leaves_the_rng_states_alone(tiny_cfg):
    model = zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg})
    torch.manual_seed(11), random.seed(12), np.random.seed(13)
    checkpoint = _checkpoint(model)
    after_save = _draws()
    loaded = zoo.CLIP(backbone={"model_name": "t", "model_cfg": tiny_cfg})  # built first: building draws random weights
    torch.manual_seed(21), random.seed(22), np.random.seed(23)
    expected = _draws()
    torch.manual_seed(21), random.seed(22), np.random.seed(23)
    loaded.on_load_checkpoint(checkpoint)  # no trainer: loading weights, not resuming
    got = _draws()
    assert got == expected and got != after_save
