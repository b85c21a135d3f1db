"""open_clip two-tower backbone with the zoo's conventions settled once.

* ``logit_scale`` is a shape-``[1]`` Parameter (open_clip's ``nonscalar_logit_scale``): FSDP and
  DeepSpeed refuse 0-d parameters. Exports reshape it back to open_clip's 0-d layout.
* The temperature is clamped at 100 in place after each optimiser step, as open_clip's trainer does.
* Dense features (per patch / per token, projected into the joint space) come from open_clip's
  public ``forward_intermediates`` in the same forward pass as the pooled embeddings.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import open_clip
import torch
from lightning.pytorch.utilities import rank_zero_info
from open_clip.model import get_model_preprocess_cfg, set_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from zoo.backbones.lora import add_lora, has_lora, merged_state_dict, parameter_table

MAX_LOGIT_SCALE = 100.0
# the zoo's own architectures (the configs' tiny ViT), registered with open_clip when zoo is imported, so
# an export loads by name too: open_clip.create_model("vlzoo-tiny-vit", pretrained=".../open_clip_pytorch_model.bin")
MODEL_CONFIGS = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIGS)
# open_clip's no-weight-decay rule (its training script: <2-d, "bn", "ln", "bias", "logit_scale") plus
# norms and embeddings (positional, class, token embeddings) and SigLIP's logit bias
NO_DECAY_MARKERS = ("bias", "ln", "norm", "bn", "embedding", "logit_scale", "logit_bias")
# LoRA targets of every open_clip residual block: (submodule, weight) — attention q/k/v and output, MLP
LORA_WEIGHTS = (
    ("attn", "in_proj_weight"), ("attn.out_proj", "weight"), ("mlp.c_fc", "weight"), ("mlp.c_proj", "weight")
)
PROBE_CAPTIONS = ["a red circle left of a blue square", "two green triangles", "a photo of a dog on a sofa"]


def _tokenizer_from_cfg(model_cfg: dict[str, Any]) -> Callable:
    text_cfg = model_cfg.get("text_cfg", {})
    context_length = text_cfg.get("context_length", 77)
    if "hf_tokenizer_name" in text_cfg:
        return open_clip.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length)
    return open_clip.SimpleTokenizer(context_length=context_length)


def _model_from_cfg(model_cfg: dict[str, Any], pretrained: str | None) -> nn.Module:
    cfg = copy.deepcopy(model_cfg)
    if "vision_cfg" not in cfg or "text_cfg" not in cfg or "embed_dim" not in cfg:
        raise ValueError(
            "model_cfg must be an open_clip model config with 'embed_dim', 'vision_cfg' and "
            f"'text_cfg' (see open_clip/model_configs/*.json); got keys {sorted(cfg)}"
        )
    model_class = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
    model = model_class(**cfg, nonscalar_logit_scale=True)
    if pretrained is not None:
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"pretrained checkpoint {pretrained!r} for a custom model_cfg is not a file")
        open_clip.load_checkpoint(model, pretrained)
    preprocess = merge_preprocess_dict(PreprocessCfg(), {"size": model.visual.image_size})
    set_model_preprocess_cfg(model, preprocess)
    return model


def tower_roots(model: nn.Module) -> dict[str, nn.Module]:
    """The image and text tower modules of an open_clip CLIP / CustomTextCLIP."""
    return {"image": model.visual, "text": model.text if hasattr(model, "text") else model.transformer}


def tower_of(name: str) -> str:
    """``image`` / ``text`` / ``temperature`` for an open_clip parameter name."""
    if name.startswith("visual."):
        return "image"
    if name.split(".")[0] in ("logit_scale", "logit_bias"):
        return "temperature"
    return "text"


def lora_targets(model: nn.Module, towers: tuple[str, ...] | list[str]) -> list[tuple[nn.Module, str]]:
    """(module, weight name) of every LoRA-adapted weight of the given towers (see :mod:`zoo.backbones.lora`)."""
    roots = tower_roots(model)
    if not towers or set(towers) - set(roots):
        raise ValueError(f"LoRA towers must be a non-empty subset of {sorted(roots)}, got {list(towers)}")
    targets = []
    for tower in sorted(set(towers)):
        root = roots[tower]
        blocks = getattr(getattr(root, "transformer", root), "resblocks", None)
        if blocks is None:
            raise ValueError(f"LoRA needs transformer towers with resblocks; got {type(root).__name__}")
        targets += [(block.get_submodule(path), weight) for block in blocks for path, weight in LORA_WEIGHTS]
    return targets


def image_size(model: open_clip.CLIP) -> tuple[int, int]:
    """An open_clip model's input ``(height, width)`` (its config may give one int)."""
    size = model.visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


