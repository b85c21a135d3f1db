"""Tiny LLaVA models for tests: a seeded 42 px / 14 px-patch HF CLIP vision tower saved to a folder, and the
zoo's ``vlzoo-tiny-llama`` at width 32 (9 image tokens per image). Import from tests:

    from tests.zoo.llava_fixtures import llava_vision_folder, tiny_llava  # the fixture, used by name
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

IMAGE_SIZE, PATCH_SIZE, HIDDEN = 42, 14, 32
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
TINY_LM_CONFIG = {
    "hidden_size": HIDDEN,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
}
# (question, answer, image size or None for a text-only sample): rows of different supervised lengths
QA = [
    ("<image>\nWhat shape is it?", "a red square with a blue circle beside it", (50, 70)),
    ("What colour is the sky?", "blue", None),
    ("<image>\nHow many?", "two", (64, 40)),
]


def tiny_vision_folder(folder: str | Path, seed: int = 0) -> Path:
    """A random (``seed``) HF ``CLIPVisionModel`` at 42 px, 14 px patches, width 32, saved to ``folder``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModel(config)
        with torch.no_grad():  # transformers' init leaves norms at 1/0: make every tensor distinct
            for param in model.parameters():
                param.add_(0.02 * torch.randn_like(param))
    model.save_pretrained(folder)
    return Path(folder)


def tiny_llava(vision: Any, **kwargs: Any):
    """``zoo.LLaVA`` over the tiny tower folder ``vision`` (or a new one made with pytest's ``tmp_path_factory``)
    and the width-32 ``vlzoo-tiny-llama``; ``kwargs`` go to ``zoo.LLaVA``."""
    import zoo

    if hasattr(vision, "mktemp"):
        vision = tiny_vision_folder(vision.mktemp("llava-vision") / "clip")
    options = {"vision_tower": str(vision), "language_model": "vlzoo-tiny-llama"}
    options["language_model_config"] = dict(TINY_LM_CONFIG)
    return zoo.LLaVA(**{**options, **kwargs})


def tiny_vladva(vision: Any, **kwargs: Any):
    """``zoo.VladVA`` over the same tiny tower and LM as :func:`tiny_llava` (``kwargs`` go to ``zoo.VladVA``)."""
    import zoo

    if hasattr(vision, "mktemp"):
        vision = tiny_vision_folder(vision.mktemp("llava-vision") / "clip")
    options = {"vision_tower": str(vision), "language_model": "vlzoo-tiny-llama"}
    options["language_model_config"] = dict(TINY_LM_CONFIG)
    return zoo.VladVA(**{**options, **kwargs})


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (the CPUs are shared and contended)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def llava_vision_folder(tmp_path_factory) -> Path:
    """One tiny tower folder per session (read-only for tests: a test that changes weights makes its own)."""
    return tiny_vision_folder(tmp_path_factory.mktemp("llava-vision") / "clip")


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    """A random RGB image of ``size`` (width, height)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def record(i: int, question: str, answer: str, size: tuple[int, int] | None) -> dict:
    """A LLaVA-format record (one question, one answer) with a random image of ``size`` (``None``: text only)."""
    return {
        "id": str(i),
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        "image": None if size is None else picture(size, i),
        "image_file": None if size is None else f"{i}.png",
    }


def collate(model, qa=QA, first: int = 0) -> dict:
    """A training batch of ``qa`` rows through the instruction data module's tokenizer, recipe and collator."""
    from datamodules.instruction import InstructionCollator, InstructionRecipe, Tokenized

    data = model.data_transforms()
    tokenize = Tokenized(data["tokenizer"], data["template"], data["image_tokens"], None, data["system_prompt"])
    recipe = InstructionRecipe(data["train_transform"], data["image_size"])
    samples = []
    for i, row in enumerate(qa, start=first):
        item = record(i, *row)
        samples.append(recipe.build(None, {**item, **tokenize(item), "key": item["id"]}, i, 0))
    tok = model.tokenizer
    return InstructionCollator(tok.pad_token_id, tok.image_token_id, data["image_tokens"])(samples)


def concatenate(model, *batches: dict) -> dict:
    """Batches as one, right-padded to the widest (pad id, label −100, mask 0)."""
    width = max(b["input_ids"].shape[1] for b in batches)
    fill = {"input_ids": model.tokenizer.pad_token_id, "labels": -100, "attention_mask": 0}
    out = {k: torch.cat([torch.nn.functional.pad(b[k], (0, width - b[k].shape[1]), value=v) for b in batches])
           for k, v in fill.items()}  # fmt: skip
    return {**out, "pixel_values": torch.cat([b["pixel_values"] for b in batches])}


def perturb(model, seed: int, scale: float = 0.05):
    """As if trained: noise on every trainable tensor (LoRA's B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn(param.shape, generator=generator))
    return model


def perturb_lora(model, seed: int = 1):
    """Non-zero LoRA B matrices (peft starts them at zero, which would hide the adapters); the rest untouched."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return model


def save(model, path: Path) -> dict:
    """``model``'s checkpoint as a Lightning ``Trainer`` writes it, at ``path``; returns it loaded."""
    from lightning.pytorch import Trainer

    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return torch.load(path, weights_only=False)


def logits(model, batch: dict) -> torch.Tensor:
    """transformers' LLaVA logits of a batch (no gradient)."""
    with torch.no_grad():
        keys = ("input_ids", "attention_mask", "pixel_values")
        return model.llava(**{k: batch[k] for k in keys}).logits


def trainable(model) -> set[str]:
    """Names of the parameters that train."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def under(model, prefix: str) -> set[str]:
    """Names of the parameters under the module ``prefix``."""
    return {n for n, _ in model.named_parameters() if n.startswith(prefix + ".")}
