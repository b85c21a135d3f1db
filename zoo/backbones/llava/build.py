"""Assembling a transformers ``LlavaForConditionalGeneration`` from a vision tower and a causal LM, or
loading a whole one; the LLaVA-1.5 image processor; the number of image tokens per image.

Everything the zoo builds is a plain transformers LLaVA: vision tower (``model.model.vision_tower``, a
``CLIPVisionModel``), projector (``model.model.multi_modal_projector``: ``linear_1`` → act → ``linear_2``)
and language model (``model.model.language_model`` + ``model.lm_head``), so exports load in transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.llava import LlavaImageProcessorPil

from zoo.backbones.llava.clip_vision import ImageSpec, load_vision_tower
from zoo.backbones.llava.conversation import IMAGE_TOKEN, image_token_id, prompt_add_special_tokens

Projector = Literal["linear", "mlp2x_gelu"]
TINY_LLAMA = "vlzoo-tiny-llama"
TINY_LLAMA_FOLDER = Path(__file__).resolve().parents[1] / "model_configs" / "vlzoo_tiny_llama"


def num_image_tokens(config: LlavaConfig) -> int:
    """Placeholder tokens per image: one per patch of the tower's input (``(image_size // patch_size)²``),
    plus the CLS token when ``vision_feature_select_strategy == "full"`` (576 for ViT-L/14 at 336 px). The one
    count used by the data (label building, checks) and by the processor the zoo exports."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if config.vision_feature_select_strategy == "full" else 0)


