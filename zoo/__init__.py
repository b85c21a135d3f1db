"""vlzoo methods: one LightningModule per method over shared backbones and losses."""

from zoo.base import ZooModule
from zoo.clip import CLIP

__all__ = ["CLIP", "ZooModule"]
