"""vlzoo methods: one LightningModule per method over shared backbones and losses."""

from zoo.base import ZooModule
from zoo.clip import CLIP
from zoo.negclip import NegCLIP

__all__ = ["CLIP", "NegCLIP", "ZooModule"]
