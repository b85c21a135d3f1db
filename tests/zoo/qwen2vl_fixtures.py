"""A tiny Qwen2-VL built offline from configs and saved as a user's folder would be (``save_pretrained`` of
``Qwen2VLForConditionalGeneration`` and ``Qwen2VLProcessor``): 56 px images, 14 px patches merged 2×2, so 4 image
tokens per image; a 2-layer text model of width 32; the zoo's tiny BPE with Qwen's special tokens and Qwen2-VL's
own chat template. Import from tests:

    from tests.zoo.qwen2vl_fixtures import qwen2vl_folder, tiny_qwen_vladva  # the fixture, used by name
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

IMAGE_SIZE, HIDDEN = 56, 32
IMAGE_TOKENS = (IMAGE_SIZE // 14 // 2) ** 2
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
# Qwen/Qwen2-VL-2B-Instruct's chat template (chat_template.json), verbatim
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def qwen_tokenizer():
    """The zoo's tiny byte-level BPE with Qwen's special tokens added, no BOS (as Qwen2), EOS ``<|im_end|>``."""
    from transformers import PreTrainedTokenizerFast

    from zoo.backbones.llava.build import TINY_LLAMA, load_tokenizer

    bare = load_tokenizer(TINY_LLAMA).backend_tokenizer
    bare.post_processor = None  # Qwen2 prepends no BOS
    bare.add_special_tokens(QWEN_SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=bare, eos_token="<|im_end|>", pad_token="<|endoftext|>", clean_up_tokenization_spaces=False
    )


def qwen2vl_model_folder(folder: str | Path, seed: int = 0) -> Path:
    """A random (``seed``) tiny ``Qwen2VLForConditionalGeneration`` + its ``Qwen2VLProcessor`` saved to ``folder``."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = qwen_tokenizer()
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in
           [("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("start", "<|vision_start|>"),
            ("end", "<|vision_end|>")]}  # fmt: skip
    config = Qwen2VLConfig(
        vision_config={"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": HIDDEN,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        text_config={"vocab_size": len(tok), "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
                     "bos_token_id": None, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["start"],
        vision_end_token_id=ids["end"],
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
        with torch.no_grad():  # transformers' init leaves norms at 1/0: make every tensor distinct
            for param in model.parameters():
                param.add_(0.05 * torch.randn_like(param))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    images = Qwen2VLImageProcessorPil(min_pixels=IMAGE_SIZE**2, max_pixels=IMAGE_SIZE**2)
    processor = Qwen2VLProcessor(
        image_processor=images, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )  # fmt: skip
    processor.save_pretrained(folder)
    return Path(folder)


@pytest.fixture(scope="session")
def qwen2vl_folder(tmp_path_factory) -> Path:
    """One tiny Qwen2-VL folder per session (read-only for tests)."""
    return qwen2vl_model_folder(tmp_path_factory.mktemp("qwen2vl") / "Qwen2-VL-tiny")


def tiny_qwen_vladva(folder: Path, **kwargs: Any):
    """``zoo.VladVA`` over the tiny Qwen2-VL folder, as a user would build it (``kwargs`` go to ``zoo.VladVA``)."""
    import zoo

    return zoo.VladVA(model_name_or_path=str(folder), **kwargs)
