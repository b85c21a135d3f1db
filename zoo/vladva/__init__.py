"""VladVA: an LVLM fine-tuned into a two-tower embedding model (summary tokens, soft prompts, LoRA)."""

from zoo.vladva.module import VladVA

__all__ = ["VladVA"]
