"""Lightning strategies preset for the zoo: FSDP wraps the blocks the method names (or the ones you give)."""

from __future__ import annotations

import importlib
from typing import Any

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy


def import_class(path: str) -> type[nn.Module]:
    """``"package.module.Class"`` → the class (a clear error naming the path otherwise)."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"FSDP wrap class {path!r} cannot be imported: {error}") from error


class ZooFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP with the zoo's wrapping: one FSDP unit per block, original parameters kept
    (``use_orig_params``) so frozen and trainable tensors (LoRA, locked towers, REACT's gated blocks, a
    LLaVA projector) can share a unit and only trainable ones get optimizer state.

    The blocks are ``wrap_classes`` when given, else the method's answer
    (:meth:`zoo.ZooModule.fsdp_wrap_classes`: open_clip's ``ResidualAttentionBlock`` for the CLIP family,
    image and text towers alike).

    Args:
        wrap_classes: import paths of the module classes that become one FSDP unit each
            (e.g. ``[transformers.models.llama.modeling_llama.LlamaDecoderLayer]``).
        activation_checkpointing: recompute each block's activations in the backward pass.
        **kwargs: everything :class:`lightning.pytorch.strategies.FSDPStrategy` takes (an explicit
            ``auto_wrap_policy`` replaces the zoo's).
    """

    def __init__(
        self, wrap_classes: list[str] | None = None, activation_checkpointing: bool = False, **kwargs: Any
    ) -> None:
        kwargs.setdefault("use_orig_params", True)
        self.wrap_classes = {import_class(path) for path in wrap_classes} if wrap_classes else None
        self.activation_checkpointing = activation_checkpointing
        super().__init__(**kwargs)

    def blocks(self, model: nn.Module) -> set[type[nn.Module]]:
        """The classes wrapped as units: ``wrap_classes``, else the method's ``fsdp_wrap_classes()``."""
        if self.wrap_classes is not None:
            return self.wrap_classes
        method = self.lightning_module if self.lightning_module is not None else model
        return set(method.fsdp_wrap_classes()) if hasattr(method, "fsdp_wrap_classes") else set()

    def _setup_model(self, model: nn.Module) -> nn.Module:
        blocks = self.blocks(model)
        if blocks and "auto_wrap_policy" not in self.kwargs:
            self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(blocks)
        if blocks and self.activation_checkpointing and not self._activation_checkpointing_kwargs:
            self._activation_checkpointing_kwargs = {"auto_wrap_policy": ModuleWrapPolicy(blocks)}
        return super()._setup_model(model)
