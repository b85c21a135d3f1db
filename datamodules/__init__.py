"""LightningDataModules and data readers of vlzoo."""

from typing import Any

from datamodules.base import Batch, ImageInputs, ZooDataModule
from datamodules.image_caption import ImageCaptionDataModule, ShapesWorldConfig
from datamodules.sources import CorruptSampleError, ManifestDataset, WebDatasetSource

__all__ = [
    "Batch",
    "CorruptSampleError",
    "ImageCaptionDataModule",
    "ImageInputs",
    "InstructionDataModule",
    "ManifestDataset",
    "ShapesWorldConfig",
    "ShortLongCaptionDataModule",
    "TextDataModule",
    "WebDatasetSource",
    "ZooDataModule",
]

_LAZY = {
    "InstructionDataModule": "datamodules.instruction",
    "ShortLongCaptionDataModule": "datamodules.caption_pairs",
    "TextDataModule": "datamodules.text",
}


def __getattr__(name: str) -> Any:  # the LLaVA family's data modules import transformers-side code on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
