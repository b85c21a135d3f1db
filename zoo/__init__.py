"""vlzoo methods: one LightningModule per method over shared backbones and losses.

The LLaVA family (:class:`LLaVA`, :class:`CausalLM`, :class:`VladVA`) imports transformers' LLaVA classes on first use.
"""

from typing import Any

from zoo.base import ZooModule
from zoo.clip import CLIP
from zoo.fsc_clip import FSCCLIP
from zoo.negclip import NegCLIP
from zoo.react import REACT

__all__ = ["CLIP", "CausalLM", "FSCCLIP", "LLaVA", "NegCLIP", "REACT", "VladVA", "ZooModule"]

_LAZY = {"LLaVA": "zoo.llava", "CausalLM": "zoo.causal_lm", "VladVA": "zoo.vladva"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
