"""Which parts of a LLaVA train, at which learning rate, and with which adapters (LLaVA-1.5's stages).

The parts of a transformers ``LlavaForConditionalGeneration``: ``vision_tower``, ``projector``
(``multi_modal_projector``; on a ``LlavaNextForConditionalGeneration`` also ``image_newline``, see
:func:`newline_parameter`) and ``language_model`` (the decoder and ``lm_head``).
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypedDict

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import LlavaForConditionalGeneration

Stage = Literal["pretrain", "finetune"]
PARTS = ("vision_tower", "projector", "language_model")
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRAConfig(TypedDict, total=False):
    """peft LoRA on the language model's linear layers (LLaVA-1.5: r 128, α 256, dropout 0.05, no bias)."""

    r: int
    alpha: int
    dropout: float
    targets: list[str]


LORA_DEFAULTS: LoRAConfig = {"r": 128, "alpha": 256, "dropout": 0.05, "targets": list(LLAMA_LINEARS)}


def feature_tower_modules(llava: LlavaForConditionalGeneration) -> list[nn.Module]:
    """The vision tower's modules that feed the features LLaVA uses: the embeddings, the pre-norm and the encoder
    layers up to ``vision_feature_layer``. The layers after it and the post-layernorm run but never get a
    gradient (DDP without ``find_unused_parameters`` would fail on them): an unfrozen tower leaves them frozen."""
    tower = llava.model.vision_tower
    layers = getattr(getattr(tower, "encoder", None), "layers", None)
    if layers is None:
        return [tower]
    selected = llava.config.vision_feature_layer
    selected = [selected] if isinstance(selected, int) else list(selected)
    used = max(index % (len(layers) + 1) for index in selected)  # hidden_states[i]: the output of layer i - 1
    skipped = {"encoder", "post_layernorm", "head"}  # head: SigLIP's pooling head
    return [module for name, module in tower.named_children() if name not in skipped] + list(layers[:used])


def part_modules(llava: LlavaForConditionalGeneration, part: str) -> list[nn.Module]:
    """The trainable modules of one part of ``llava`` (the vision tower's: :func:`feature_tower_modules`)."""
    inner = llava.model
    visual = getattr(inner, "visual", None)  # Qwen2-VL: the vision blocks, then their merger as the projector
    qwen = visual is not None
    modules = {
        "vision_tower": lambda: [visual.patch_embed, visual.blocks] if qwen else feature_tower_modules(llava),
        "projector": lambda: [visual.merger if qwen else inner.multi_modal_projector],
        "language_model": lambda: [inner.language_model, llava.lm_head],
    }
    if part not in modules:
        raise ValueError(f"unknown LLaVA part {part!r}: expected one of {PARTS}")
    return modules[part]()


def newline_parameter(llava: LlavaForConditionalGeneration) -> nn.Parameter | None:
    """LLaVA-NeXT's learned ``image_newline`` (None on a LLaVA): part of the ``projector`` part, trained with it
    when the model's merge uses it (``spatial_unpad`` with the newline; LLaVA-1.5-HD leaves it frozen, unused)."""
    return getattr(llava.model, "image_newline", None)


def stage_parts(stage: Stage) -> dict[str, bool | float]:
    """What a stage trains (True: at the main lr): ``pretrain`` the projector; ``finetune`` the projector and the
    language model (with LoRA: its adapters); the vision tower never (LLaVA-1.5)."""
    if stage not in ("pretrain", "finetune"):
        raise ValueError(f"stage must be 'pretrain' or 'finetune', got {stage!r}")
    return {"vision_tower": False, "projector": True, "language_model": stage == "finetune"}


def lora_target_regex(targets: list[str]) -> str:
    """A peft ``target_modules`` regex restricted to the language model: bare names (``q_proj``) would also
    wrap the CLIP vision tower's attention, and ``all-linear`` the projector."""
    return r".*\.language_model\..*\.(" + "|".join(re.escape(t) for t in targets) + r")$"


def apply_lora(llava: LlavaForConditionalGeneration, config: LoRAConfig) -> Any:
    """``llava`` wrapped by peft with LoRA adapters on the language model's linears (``lm_head`` excluded);
    every base weight frozen."""
    from peft import LoraConfig, get_peft_model

    settings = {**LORA_DEFAULTS, **config}
    unknown = set(settings) - set(LORA_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown lora settings {sorted(unknown)}: expected {sorted(LORA_DEFAULTS)}")
    peft_config = LoraConfig(
        r=settings["r"],
        lora_alpha=settings["alpha"],
        lora_dropout=settings["dropout"],
        target_modules=lora_target_regex(settings["targets"]),
        bias="none",
    )
    return get_peft_model(llava, peft_config)


def canonical_name(name: str) -> str:
    """A parameter name without peft's wrapping (``base_model.model.`` and ``.base_layer``), so checkpoints
    with and without LoRA name the same tensors alike."""
    return name.replace("base_model.model.", "").replace(".base_layer.", ".")


def load_matching_tensors(module: nn.Module, path: str) -> dict[str, list[str]]:
    """Initialise ``module`` from ``path`` (a zoo checkpoint, e.g. stage 1's): every tensor whose name (without peft's
    wrapping) and shape match is loaded; says what was loaded and what was not."""
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    saved = {canonical_name(k): v for k, v in state.items()}
    loaded, skipped = [], []
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            source = saved.get(canonical_name(name))
            if source is not None and source.shape == tensor.shape:
                tensor.copy_(source)
                loaded.append(name)
            elif source is not None:
                skipped.append(f"{name} {tuple(source.shape)} != {tuple(tensor.shape)}")
    if not loaded:
        raise ValueError(f"init_from {path}: no tensor of the checkpoint matches this model")
    groups = sorted({canonical_name(n).split(".")[2] for n in loaded})
    rank_zero_info(
        f"init_from {path}: loaded {len(loaded)} of its {len(state)} tensors ({', '.join(groups)})"
        + (f"; shapes differ: {skipped}" if skipped else "")
    )
    return {"loaded": loaded, "skipped": skipped}


def repeated_block_classes(model: nn.Module) -> set[type[nn.Module]]:
    """The classes of every repeated block: the elements of each ``ModuleList`` named ``layers`` or ``blocks`` (the
    LM's decoder layers, the vision tower's encoder layers; Qwen2-VL's vision blocks). FSDP makes each one unit: the
    vision tower is sharded by its layers, never wrapped whole (transformers' hidden-state capture breaks on the
    wrapper's renamed class)."""
    classes = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "blocks"):
            classes |= {type(block) for block in module}
    return classes
