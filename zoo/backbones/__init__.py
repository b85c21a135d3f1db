"""Pure-torch backbones shared by the zoo's methods."""

from zoo.backbones.openclip import OpenCLIPBackbone

__all__ = ["OpenCLIPBackbone"]
