"""LLaVA's vision tower: the zoo's open_clip ViTs as transformers' ``CLIPVisionModel``, loaded from any source.

:func:`open_clip_to_hf_vision` converts an open_clip ``VisionTransformer`` (``model.visual``) once, with the
same maths; :func:`load_vision_tower` builds a tower (and its :class:`ImageSpec`) from an open_clip name, an
open_clip ``local-dir:`` export, a zoo CLIP-family ``.ckpt`` or a transformers folder / hub id.

open_clip vs transformers, settled here:

* Activation: open_clip's ``QuickGELU`` (``x·σ(1.702x)``, OpenAI weights, ``quick_gelu: true`` configs) is
  ``hidden_act="quick_gelu"``; ``nn.GELU()`` (exact erf, the open_clip default) is ``"gelu"``; ``nn.GELU("tanh")``
  is ``"gelu_pytorch_tanh"``. transformers' default ``"quick_gelu"`` would silently change a GELU model.
* LayerNorm eps: open_clip's is torch's 1e-5 unless ``norm_kwargs`` say otherwise; read from the modules
  (transformers has one ``layer_norm_eps`` for all norms, so they must agree).
* Pooling: transformers' ``pooler_output`` is ``post_layernorm(CLS of the last layer)``; it equals open_clip's
  pooled feature before ``proj`` for ``pool_type="tok"`` (with or without ``final_ln_after_pool``: the norm
  acts per token). ``proj`` is not part of ``CLIPVisionModel`` (LLaVA never uses it) and is dropped.
* ``hidden_states`` has layers + 1 entries: [0] is the embeddings after ``pre_layrnorm`` (open_clip's
  ``_embeds``), [i] the output of block i-1; LLaVA's ``-2`` is the output of the penultimate block.
* open_clip's ``PatchDropout`` is the identity in eval mode and is dropped (the converted tower has none).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from inspect import signature
from pathlib import Path

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, Transformer, VisionTransformer
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL resampling codes in transformers' preprocessor_config.json
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
VISUAL_CHILDREN = {"conv1", "patch_dropout", "ln_pre", "transformer", "ln_post"}
BLOCK_CHILDREN = {"ln_1", "attn", "ls_1", "ln_2", "mlp", "ls_2"}


@dataclass(frozen=True)
class ImageSpec:
    """A tower's preprocessing: square input size, normalisation, resize interpolation and open_clip's
    ``resize_mode`` (``shortest``: resize the short side and centre-crop; ``longest``: pad; ``squash``)."""

    image_size: int
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


# ----------------------------------------------------------------------------------------- conversion
def _unsupported(feature: str) -> ValueError:
    return ValueError(f"CLIPVisionModel cannot express this open_clip vision tower: {feature}")


def _square(value: int | tuple[int, int] | list[int], what: str) -> int:
    height, width = (value, value) if isinstance(value, int) else tuple(value)
    if height != width:
        raise _unsupported(f"non-square {what} {height}x{width}")
    return int(height)


def _activation(act: nn.Module, where: str) -> str:
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if type(act) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}[act.approximate]
    raise _unsupported(f"activation {type(act).__name__} in {where}")


def _layer_norms(visual: VisionTransformer) -> dict[str, nn.Module]:
    norms = {"ln_pre": visual.ln_pre, "ln_post": visual.ln_post}
    for i, block in enumerate(visual.transformer.resblocks):
        norms |= {f"resblocks.{i}.ln_1": block.ln_1, f"resblocks.{i}.ln_2": block.ln_2}
    return norms


def _check_block(block: nn.Module, i: int, width: int) -> tuple[str, int, int]:
    """(activation name, MLP width, heads) of a plain open_clip residual block; refuses anything else."""
    where = f"transformer.resblocks.{i}"
    if type(block) is not ResidualAttentionBlock:
        raise _unsupported(
            f"{where} is a {type(block).__name__} (qk-norm, scaled cosine attention, head scales or extra "
            "attention / MLP norms need open_clip's custom block)"
        )
    extra = {name for name, _ in block.named_children()} - BLOCK_CHILDREN
    if extra:
        raise _unsupported(f"extra modules in {where}: {sorted(extra)} (e.g. REACT's gated blocks)")
    if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
        raise _unsupported(f"layer scale (ls_1 / ls_2) in {where}")
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or attn.embed_dim != width:
        raise _unsupported(f"attention {type(attn).__name__} in {where}")
    if not attn._qkv_same_embed_dim or attn.in_proj_bias is None or attn.out_proj.bias is None:
        raise _unsupported(f"attention without a packed, biased q/k/v projection in {where}")
    if attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
        raise _unsupported(f"attention with key/value bias tokens or zero attention in {where}")
    mlp = block.mlp
    if [name for name, _ in mlp.named_children()] != ["c_fc", "gelu", "c_proj"]:
        raise _unsupported(f"MLP layout {[name for name, _ in mlp.named_children()]} in {where}")
    if mlp.c_fc.bias is None or mlp.c_proj.bias is None:
        raise _unsupported(f"MLP without biases in {where}")
    return _activation(mlp.gelu, f"{where}.mlp"), mlp.c_fc.out_features, attn.num_heads


def _hf_config(visual: nn.Module) -> CLIPVisionConfig:
    """The ``CLIPVisionConfig`` of ``visual``, after checking every feature CLIPVisionModel lacks."""
    if type(visual) is not VisionTransformer:
        raise _unsupported(f"{type(visual).__name__} is not an open_clip VisionTransformer")
    extra = {name for name, _ in visual.named_children()} - VISUAL_CHILDREN
    if getattr(visual, "attn_pool", None) is not None or extra:
        raise _unsupported(f"attentional pooling / extra modules {sorted(extra)}")
    if visual.pool_type != "tok":
        raise _unsupported(f"pool_type {visual.pool_type!r} (CLIPVisionModel pools the class token)")
    if isinstance(visual.ln_pre, nn.Identity):
        raise _unsupported("no ln_pre (no_ln_pre=True)")
    hooked = [name or "visual" for name, m in visual.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    if hooked:
        raise _unsupported(f"forward hooks on {hooked[:3]} (e.g. REACT's gated blocks)")
    image_size, patch_size = _square(visual.image_size, "image size"), _square(visual.patch_size, "patch size")
    conv = visual.conv1
    if conv.bias is not None or conv.in_channels != 3 or conv.padding != (0, 0) or conv.groups != 1:
        raise _unsupported("a patch embedding with bias, padding, groups or other than 3 input channels")
    if tuple(conv.kernel_size) != (patch_size, patch_size) or tuple(conv.stride) != (patch_size, patch_size):
        raise _unsupported(f"patch embedding kernel {conv.kernel_size} / stride {conv.stride}")
    width, blocks = conv.out_channels, visual.transformer.resblocks
    if type(visual.transformer) is not Transformer or len(blocks) == 0:
        raise _unsupported(f"transformer {type(visual.transformer).__name__}")
    if visual.positional_embedding.shape != ((image_size // patch_size) ** 2 + 1, width):
        raise _unsupported(f"positional embedding of shape {tuple(visual.positional_embedding.shape)}")
    layers = {_check_block(block, i, width) for i, block in enumerate(blocks)}
    if len(layers) != 1:
        raise _unsupported(f"blocks that differ in activation, MLP width or heads: {sorted(layers)}")
    (hidden_act, intermediate_size, heads), = layers
    norms = _layer_norms(visual)
    for name, norm in norms.items():
        if not isinstance(norm, nn.LayerNorm) or tuple(norm.normalized_shape) != (width,):
            raise _unsupported(f"{name} is not a LayerNorm over the width ({type(norm).__name__})")
    eps = {norm.eps for norm in norms.values()}
    if len(eps) != 1:
        raise _unsupported(f"layer norms with different eps {sorted(eps)}")
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=intermediate_size,
        num_hidden_layers=len(blocks),
        num_attention_heads=heads,
        num_channels=3,
        image_size=image_size,
        patch_size=patch_size,
        hidden_act=hidden_act,
        layer_norm_eps=eps.pop(),
        projection_dim=visual.proj.shape[1] if visual.proj is not None else width,
    )


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()


def _norm_weights(norm: nn.LayerNorm, prefix: str) -> dict[str, torch.Tensor]:
    width = norm.normalized_shape[0]
    weight = norm.weight if norm.weight is not None else torch.ones(width)
    return _affine(prefix, weight, norm.bias if norm.bias is not None else torch.zeros(width))


def _affine(prefix: str, weight: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": _copy(weight), f"{prefix}.bias": _copy(bias)}


def _hf_state_dict(visual: VisionTransformer) -> dict[str, torch.Tensor]:
    """open_clip weights under transformers' names. Weights are read as attributes, so LoRA
    parametrizations come merged."""
    state = {
        "embeddings.patch_embedding.weight": _copy(visual.conv1.weight),
        "embeddings.class_embedding": _copy(visual.class_embedding),
        "embeddings.position_embedding.weight": _copy(visual.positional_embedding),
        **_norm_weights(visual.ln_pre, "pre_layrnorm"),
        **_norm_weights(visual.ln_post, "post_layernorm"),
    }
    for i, block in enumerate(visual.transformer.resblocks):
        prefix = f"encoder.layers.{i}"
        q, k, v = block.attn.in_proj_weight.chunk(3)
        q_bias, k_bias, v_bias = block.attn.in_proj_bias.chunk(3)
        for name, weight, bias in (("q_proj", q, q_bias), ("k_proj", k, k_bias), ("v_proj", v, v_bias)):
            state |= _affine(f"{prefix}.self_attn.{name}", weight, bias)
        for name, linear in (
            ("self_attn.out_proj", block.attn.out_proj), ("mlp.fc1", block.mlp.c_fc), ("mlp.fc2", block.mlp.c_proj)
        ):
            state |= _affine(f"{prefix}.{name}", linear.weight, linear.bias)
        state |= _norm_weights(block.ln_1, f"{prefix}.layer_norm1") | _norm_weights(block.ln_2, f"{prefix}.layer_norm2")
    return state


@torch.no_grad()
def open_clip_to_hf_vision(visual: nn.Module) -> CLIPVisionModel:
    """An open_clip ``VisionTransformer`` (``model.visual``) as a float32 ``CLIPVisionModel`` in eval mode with
    the same maths and copied weights; raises ``ValueError`` naming any feature CLIPVisionModel cannot express
    (layer scale, no ``ln_pre``, attentional or average pooling, non-square patches, custom attention, ...)."""
    config = _hf_config(visual)
    with torch.random.fork_rng(devices=[]):  # transformers' random init must not move the caller's RNG
        model = CLIPVisionModel(config)
    model.load_state_dict(_hf_state_dict(visual), strict=True)
    return model.float().eval()


# -------------------------------------------------------------------------------------------- loading
def image_spec_of(visual: nn.Module) -> ImageSpec:
    """The preprocessing an open_clip image tower was created with (its ``preprocess_cfg``)."""
    cfg = get_model_preprocess_cfg(visual)
    return ImageSpec(
        image_size=_square(cfg.get("size", visual.image_size), "image size"),
        image_mean=tuple(float(m) for m in cfg.get("mean", OPENAI_CLIP_MEAN)),
        image_std=tuple(float(s) for s in cfg.get("std", OPENAI_CLIP_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
        resize_mode=cfg.get("resize_mode", "shortest"),
    )


def _image_spec_of_hf(processor: dict, image_size: int) -> ImageSpec:
    """An :class:`ImageSpec` from a transformers ``preprocessor_config.json`` (keys left out: CLIPImageProcessor's
    defaults, OpenAI CLIP's mean / std, bicubic, resize the short side and centre-crop)."""
    crop, size = processor.get("crop_size", image_size), processor.get("size", {"shortest_edge": image_size})
    center_crop = processor.get("do_center_crop", True)
    square = crop if center_crop else size
    if isinstance(square, dict):
        square = square.get("height", square.get("shortest_edge"))
    resize_mode = "shortest" if center_crop or (isinstance(size, dict) and "shortest_edge" in size) else "squash"
    spec = ImageSpec(
        image_size=int(square or image_size),
        image_mean=tuple(float(m) for m in processor.get("image_mean", OPENAI_CLIP_MEAN)),
        image_std=tuple(float(s) for s in processor.get("image_std", OPENAI_CLIP_STD)),
        interpolation=RESAMPLE.get(processor.get("resample", 3), "bicubic"),
        resize_mode=resize_mode,
    )
    if spec.image_size != image_size:
        raise ValueError(f"preprocessor crops {spec.image_size} px but the tower takes {image_size} px")
    return spec


def _open_clip_visual(name: str, pretrained: str | None, cache_dir: str | None) -> nn.Module:
    """The image tower of the zoo's open_clip backbone; random weights are seeded 0 (bit-identical per call)."""
    from zoo.backbones.openclip import OpenCLIPBackbone  # registers the zoo's model configs with open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone = OpenCLIPBackbone(model_name=name, pretrained=pretrained or None, cache_dir=cache_dir)
    return backbone.model.visual


def _init_arguments(cls: type) -> set[str]:
    """Every keyword ``cls(...)`` names along its ``__init__`` chain."""
    return {name for klass in cls.__mro__ if "__init__" in vars(klass) for name in signature(klass.__init__).parameters}


def _checkpoint_visual(path: Path) -> nn.Module:
    """The image tower of a zoo CLIP-family Lightning checkpoint. The class is LightningCLI's ``_class_path``;
    without one (a plain ``Trainer.save_checkpoint``) the first CLIP-family class taking all its hyper-parameters."""
    import zoo

    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if any(".gated_attn_block." in key for key in checkpoint.get("state_dict", {})):
        raise _unsupported("REACT's gated blocks (train REACT with tuning != 'gated_image' to convert)")
    hparams = dict(checkpoint.get("hyper_parameters", {}))
    family = (zoo.CLIP, zoo.NegCLIP, zoo.FSCCLIP, zoo.REACT)
    if "_class_path" in hparams:
        module_name, _, class_name = hparams["_class_path"].rpartition(".")
        zoo_module = module_name.split(".")[0] == "zoo"
        cls = getattr(importlib.import_module(module_name), class_name, None) if zoo_module else None
    else:
        cls = next((cls for cls in family if set(hparams) <= _init_arguments(cls)), None)
    if not (isinstance(cls, type) and issubclass(cls, zoo.CLIP)):
        found = hparams.get("_class_path", f"no _class_path and hyper-parameters {sorted(hparams)}")
        raise ValueError(f"not a zoo CLIP-family checkpoint ({found}); expected one of {[c.__name__ for c in family]}")
    return cls.load_from_checkpoint(path, map_location="cpu").backbone.model.visual


def _hf_vision(spec: str, cache_dir: str | None) -> tuple[CLIPVisionModel, ImageSpec]:
    from transformers.utils import cached_file

    if not Path(spec).expanduser().exists():
        if spec.startswith(("/", "./", "../", "~")):
            raise FileNotFoundError(f"vision tower {spec!r}: no such folder")
        if spec in open_clip.list_models():  # fail now rather than after the hub's retries
            raise ValueError(f"vision tower {spec!r} is an open_clip model name: write 'open_clip:{spec}'")
    model, info = CLIPVisionModel.from_pretrained(
        spec, cache_dir=cache_dir, dtype=torch.float32, output_loading_info=True
    )
    if info["missing_keys"] or info["mismatched_keys"]:
        missing = sorted(info["missing_keys"])[:5] + [key for key, *_ in info["mismatched_keys"]][:5]
        raise ValueError(f"vision tower {spec!r}: weights missing or mismatched for {missing}")
    found = cached_file(
        spec,
        "preprocessor_config.json",
        cache_dir=cache_dir,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    processor = json.loads(Path(found).read_text()) if found else {}
    return model.float().eval(), _image_spec_of_hf(processor, model.config.image_size)


def load_vision_tower(spec: str, cache_dir: str | None = None) -> tuple[CLIPVisionModel, ImageSpec]:
    """A ``CLIPVisionModel`` (float32, eval mode) and its preprocessing, from ``spec``:

    * ``open_clip:<name>[@<pretrained tag or file>]``: an open_clip model (the zoo's configs included, e.g.
      ``open_clip:vlzoo-tiny-vit``), converted; without a tag the weights are random but seeded (repeatable).
    * ``local-dir:<folder>``: an open_clip export (``zoo.CLIP.export_open_clip``), converted.
    * ``<path>.ckpt``: a zoo CLIP-family Lightning checkpoint (CLIP, FSCCLIP, NegCLIP, REACT), converted.
    * anything else: a transformers folder or hub id (``CLIPVisionModel`` or full ``CLIPModel`` weights).

    ``cache_dir``: where open_clip / transformers cache downloads. Errors name ``spec``.
    """
    try:
        if spec.startswith("open_clip:"):
            name, _, pretrained = spec.removeprefix("open_clip:").partition("@")
            visual = _open_clip_visual(name, pretrained, cache_dir)
        elif spec.startswith("local-dir:"):
            folder = Path(spec.removeprefix("local-dir:")).expanduser()
            if not (folder / "open_clip_config.json").is_file():
                raise FileNotFoundError(f"{folder} is not an open_clip export (no open_clip_config.json)")
            visual = open_clip.create_model(f"local-dir:{folder}", cache_dir=cache_dir).visual
        elif spec.endswith(".ckpt"):
            if not Path(spec).expanduser().is_file():
                raise FileNotFoundError("no such checkpoint file")
            visual = _checkpoint_visual(Path(spec).expanduser())
        else:
            return _hf_vision(spec, cache_dir)
        return open_clip_to_hf_vision(visual), image_spec_of(visual)
    except (ValueError, RuntimeError, KeyError, OSError, ImportError) as err:
        if spec in str(err):
            raise
        kinds = (FileNotFoundError, OSError, ValueError)  # the first that fits; others: ValueError
        kind = next(kind for kind in kinds if isinstance(err, kind) or kind is ValueError)
        raise kind(f"vision tower {spec!r}: {err}") from err
