"""LoRA (Hu et al., 2022): W ← W + (α/r)·B·A on chosen weight matrices; which weights is the backbone's answer.

Two paths, one per kind of backbone:

* **open_clip towers (the CLIP family): this module's parametrization.** Each adapter is a
  ``torch.nn.utils.parametrize`` parametrization of a weight, so it acts wherever the weight is read.
  That matters for ``nn.MultiheadAttention``, which reads ``in_proj_weight`` and ``out_proj.weight``
  directly instead of calling a Linear's ``forward``. peft (0.21) handles that module by merging the
  adapters into the frozen weights before each forward and subtracting them after, which changes the
  frozen weights by rounding at every step, and its ``target_parameters`` path never reaches ``out_proj``
  (its adapter gets no gradient). We measured both and built on parametrize. The backbone names the
  targets: :meth:`zoo.backbones.OpenCLIPBackbone.lora_targets` gives (module, weight name) pairs of the
  attention (q/k/v ``in_proj_weight``, ``out_proj.weight``) and MLP (``c_fc``, ``c_proj``) of every block,
  searched only below the requested tower roots (``model.visual``; ``model.transformer`` or ``model.text``),
  so a text-tower adapter never lands in the image tower (a bare suffix such as ``resblocks.0.attn``
  matches both).
* **Hugging Face LVLMs (LLaVA, VladVA): peft's ``LoraConfig`` on ``nn.Linear`` layers.** Their
  attention and MLP are plain ``nn.Linear`` modules called through ``forward``, which is exactly the case
  peft is built and tested for, and a peft adapter saves and loads with ``save_pretrained`` in the format
  transformers and the LLaVA tools read. There the backbone adapter answers with ``target_modules``
  (e.g. the language model's ``q_proj``/``k_proj``/``v_proj``/``o_proj``/MLP projections, never the
  vision tower's) instead of (module, weight) pairs.

A is Kaiming-uniform and B zero, peft's default, so the model is exactly unchanged at step 0. The
price: ∂L/∂A = (α/r)·Bᵀ·∂L/∂W' is exactly zero at step 0, so the A matrices start moving at the second
optimiser step, after B. FSC-CLIP's official LoRA initialises B non-zero instead, so its model
differs from the pre-trained one before training.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize


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


def add_lora(model: nn.Module, targets: Iterable[tuple[nn.Module, str]], rank: int, alpha: float) -> nn.Module:
    """Freeze ``model`` and parametrize each (module, weight name) of ``targets`` (the backbone's
    answer) with a LoRA adapter of rank ``rank`` and scaling ``alpha / rank``, in place."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    targets = list(targets)
    if not targets:
        raise ValueError("LoRA needs at least one target weight")
    model.requires_grad_(False)
    for module, weight in targets:
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


def _kind(module: nn.Module) -> str:
    """A module's type for the parameter table (``Linear`` for every Linear subclass, parametrized or not)."""
    return "Linear" if isinstance(module, nn.Linear) else type(module).__name__.removeprefix("Parametrized")


def parameter_table(model: nn.Module, tower_of: Callable[[str], str]) -> str:
    """Trainable / total parameters per tower (``tower_of(parameter name)``, the backbone's answer) and
    module type (LoRA adapters counted apart)."""
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
