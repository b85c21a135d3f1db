"""LightningDataModules and data readers of vlzoo."""

from datamodules.base import Batch, ImageInputs, ZooDataModule
from datamodules.image_caption import ImageCaptionDataModule, ShapesWorldConfig
from datamodules.sources import CorruptSampleError, ManifestDataset, WebDatasetSource

__all__ = [
    "Batch",
    "CorruptSampleError",
    "ImageCaptionDataModule",
    "ImageInputs",
    "ManifestDataset",
    "ShapesWorldConfig",
    "WebDatasetSource",
    "ZooDataModule",
]
