"""Trainable-only checkpoints: a run that trains part of a pre-trained model (LoRA, locked towers, new
blocks, a LLaVA projector) saves what it trains plus a checksummed reference to its frozen base.

Used by :class:`zoo.ZooModule`; a method says where its base comes from in
:meth:`~zoo.ZooModule.frozen_base_reference` (hyper-parameters by dotted name, e.g.
``{"backbone.pretrained": "openai"}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def checksum(tensors: Mapping[str, torch.Tensor]) -> float:
    """A position-weighted sum of every value, enough to tell two sets of weights apart."""
    total = 0.0
    for i, name in enumerate(sorted(tensors)):
        total += (i + 1) * float(tensors[name].detach().double().abs().sum())
    return total


def file_or_name(value: str | None) -> str | None:
    """An existing file as its absolute path (a checkpoint loads from any directory); names and ids as given."""
    return str(Path(value).resolve()) if value is not None and Path(value).is_file() else value


def set_hparam(hparams: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``hparams["a"]["b"] = value`` for ``dotted = "a.b"`` (nested dicts or dataclass-like objects)."""
    *parents, leaf = dotted.split(".")
    node: Any = hparams
    for key in parents:
        if isinstance(node, dict):
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        else:
            node = getattr(node, key)
    if isinstance(node, dict):
        node[leaf] = value
    else:
        setattr(node, leaf, value)


def trainable_only(
    checkpoint: dict[str, Any], frozen: Mapping[str, torch.Tensor], reference: Mapping[str, Any]
) -> None:
    """Strip the frozen tensors from ``checkpoint["state_dict"]`` when the model has a pre-trained base
    (a ``reference`` value that is not None) and frozen weights, recording ``frozen_base = {"reference",
    "checksum"}``; otherwise every tensor stays and the reference hyper-parameters are saved as None (the
    weights are all here: loading must not fetch the base again)."""
    hparams = checkpoint.get("hyper_parameters", {})
    has_base = any(value is not None for value in reference.values())
    for key, value in reference.items():
        set_hparam(hparams, key, value if has_base and frozen else None)
    if not (has_base and frozen):
        return
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
    checkpoint["frozen_base"] = {"reference": dict(reference), "checksum": checksum(frozen)}


def complete_trainable_only(checkpoint: dict[str, Any], frozen: Mapping[str, torch.Tensor]) -> None:
    """Fill a trainable-only checkpoint's state dict with the frozen base the model was just rebuilt
    from; refuse a base whose checksum differs from the one trained on."""
    base = checkpoint.get("frozen_base")
    if base is None:
        return
    if not math.isclose(checksum(frozen), base["checksum"], rel_tol=1e-9):
        raise RuntimeError(
            f"the frozen base rebuilt from {base.get('reference')} is not the one this checkpoint was trained "
            "on (its weights changed): load the checkpoint with the original base"
        )
    checkpoint["state_dict"] = {**{k: v.detach() for k, v in frozen.items()}, **checkpoint["state_dict"]}
