"""LoRA (Hu et al., 2022) on an open_clip model: W ← W + (α/r)·B·A on chosen weight matrices.

Adapters go on the attention (``in_proj_weight``, i.e. q/k/v, and ``out_proj.weight``) and the MLP
(``c_fc.weight``, ``c_proj.weight``) of every residual block, placed by *tower root*: the image tower
is ``model.visual``, the text tower ``model.transformer`` (``model.text`` in a ``CustomTextCLIP``), and
adapters are only ever searched for below the requested roots, so a text-tower adapter can never land
in the image tower (a bare suffix such as ``resblocks.0.attn`` matches both).

Each adapter is a ``torch.nn.utils.parametrize`` parametrization of the weight, so it acts wherever
the weight is read. That matters for ``nn.MultiheadAttention``, which reads ``in_proj_weight`` and
``out_proj.weight`` directly instead of calling a Linear's ``forward``. peft (0.21) handles that
module by merging the adapters into the frozen weights before each forward and subtracting them
after, which changes the frozen weights by rounding at every step, and its ``target_parameters`` path
never reaches ``out_proj`` (its adapter gets no gradient). We measured both and built on parametrize.

A is Kaiming-uniform and B zero, peft's default, so the model is exactly unchanged at step 0. The
price: ∂L/∂A = (α/r)·Bᵀ·∂L/∂W' is exactly zero at step 0, so the A matrices start moving at the second
optimiser step, after B. FSC-CLIP's official LoRA initialises B non-zero instead, so its model
differs from the pre-trained one before training.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

ADAPTED_WEIGHTS = (("attn", "in_proj_weight"), ("attn.out_proj", "weight"), ("mlp.c_fc", "weight"), ("mlp.c_proj", "weight"))


class LoRA(nn.Module):
    """The parametrization W ↦ W + (α/r)·B·A with A [r, in] and B [out, r]."""

    def __init__(self, out_features: int, in_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


def tower_roots(model: nn.Module) -> dict[str, nn.Module]:
    """The image and text tower modules of an open_clip CLIP / CustomTextCLIP."""
    return {"image": model.visual, "text": model.text if hasattr(model, "text") else model.transformer}


def _targets(root: nn.Module) -> Iterator[tuple[nn.Module, str]]:
    """(module, weight name) of every adapted weight below a tower root."""
    blocks = getattr(getattr(root, "transformer", root), "resblocks", None)
    if blocks is None:
        raise ValueError(f"LoRA needs transformer towers with resblocks; got {type(root).__name__}")
    for block in blocks:
        for module_path, weight in ADAPTED_WEIGHTS:
            yield block.get_submodule(module_path), weight


def add_lora(
    model: nn.Module, rank: int, alpha: float, towers: tuple[str, ...] | list[str] = ("image", "text")
) -> nn.Module:
    """Add LoRA adapters to the attention and MLP weights of the given towers, in place, and freeze
    everything else (the logit scale included)."""
    roots = tower_roots(model)
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    if not towers or set(towers) - set(roots):
        raise ValueError(f"LoRA towers must be a non-empty subset of {sorted(roots)}, got {list(towers)}")
    model.requires_grad_(False)
    for tower in sorted(set(towers)):
        for module, weight in _targets(roots[tower]):
            out_features, in_features = getattr(module, weight).shape
            parametrize.register_parametrization(module, weight, LoRA(out_features, in_features, rank, alpha))
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(module, LoRA) for module in model.modules())


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights with every adapter merged, W + (α/r)·B·A computed in fp32, under open_clip's own key
    names (no ``parametrizations.*.original``, no adapter tensors)."""
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if ".parametrizations." not in key:
                state[key] = value.detach().float().clone()
        for name, module in model.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            for weight, chain in module.parametrizations.items():
                merged = chain.original.detach().float()
                for adapter in chain:
                    merged = merged + adapter.delta().float()
                state[f"{name}.{weight}" if name else weight] = merged
    return state


def tower_of(name: str) -> str:
    """``image`` / ``text`` / ``temperature`` for an open_clip parameter name."""
    if name.startswith("visual."):
        return "image"
    if name.split(".")[0] in ("logit_scale", "logit_bias"):
        return "temperature"
    return "text"


def _kind(module: nn.Module) -> str:
    """A module's type for the parameter table (``Linear`` for every Linear subclass, parametrized or not)."""
    return "Linear" if isinstance(module, nn.Linear) else type(module).__name__.removeprefix("Parametrized")


def parameter_table(model: nn.Module) -> str:
    """Trainable / total parameters per tower and module type (LoRA adapters counted apart)."""
    owners = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            owners[f"{module_name}.{param_name}" if module_name else param_name] = _kind(module)
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for name, param in model.named_parameters():
        kind = owners[name]
        if kind == "ParametrizationList":  # a parametrized weight: name its layer, not torch's container
            kind = _kind(model.get_submodule(name.split(".parametrizations.")[0]))
        row = counts[(tower_of(name), kind)]
        row[0] += param.numel() if param.requires_grad else 0
        row[1] += param.numel()
    lines = [f"{'tower':<12} {'module':<28} {'trainable':>12} {'total':>12}"]
    for (tower, kind), (trainable, total) in sorted(counts.items()):
        lines.append(f"{tower:<12} {kind:<28} {trainable:>12,} {total:>12,}")
    trainable, total = (sum(row[i] for row in counts.values()) for i in (0, 1))
    lines.append(f"{'all':<12} {'':<28} {trainable:>12,} {total:>12,}  ({100 * trainable / total:.2f}% trainable)")
    return "\n".join(lines)
