"""Pure-torch backbones shared by the zoo's methods."""

from zoo.backbones.llm_text import LLMTextCLIPBackbone, clip_backbone
from zoo.backbones.openclip import LLMTextConfig, OpenCLIPBackbone, OpenCLIPConfig

__all__ = ["LLMTextCLIPBackbone", "LLMTextConfig", "OpenCLIPBackbone", "OpenCLIPConfig", "clip_backbone"]
