"""vlzoo methods: one LightningModule per method over shared backbones and losses."""

from zoo.base import ZooModule
from zoo.clip import CLIP
from zoo.fsc_clip import FSCCLIP
from zoo.negclip import NegCLIP
from zoo.react import REACT

__all__ = ["CLIP", "FSCCLIP", "NegCLIP", "REACT", "ZooModule"]