class LLMTextConfig(TypedDict, total=False):
    """The arguments of :class:`zoo.backbones.llm_text.LLMTextTower` (``backbone.text_tower`` in YAML): a frozen
    causal LM as the text tower (``language_model``: a transformers folder or hub id, or ``vlzoo-tiny-llama``)."""

    language_model: str
    connector_hidden: int | None
    max_length: int


class OpenCLIPConfig(TypedDict, total=False):
    """The arguments of :class:`OpenCLIPBackbone`, passed through a method once (``backbone:`` in YAML,
    ``--model.init_args.backbone.pretrained openai`` on the command line); keys left out take the
    backbone's defaults, unknown keys are refused by name."""

    model_name: str
    pretrained: str | None
    model_cfg: dict[str, Any] | None
    lock_image: bool
    lock_text: bool
    grad_checkpointing: bool
    cache_dir: str | None
    lora_rank: int
    lora_alpha: float
    lora_towers: list[str]
    train_augmentation: dict[str, Any] | None
    text_tower: LLMTextConfig | None  # a frozen causal LM replaces the text tower (zoo.backbones.llm_text)


class OpenCLIPBackbone(nn.Module):
    """An open_clip CLIP model plus its tokenizer and image transforms.

    Args:
        model_name: open_clip model name (``"ViT-B-32"``), ``"local-dir:/path"`` or ``"hf-hub:org/repo"``.
            With ``model_cfg`` it is only a label (used as the exported config's name).
        pretrained: open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``) or a checkpoint file.
        model_cfg: a custom open_clip architecture dict (``embed_dim``, ``vision_cfg``, ``text_cfg``,
            optional ``quick_gelu``), so tiny models are built offline.
        lock_image: freeze the image tower (LiT).
        lock_text: freeze the text tower.
        grad_checkpointing: activation checkpointing in both towers.
        cache_dir: where open_clip caches downloaded weights.
        lora_rank: > 0 adds LoRA adapters (see :mod:`zoo.backbones.lora`) and freezes everything
            else, the logit scale included.
        lora_alpha: LoRA scaling numerator (the update is ``lora_alpha / lora_rank · B·A``).
        lora_towers: which towers get adapters (``image``, ``text``).
        train_augmentation: arguments of timm's ``create_transform`` for training images, e.g.
            ``{auto_augment: rand-m9-mstd0.5-inc1, re_prob: 0.25}`` (RandAugment, random erasing);
            default: open_clip's random resized crop.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = None,
        model_cfg: dict[str, Any] | None = None,
        lock_image: bool = False,
        lock_text: bool = False,
        grad_checkpointing: bool = False,
        cache_dir: str | None = None,
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
        lora_towers: tuple[str, ...] = ("image", "text"),
        train_augmentation: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.train_augmentation = train_augmentation
        self.model_name = model_name
        if model_cfg is not None:
            self.model = _model_from_cfg(model_cfg, pretrained)
            self.model_cfg = copy.deepcopy(model_cfg)
            self.tokenizer = _tokenizer_from_cfg(model_cfg)
        else:
            self.model = open_clip.create_model(
                model_name, pretrained=pretrained, nonscalar_logit_scale=True, cache_dir=cache_dir
            )
            self.model_cfg = open_clip.get_model_config(model_name)
            self.tokenizer = open_clip.get_tokenizer(model_name)
        if lock_image:
            self.model.lock_image_tower()
        if lock_text:
            self.model.lock_text_tower()
        if lora_rank:
            add_lora(self.model, lora_targets(self.model, tuple(lora_towers)), lora_rank, lora_alpha)
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)

    def compile_towers(self, **options: Any) -> None:
        """``torch.compile`` both towers in place (``nn.Module.compile``: parameter names, checkpoints
        and exports are unchanged); ``options`` are ``torch.compile``'s (``mode``, ``backend``, ...)."""
        for tower in tower_roots(self.model).values():
            tower.compile(**options)

    def no_weight_decay(self) -> set[str]:
        """Parameters (names below this backbone) exempt from weight decay: open_clip's rule plus
        norms and embeddings (:data:`NO_DECAY_MARKERS`)."""
        return {
            name
            for name, param in self.named_parameters()
            if param.ndim < 2 or any(marker in name for marker in NO_DECAY_MARKERS)
        }

    @staticmethod
    def block_classes() -> set[type[nn.Module]]:
        """The residual block class of both towers: one FSDP unit each (REACT's gated blocks live inside)."""
        return {ResidualAttentionBlock}

    # ----------------------------------------------------------------------------------- data
    def image_transform(self, train: bool) -> Callable:
        """open_clip's train (random resized crop) or eval (resize + centre crop) transform; with
        ``train_augmentation``, timm's training transform with those arguments and the model's
        size, mean, std and interpolation."""
        cfg = PreprocessCfg(**get_model_preprocess_cfg(self.model))
        if not (train and self.train_augmentation):
            return image_transform_v2(cfg, is_train=train)
        from timm.data import create_transform

        size = (cfg.size, cfg.size) if isinstance(cfg.size, int) else tuple(cfg.size)
        settings = {"hflip": 0.0, "interpolation": cfg.interpolation, **self.train_augmentation}
        return create_transform((3, *size), is_training=True, mean=cfg.mean, std=cfg.std, **settings)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids ``[N, context_length]`` on the backbone's device."""
        return self.tokenizer(texts).to(self.model.logit_scale.device)

    def token_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` True for real tokens other than start-of-text (padding and SOT dropped, EOT kept)."""
        sot = getattr(self.tokenizer, "sot_token_id", None)
        pad = getattr(self.tokenizer, "pad_token_id", 0) or 0
        mask = tokens != pad
        if sot is not None:
            mask &= tokens != sot
        return mask

    @property
    def image_size(self) -> tuple[int, int]:
        """The image tower's input ``(height, width)``."""
        return image_size(self.model)

    # -------------------------------------------------------------------------------- encoders
    @property
    def logit_scale(self) -> torch.Tensor:
        """The temperature ``s = exp(t)``, shape ``[1]``."""
        return self.model.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp ``t`` to [0, ln 100] in place (call after each optimiser step)."""
        self.model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Pooled image embeddings ``[B, D]``."""
        return self.model.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Pooled text embeddings ``[N, D]`` from token ids."""
        return self.model.encode_text(tokens, normalize=normalize)

    def encode_dense(
        self, images: torch.Tensor | None = None, tokens: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Pooled and per-position embeddings in one forward.

        Returns (for the inputs given): ``image_features`` [B, D] and ``text_features`` [N, D]
        (L2-normalised), ``patch_features`` [B, P, D] (last layer after ``ln_post``, CLS dropped,
        projected by the visual projection) and ``token_features`` [N, L, D] (every position after
        ``ln_final``, projected by the text projection; not normalised).
        """
        out = self.model.forward_intermediates(
            image=images,
            text=tokens,
            image_indices=1,
            text_indices=1,
            normalize=True,
            normalize_intermediates=True,
            image_output_fmt="NLC",
        )
        dense = {}
        if images is not None:
            dense["image_features"] = out["image_features"]
            dense["patch_features"] = _project(out["image_intermediates"][-1], self.model.visual.proj)
        if tokens is not None:
            text_tower = getattr(self.model, "text", self.model)
            dense["text_features"] = out["text_features"]
            dense["token_features"] = _project(out["text_intermediates"][-1], text_tower.text_projection)
        return dense

    # ---------------------------------------------------------------------------------- export
    def parameter_table(self) -> str:
        """Trainable / total parameters per tower and module type."""
        return parameter_table(self.model, tower_of)

    def open_clip_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict in open_clip's own layout (0-d ``logit_scale``; LoRA adapters merged in fp32)."""
        if has_lora(self.model):
            state = merged_state_dict(self.model)
        else:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        for key in ("logit_scale", "logit_bias"):
            if key in state:
                state[key] = state[key].reshape(())
        return state

    def load_open_clip_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load weights in open_clip's own layout (the inverse of :meth:`open_clip_state_dict`). With
        LoRA, they become the frozen base weights and the adapters are left as they are."""
        own = self.model.state_dict()
        mapped = {}
        for key, value in state.items():
            module, _, name = key.rpartition(".")
            base = f"{module}.parametrizations.{name}.original"
            key = base if base in own else key
            mapped[key] = value.reshape(own[key].shape) if key in own else value
        missing, unexpected = self.model.load_state_dict(mapped, strict=False)
        missing = [key for key in missing if "lora_" not in key]
        if missing or unexpected:
            raise RuntimeError(f"open_clip weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def export_open_clip(self, out_dir: str | Path) -> Path:
        """Write ``open_clip_config.json`` + ``open_clip_pytorch_model.bin`` to ``out_dir``.

        Load it back with ``open_clip.create_model("local-dir:" + out_dir)``, or, for a built-in
        architecture, ``open_clip.create_model(name, pretrained=<the .bin file>)``.
        Returns the weights file.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": get_model_preprocess_cfg(self.model)}
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=2, default=list))
        weights = out / "open_clip_pytorch_model.bin"
        torch.save(self.open_clip_state_dict(), weights)
        if has_lora(self.model):
            report = {"lora_merged": True, "max_abs_embedding_diff": self.merge_difference(out)}
            (out / "lora_merge.json").write_text(json.dumps(report, indent=2))
            rank_zero_info(f"LoRA merged into {weights}: max |embedding difference| {report['max_abs_embedding_diff']}")
        return weights

    @torch.no_grad()
    def merge_difference(self, export_dir: str | Path) -> dict[str, float]:
        """Max absolute difference between this model's embeddings and those of its export loaded by
        plain open_clip (``local-dir:``), on a fixed probe batch of random images and captions, in fp32."""
        merged = open_clip.create_model(f"local-dir:{export_dir}").eval()
        images = torch.randn(4, 3, *image_size(merged), generator=torch.Generator().manual_seed(0))
        tokens = self.tokenizer(PROBE_CAPTIONS)
        device, was_training = self.model.logit_scale.device, self.model.training
        self.model.eval()
        ours = {
            "image": self.encode_image(images.to(device)).float().cpu(),
            "text": self.encode_text(tokens.to(device)).float().cpu(),
        }
        self.model.train(was_training)
        theirs = {
            "image": merged.encode_image(images, normalize=True),
            "text": merged.encode_text(tokens, normalize=True),
        }
        return {tower: (ours[tower] - theirs[tower]).abs().max().item() for tower in ours}


def _project(x: torch.Tensor, projection: nn.Module | torch.Tensor | None) -> torch.Tensor:
    if projection is None:
        return x
    if isinstance(projection, nn.Module):
        return projection(x)
    return x @ projection
