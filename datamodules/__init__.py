"""LightningDataModules and data readers of vlzoo."""

from datamodules.image_caption import ImageCaptionDataModule, ShapesWorldConfig
from datamodules.sources import CorruptSampleError, ManifestDataset, WebDatasetSource

__all__ = ["CorruptSampleError", "ImageCaptionDataModule", "ManifestDataset", "ShapesWorldConfig", "WebDatasetSource"]
