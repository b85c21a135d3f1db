"""REACT (Liu et al., CVPR 2023): customise CLIP on retrieved image-text pairs with locked-text
gated-image tuning, trained with UniCL's bidirectional contrastive loss."""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from zoo.backbones import OpenCLIPConfig
from zoo.checkpoints import file_or_name
from zoo.clip import CLIP
from zoo.losses import unicl_loss

Tuning = Literal["gated_image", "locked_text", "locked_image", "full"]
GATED_BLOCK = "gated_attn_block"  # the child name the released REACT checkpoints use
# (lock_image, lock_text) of each tuning row; gated_image then trains only its new blocks
LOCKS = {
    "gated_image": (True, True), "locked_text": (False, True), "locked_image": (True, False), "full": (False, False)
}


class GatedAttentionBlock(nn.Module):
    """A new residual block with tanh gates, run before a frozen pre-trained block:
    x ← x + tanh(α_attn)·Attn(LN1(x)); x ← x + tanh(α_dense)·MLP(LN2(x)). With α = 0 it is the identity."""

    def __init__(self, reference: nn.Module, mlp_ratio: float = 4.0) -> None:
        """Width, heads, norm and activation follow ``reference`` (an open_clip ``ResidualAttentionBlock``)."""
        super().__init__()
        width, heads = reference.attn.embed_dim, reference.attn.num_heads
        hidden = int(width * mlp_ratio)
        self.ln_1 = type(reference.ln_1)(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=reference.attn.batch_first)
        self.ln_2 = type(reference.ln_2)(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, hidden),
                gelu=copy.deepcopy(reference.mlp.gelu),  # QuickGELU for OpenAI weights
                c_proj=nn.Linear(hidden, width),
            )
        )
        # shape [1], not 0-d: FSDP and DeepSpeed refuse scalar parameters
        self.alpha_attn = nn.Parameter(torch.zeros(1))
        self.alpha_dense = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.alpha_attn.tanh() * self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.alpha_dense.tanh() * self.mlp(self.ln_2(x))


def _run_gated_block_first(block: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of a pre-trained block: its input first goes through its gated block.
    open_clip calls blocks as ``r(x, attn_mask=m)`` or, checkpointed, ``r(x, None, None, m)``."""
    attn_mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
    return (getattr(block, GATED_BLOCK)(args[0], attn_mask), *args[1:]), kwargs


def add_gated_blocks(visual: nn.Module, layers: int) -> list[GatedAttentionBlock]:
    """Give each of the last ``layers`` blocks of an open_clip image tower a ``gated_attn_block`` child
    run before it (a forward pre-hook), so parameter names match the released REACT checkpoints:
    ``visual.transformer.resblocks.{i}.gated_attn_block.*``."""
    blocks = visual.transformer.resblocks
    if not 0 < layers <= len(blocks):
        raise ValueError(f"gated_layers must be in 1..{len(blocks)} for this image tower, got {layers}")
    added = []
    for block in list(blocks)[len(blocks) - layers :]:
        gated = GatedAttentionBlock(block)
        block.add_module(GATED_BLOCK, gated)
        block.register_forward_pre_hook(_run_gated_block_first, with_kwargs=True)
        added.append(gated)
    return added


def react_state_dict(checkpoint: str | Path | dict[str, Any]) -> dict[str, torch.Tensor]:
    """A released REACT checkpoint (open_clip layout) as this zoo's open_clip state dict: unwraps
    ``state_dict`` / ``module.`` nesting and gives the 0-d gates and logit scale shape [1]."""
    state = torch.load(checkpoint, map_location="cpu") if not isinstance(checkpoint, dict) else checkpoint
    state = state.get("state_dict", state)
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.endswith(("alpha_attn", "alpha_dense", "logit_scale")) and value.ndim == 0:
            value = value.reshape(1)
        out[key] = value
    return out


class REACT(CLIP):
    """REACT customisation: UniCL loss on retrieved pairs, with the tuning rows of the paper.

    ``tuning``: ``gated_image`` (default) adds gated blocks to the last ``gated_layers`` image blocks and
    trains only them and the logit scale; ``locked_text`` trains the whole image tower; ``locked_image``
    the text tower; ``full`` everything. The logit scale trains in every row and is clamped at 100.

    Args:
        tuning: which parameters train (the rows of the paper's Table 2.6).
        gated_layers: k, the number of last image blocks that get a gated block (6 for ViT-B/32, B/16, L/14).
        unicl_threshold: γ; texts with cosine ≥ γ to caption i are positives of image i (1.0: CLIP loss).
        react_checkpoint: a released REACT checkpoint to load after building (gated-image ones included).
        backbone: the open_clip backbone's arguments (see :class:`zoo.CLIP`); ``lock_image`` and
            ``lock_text`` are set by ``tuning`` (given explicitly, they must agree with it).
        **kwargs: everything else :class:`zoo.CLIP` takes.
    """

    def __init__(
        self,
        tuning: Tuning = "gated_image",
        gated_layers: int = 6,
        unicl_threshold: float = 0.9,
        react_checkpoint: str | None = None,
        backbone: OpenCLIPConfig | None = None,
        **kwargs: Any,
    ) -> None:
        if tuning not in LOCKS:
            raise ValueError(f"tuning must be one of {sorted(LOCKS)}, got {tuning!r}")
        locks = dict(zip(("lock_image", "lock_text"), LOCKS[tuning]))
        for name, given in (backbone or {}).items():
            if name in locks and given != locks[name]:
                raise ValueError(f"tuning={tuning!r} sets {name}={locks[name]}; drop backbone.{name} from the config")
        super().__init__(backbone={**(backbone or {}), **locks}, **kwargs)
        self.save_hyperparameters()
        if tuning == "gated_image":
            add_gated_blocks(self.backbone.model.visual, gated_layers)  # new blocks: trainable
        if react_checkpoint is not None:
            self.backbone.load_open_clip_state_dict(react_state_dict(react_checkpoint))
        self.backbone.model.logit_scale.requires_grad_(True)

    def frozen_base_reference(self) -> dict[str, Any]:
        """The pre-trained weights plus the released REACT checkpoint loaded over them."""
        reference = super().frozen_base_reference()
        return {**reference, "react_checkpoint": file_or_name(self.hparams.react_checkpoint)}

    def loss_terms(
        self, features: dict[str, torch.Tensor | None], detach_parameters: bool = False
    ) -> dict[str, torch.Tensor]:
        scale = self.logit_scale(detach_parameters)
        return unicl_loss(features["image"], features["text"], scale, self.hparams.unicl_threshold)