def load_tokenizer(spec: str, cache_dir: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of a language model (``vlzoo-tiny-llama``: the zoo's ShapesWorld BPE); it must know
    ``<image>`` (``tokenizer.image_token_id``): a tokenizer without it gets it as an added special token."""
    folder = TINY_LLAMA_FOLDER if spec == TINY_LLAMA else spec
    tokenizer = AutoTokenizer.from_pretrained(folder, cache_dir=cache_dir)
    if getattr(tokenizer, "image_token_id", None) is None:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
        tokenizer.image_token, tokenizer.image_token_id = "<image>", tokenizer.convert_tokens_to_ids("<image>")
    if tokenizer.pad_token is None:  # LLaVA v1: pad with unk (or eos when there is none)
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load_language_model(
    spec: str, cache_dir: str | None = None, config_overrides: dict[str, Any] | None = None, seed: int = 0
) -> PreTrainedModel:
    """A causal LM: an HF folder or hub id, or ``vlzoo-tiny-llama`` (a small Llama from the shipped config,
    randomly initialised with ``seed``: the same weights on every call; ``config_overrides`` change its
    geometry). Train it on ShapesWorld text with ``configs/llm_pretrain.yaml`` for a model that knows the
    language."""
    if spec != TINY_LLAMA:
        if config_overrides:
            raise ValueError(f"language_model_config overrides apply to {TINY_LLAMA} only, not to {spec!r}")
        return AutoModelForCausalLM.from_pretrained(spec, cache_dir=cache_dir, dtype=torch.float32)
    from transformers import LlamaConfig, LlamaForCausalLM

    config = json.loads((TINY_LLAMA_FOLDER / "config.json").read_text())
    config.update(config_overrides or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**config))


def assemble_llava(
    vision: nn.Module,
    language_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    projector: Projector = "mlp2x_gelu",
    vision_feature_layer: int = -2,
    seed: int = 0,
) -> LlavaForConditionalGeneration:
    """A LLaVA from parts, as LLaVA builds it: the tower's layer ``vision_feature_layer`` (−2: the penultimate
    encoder layer's output, before the post-layernorm), CLS dropped, through a new projector, spliced into
    the LM's input at the ``<image>`` placeholders. ``mlp2x_gelu`` (LLaVA-1.5): Linear → exact-erf GELU →
    Linear. ``linear`` (LLaVA): one Linear, written as transformers' two-layer projector with an identity
    activation and ``linear_2`` fixed to the identity (frozen), so the export is still a plain LLaVA."""
    if projector not in ("linear", "mlp2x_gelu"):
        raise ValueError(f"projector must be 'linear' or 'mlp2x_gelu', got {projector!r}")
    text_config = language_model.config
    config = LlavaConfig(
        vision_config=vision.config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.image_token_id,
        projector_hidden_act="gelu" if projector == "mlp2x_gelu" else "linear",
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )
    config.image_seq_length = num_image_tokens(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(language_model.get_decoder().state_dict())
    model.lm_head.load_state_dict(language_model.get_output_embeddings().state_dict())
    if projector == "linear":
        with torch.no_grad():
            model.model.multi_modal_projector.linear_2.weight.copy_(torch.eye(text_config.hidden_size))
            model.model.multi_modal_projector.linear_2.bias.zero_()
    return model.eval()


def image_processor(spec: ImageSpec, pad: bool) -> LlavaImageProcessorPil:
    """LLaVA-1.5's preprocessing (``pad``: pad to a square with the mean colour, (122, 116, 104) for CLIP, then
    resize the shortest edge and centre-crop, i.e. ``LlavaImageProcessor(do_pad=True)``); without ``pad``,
    LLaVA's stage-1 plain resize + centre crop. PIL backend, as the reference code's processor."""
    return LlavaImageProcessorPil(do_pad=pad, **image_processor_options(spec))


def image_processor_options(spec: ImageSpec) -> dict[str, Any]:
    """The CLIP-style preprocessing options of ``spec`` every LLaVA image processor of the zoo shares: the tower's
    size (shortest edge and crop), its mean / std and resampling (PIL's 3 bicubic, 2 bilinear)."""
    size = int(spec.image_size)
    return {
        "size": {"shortest_edge": size},
        "crop_size": {"height": size, "width": size},
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
        "resample": 3 if spec.interpolation == "bicubic" else 2,
    }


def llava_processor(
    model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, images: LlavaImageProcessorPil
) -> LlavaProcessor:
    """The ``LlavaProcessor`` matching ``model``: it expands each ``<image>`` to :func:`num_image_tokens`."""
    return LlavaProcessor(image_processor=images, **processor_options(model, tokenizer))


def processor_options(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What a LLaVA(-NeXT) processor needs beside its image processor to expand ``<image>`` as ``model`` does."""
    config = model.config
    return {
        "tokenizer": tokenizer,
        "patch_size": config.vision_config.patch_size,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        "num_additional_image_tokens": 1,  # the CLS token, dropped again by the "default" strategy
        "chat_template": getattr(tokenizer, "chat_template", None),
    }


def load_llava(
    spec: str, cache_dir: str | None = None
) -> tuple[LlavaForConditionalGeneration, PreTrainedTokenizerBase, ImageSpec]:
    """A whole LLaVA (``llava-hf/llava-1.5-7b-hf`` or a folder, e.g. a zoo export; a LLaVA-NeXT such as
    ``llava-hf/llava-v1.6-vicuna-7b-hf`` loads as ``LlavaNextForConditionalGeneration``): model, tokenizer and
    the image spec of its processor."""
    from transformers import AutoConfig, LlavaNextForConditionalGeneration

    next_model = AutoConfig.from_pretrained(spec, cache_dir=cache_dir).model_type == "llava_next"
    cls = LlavaNextForConditionalGeneration if next_model else LlavaForConditionalGeneration
    model = cls.from_pretrained(spec, cache_dir=cache_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(spec, cache_dir=cache_dir)
    tokenizer = processor.tokenizer
    if getattr(tokenizer, "image_token_id", None) is None:
        tokenizer.image_token, tokenizer.image_token_id = processor.image_token, processor.image_token_id
    images = processor.image_processor
    crop = images.crop_size
    spec_out = ImageSpec(
        image_size=int(crop["height"] if isinstance(crop, dict) else crop.height),
        image_mean=tuple(images.image_mean),
        image_std=tuple(images.image_std),
        interpolation="bicubic",
        resize_mode="shortest",
    )
    return model.eval(), tokenizer, spec_out


def build_llava(
    model_name_or_path: str | None,
    vision_tower: str,
    language_model: str,
    projector: Projector = "mlp2x_gelu",
    vision_feature_layer: int = -2,
    language_model_config: dict[str, Any] | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> tuple[LlavaForConditionalGeneration, PreTrainedTokenizerBase, ImageSpec]:
    """A whole LLaVA from ``model_name_or_path``, or one assembled from ``vision_tower`` (see
    :func:`~zoo.backbones.llava.clip_vision.load_vision_tower`) and ``language_model``."""
    if model_name_or_path:
        model, tokenizer, spec = load_llava(model_name_or_path, cache_dir)
        return model.train(), tokenizer, spec
    vision, spec = load_vision_tower(vision_tower, cache_dir=cache_dir)
    tokenizer = load_tokenizer(language_model, cache_dir)
    lm = load_language_model(language_model, cache_dir, language_model_config, seed)
    if lm.get_input_embeddings().num_embeddings < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer))
    return assemble_llava(vision, lm, tokenizer, projector, vision_feature_layer, seed).train(), tokenizer, spec


def encode_prompt(text: str, tokenizer: PreTrainedTokenizerBase, image_tokens: int | list[int]) -> list[int]:
    """Token ids of a prompt as ``LlavaProcessor`` gives them: special tokens as the tokenizer adds them (not
    twice when a chat template wrote BOS), each ``<image>`` expanded to ``image_tokens`` placeholder ids (a list:
    the k-th tag to the k-th count)."""
    first, *rest = text.split(IMAGE_TOKEN)
    counts = [image_tokens] * len(rest) if isinstance(image_tokens, int) else list(image_tokens)
    if len(counts) != len(rest):
        raise ValueError(f"{len(rest)} {IMAGE_TOKEN} tags in the prompt but {len(counts)} image token counts")
    ids = tokenizer(first, add_special_tokens=prompt_add_special_tokens(text, tokenizer)).input_ids
    for chunk, count in zip(rest, counts):
        ids += [image_token_id(tokenizer)] * count + tokenizer(chunk, add_special_tokens=False).input_ids
    return ids
