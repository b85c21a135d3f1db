"""Loading a trained model for evaluation tools: a zoo checkpoint or an open_clip model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule


def load_model(
    checkpoint: str | None = None,
    module: str = "zoo.CLIP",
    model_name: str | None = None,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
) -> tuple[LightningModule, dict[str, Any]]:
    """A zoo checkpoint (of class ``module``) or an open_clip model (a name with an optional pretrained
    tag or file, or ``local-dir:``) in eval mode, on ``device`` (default: the GPU when there is one),
    and the description that loads it again."""
    import zoo

    if checkpoint:
        model = getattr(zoo, module.removeprefix("zoo.")).load_from_checkpoint(checkpoint, map_location="cpu")
        source = {"checkpoint": str(Path(checkpoint).resolve()), "module": module}
    elif model_name:
        model = zoo.CLIP(backbone={"model_name": model_name, "pretrained": pretrained})
        source = {"model": model_name, "pretrained": pretrained}
    else:
        raise ValueError("give a checkpoint or an open_clip model name")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), source
