"""Shared fixtures: a tiny open_clip architecture built from a config, never downloaded."""

from __future__ import annotations

import copy

import pytest
import torch

TINY_MODEL_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture
def tiny_cfg() -> dict:
    return copy.deepcopy(TINY_MODEL_CFG)


@pytest.fixture
def tiny_clip(tiny_cfg):
    import zoo

    torch.manual_seed(0)
    return zoo.CLIP(model_name="vlzoo-test-tiny", model_cfg=tiny_cfg)


def free_port() -> int:
    """A free TCP port on localhost for a 2-process gloo test."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests skip cleanly on machines without CUDA (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
