"""Lightning strategies preset for the CLIP family (FSDP wraps each transformer block of both towers)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from open_clip.transformer import ResidualAttentionBlock


class CLIPFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP with the zoo's wrapping: one FSDP unit per open_clip ``ResidualAttentionBlock``
    (image and text towers alike, REACT's gated blocks live inside them), original parameters kept
    (``use_orig_params``) so frozen and trainable tensors (LoRA, locked towers, REACT) can share a unit
    and only trainable ones get optimizer state.

    Args:
        activation_checkpointing: recompute each block's activations in the backward pass.
        **kwargs: everything :class:`lightning.pytorch.strategies.FSDPStrategy` takes.
    """

    def __init__(self, activation_checkpointing: bool = False, **kwargs: Any) -> None:
        blocks = {ResidualAttentionBlock}
        kwargs.setdefault("auto_wrap_policy", blocks)
        kwargs.setdefault("use_orig_params", True)
        if activation_checkpointing:
            kwargs.setdefault("activation_checkpointing_policy", blocks)
        super().__init__(**kwargs)
