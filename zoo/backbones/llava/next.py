"""transformers' ``LlavaNextForConditionalGeneration`` for the zoo's high-resolution LLaVAs: a LLaVA(-1.5) turned
into one (same tower, projector and LM weights; a new ``image_newline``), and its ``LlavaNextProcessor``.

The parameter names are LLaVA's plus ``model.image_newline``, so every part, LoRA regex and checkpoint of
:mod:`zoo.backbones.llava.parts` applies unchanged.
"""

from __future__ import annotations

import math

import torch
from transformers import (
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PreTrainedTokenizerBase,
)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from zoo.backbones.llava.build import image_processor_options, num_image_tokens, processor_options
from zoo.backbones.llava.clip_vision import ImageSpec
from zoo.backbones.llava.high_res import HighRes


def to_llava_next(
    llava: LlavaForConditionalGeneration, canvases: list[list[int]], seed: int = 0
) -> LlavaNextForConditionalGeneration:
    """A ``LlavaNextForConditionalGeneration`` holding ``llava``'s weights (LLaVA-1.5 → HD / AnyRes), with
    ``image_grid_pinpoints`` = ``canvases`` ((h, w) pairs) and a new ``image_newline`` drawn as LLaVA-NeXT
    draws it, ``randn(D) / sqrt(D)``, from ``seed``."""
    old = llava.config
    config = LlavaNextConfig(
        vision_config=old.vision_config.to_dict(),
        text_config=old.text_config.to_dict(),
        image_token_index=old.image_token_id,
        projector_hidden_act=old.projector_hidden_act,
        vision_feature_select_strategy=old.vision_feature_select_strategy,
        vision_feature_layer=old.vision_feature_layer,
        multimodal_projector_bias=getattr(old, "multimodal_projector_bias", True),
        tie_word_embeddings=getattr(old, "tie_word_embeddings", False),
        image_grid_pinpoints=[list(pair) for pair in canvases],
    )
    config.image_seq_length = num_image_tokens(config)
    with torch.random.fork_rng(devices=[]):  # every tensor is overwritten below; the global RNG is left alone
        model = LlavaNextForConditionalGeneration(config)
    state = llava.state_dict()
    dim = config.text_config.hidden_size
    generator = torch.Generator().manual_seed(seed)
    state["model.image_newline"] = torch.randn(dim, generator=generator) / math.sqrt(dim)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"LLaVA → LLaVA-NeXT: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.train(llava.training)


def next_image_processor(high_res: HighRes, spec: ImageSpec) -> LlavaNextImageProcessorPil:
    """transformers' AnyRes preprocessing for ``high_res`` (PIL backend: the zoo's pixels exactly when loaded
    with ``backend="pil"``): candidate canvases as (h, w), black padding, the squashed global view first."""
    return LlavaNextImageProcessorPil(image_grid_pinpoints=high_res.canvases, **image_processor_options(spec))


def next_processor(
    model: LlavaNextForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, high_res: HighRes, spec: ImageSpec
) -> LlavaNextProcessor:
    """The ``LlavaNextProcessor`` of an export: it expands each ``<image>`` to the count of
    :meth:`HighRes.tokens` (transformers' own count, for the layouts it expresses)."""
    return LlavaNextProcessor(
        image_processor=next_image_processor(high_res, spec), **processor_options(model, tokenizer)
    )
