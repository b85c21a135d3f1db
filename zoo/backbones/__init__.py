"""Pure-torch backbones shared by the zoo's methods."""

from zoo.backbones.openclip import OpenCLIPBackbone, OpenCLIPConfig

__all__ = ["OpenCLIPBackbone", "OpenCLIPConfig"]
