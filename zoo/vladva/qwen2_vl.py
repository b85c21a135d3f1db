"""VladVA on Qwen2-VL (the paper's supplementary adapts Qwen2-VL-2B): ``model_name_or_path`` naming a folder or
hub id whose ``config.json`` says ``model_type: qwen2_vl`` builds a ``Qwen2VLForConditionalGeneration``.

What differs from LLaVA, and where it is handled here:

* **Images**: the zoo's data path stays ([3, S, S] tensors): every image is resized (squashed) to one square size
  ``S`` (``image_spec.image_size``; default 448 px fitted into the processor's ``min_pixels``/``max_pixels``) and
  normalised with the processor's mean/std, so every image has ``(S / patch / merge)²`` visual tokens. Inside the
  model :func:`patchify` turns ``[B, 3, S, S]`` into Qwen2-VL's flattened patches + ``image_grid_thw``, exactly as
  ``Qwen2VLImageProcessor`` lays them out (tested).
* **Sequences**: Qwen's ChatML (:data:`QWEN2_VL_PROMPTS`, as its chat template writes a text item then an image
  item); ``<image>`` expands to ``<|vision_start|>`` + ``<|image_pad|>``×N + ``<|vision_end|>``. The summary token
  is the ``\\n`` after ``<|im_start|>assistant``; the labels the long caption + ``<|im_end|>``.
* **Towers**: image features are the vision merger's output (``get_image_features``), and the LLM runs with
  M-RoPE position ids (``get_rope_index``; text rows: the 1-D positions ×3).
* **Parts**: ``vision_tower`` is ``visual`` without its merger, ``projector`` the merger
  (:func:`zoo.backbones.llava.parts.part_modules`); LoRA's regex already matches the LLM only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PretrainedConfig

from zoo.backbones.llava.clip_vision import ImageSpec
from zoo.vladva.prompts import EmbeddingPrompts

QWEN2_VL = "qwen2_vl"
SUPPORTED_TYPES = ("llava", QWEN2_VL)
DEFAULT_IMAGE_SIZE = 448  # (ours) fitted into the processor's pixel range; the paper does not say
IMAGE_SPAN = ("<|vision_start|>", "<|vision_end|>")
QWEN_SYSTEM = "You are a helpful assistant."
_HEAD = "<|im_start|>system\n" + QWEN_SYSTEM + "<|im_end|>\n<|im_start|>user\n"
_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
QWEN2_VL_PROMPTS: EmbeddingPrompts = {
    "image_template": _HEAD + "{prompt}<image>" + _ASSISTANT,
    "text_template": _HEAD + "{prompt} {caption}" + _ASSISTANT,
    "detail_template": "<|im_end|>\n<|im_start|>user\nDescribe the image in detail." + _ASSISTANT
    + "{long_caption}<|im_end|>",
}  # fmt: skip


def backbone_type(model_name_or_path: str | None, cache_dir: str | None = None) -> str:
    """``llava`` (parts, or a folder / hub id of a LLaVA) or ``qwen2_vl``, from the folder's ``config.json``;
    any other ``model_type`` is refused, naming the folder and the supported types."""
    if not model_name_or_path:
        return "llava"
    config, _ = PretrainedConfig.get_config_dict(model_name_or_path, cache_dir=cache_dir)
    found = config.get("model_type")
    if found not in SUPPORTED_TYPES:
        raise ValueError(
            f"VladVA: {model_name_or_path} holds a model of type {found!r}; the supported types are {SUPPORTED_TYPES}"
        )
    return found


class SquareImages:
    """PIL image → ``{"pixel_values": [1, 3, S, S]}`` (the interface :class:`zoo.llava.ImageTransform` calls): a
    bicubic resize to S×S, then Qwen2-VL's rescale (1/255) and normalisation. Picklable for data workers."""

    def __init__(self, spec: ImageSpec) -> None:
        self.size = int(spec.image_size)
        self.mean = torch.tensor(spec.image_mean).view(3, 1, 1)
        self.std = torch.tensor(spec.image_std).view(3, 1, 1)

    def __call__(self, image: Image.Image, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        image = image.convert("RGB")
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) * (1 / 255)
        return {"pixel_values": ((pixels - self.mean) / self.std)[None]}


def square_size(images: Any, requested: int | None = None) -> int:
    """The square side every image is resized to: ``requested`` (a multiple of patch × merge), else
    :data:`DEFAULT_IMAGE_SIZE` fitted into the processor's pixel range (its ``smart_resize``)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    factor = images.patch_size * images.merge_size
    if requested is not None:
        if requested % factor:
            raise ValueError(f"Qwen2-VL image_size must be a multiple of {factor} (patch × merge), got {requested}")
        return int(requested)
    size = images.size
    low, high = (size["shortest_edge"], size["longest_edge"]) if isinstance(size, dict) else (
        size.shortest_edge, size.longest_edge)  # fmt: skip
    return int(smart_resize(DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, factor, low, high)[0])


def load_qwen2_vl(path: str, cache_dir: str | None = None, image_spec: dict[str, Any] | None = None):
    """``(model, tokenizer, image spec, image transform, image tokens per image)`` of a Qwen2-VL folder / hub id;
    ``image_spec`` (e.g. a checkpoint's) overrides the processor's size and normalisation."""
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(path, cache_dir=cache_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(path, cache_dir=cache_dir)
    images, tokenizer = processor.image_processor, processor.tokenizer
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in (image_spec or {}).items()}
    spec = ImageSpec(
        **{
            "image_size": square_size(images, given.pop("image_size", None)),
            "image_mean": tuple(images.image_mean),
            "image_std": tuple(images.image_std),
            "interpolation": "bicubic",
            "resize_mode": "squash",
            **given,
        }
    )
    vision = model.config.vision_config
    tokens = (spec.image_size // vision.patch_size // vision.spatial_merge_size) ** 2
    return model.train(), tokenizer, spec, SquareImages(spec), tokens


def patchify(pixels: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, 3, H, W]`` → Qwen2-VL's ``pixel_values`` ``[B·gh·gw, 3·T·p·p]`` and ``image_grid_thw`` ``[B, 3]``,
    as ``Qwen2VLImageProcessor.patchify``: merge windows row-major, each window's patches row-major, a patch as
    (channel, temporal copy, row, column) with the frame repeated ``temporal`` times."""
    batch, channels, height, width = pixels.shape
    gh, gw = height // patch, width // patch
    x = pixels.reshape(batch, channels, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # B, gh/m, gw/m, mh, mw, C, ph, pw
    x = x.unsqueeze(6).expand(*x.shape[:6], temporal, patch, patch)
    grid = torch.tensor([[1, gh, gw]] * batch, device=pixels.device)
    return x.reshape(batch * gh * gw, channels * temporal * patch * patch), grid


def image_inputs(model: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened patches and ``image_grid_thw`` of ``[B, 3, S, S]`` images for ``model`` (a Qwen2-VL)."""
    vision = model.config.vision_config
    return patchify(pixels, vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size)


def image_features(model: Any, pixels: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The merger's output ``[B, N, D]`` for ``[B, 3, S, S]`` images (the vision encoder under ``no_grad``
    unless ``grad``) and their ``image_grid_thw``."""
    flat, grid = image_inputs(model, pixels)
    with torch.set_grad_enabled(torch.is_grad_enabled() and grad):
        features = model.model.get_image_features(flat, grid).pooler_output
    return torch.stack(features), grid


def position_ids(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, grid: torch.Tensor | None
) -> torch.Tensor:
    """M-RoPE position ids ``[3, B, L]``: ``get_rope_index`` for image rows, the 1-D positions of the real tokens
    repeated ×3 for text rows (padding never shifts a row)."""
    if grid is None:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[None].expand(3, -1, -1)
    types = (input_ids == model.config.image_token_id).int()
    return model.model.get_rope_index(
        input_ids, mm_token_type_ids=types, image_grid_thw=grid, attention_mask=attention_mask
    )[0]


def prompt_ids(tokenizer: Any, question: str, image_tokens: int, system: str | None = None) -> list[int]:
    """Ids of a one-turn Qwen2-VL prompt as its chat template + processor write it (image first, then the text)."""
    image = IMAGE_SPAN[0] + "<|image_pad|>" * image_tokens + IMAGE_SPAN[1] if image_tokens else ""
    text = f"<|im_start|>system\n{system or QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{image}{question}{_ASSISTANT}"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate(module: Any, images: Any, prompts: list[str] | str, return_ids: bool = False, **kwargs: Any) -> list:
    """:meth:`zoo.LLaVA.generate` for a VladVA on Qwen2-VL: prompts in Qwen's chat format, left padded (a row
    without an image has no image span: Qwen2-VL needs no placeholder image), transformers' ``generate``
    (greedy by default) in eval mode; the answers' ids up to EOS, or their text."""
    from zoo.llava import ImageTransform

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    images = [images] * len(prompts) if images is None or isinstance(images, Image.Image) else list(images)
    model, tokenizer = module.llava, module.tokenizer
    ids = [
        prompt_ids(tokenizer, q, module.image_tokens if image is not None else 0, module.hparams.system_prompt)
        for q, image in zip(prompts, images)
    ]
    width, pad = max(len(row) for row in ids), tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=module.device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=module.device)
    kwargs.setdefault("max_new_tokens", 64)
    kwargs.setdefault("do_sample", False)
    kwargs.setdefault("pad_token_id", pad)
    present = [image for image in images if image is not None]
    if present:
        transform = ImageTransform(module.images)
        pixels = torch.stack([transform(image) for image in present]).to(module.device, module.dtype)
        kwargs["pixel_values"], kwargs["image_grid_thw"] = image_inputs(model, pixels)
    types = (input_ids == model.config.image_token_id).int()
    training = module.training
    module.eval()
    try:
        out = model.generate(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=types, **kwargs)[:, width:]
    finally:
        module.train(training)
    eos = tokenizer.eos_token_id
    rows = [row[: row.index(eos)] if eos in row else row for row in out.tolist()]
    return rows if return_ids else [tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]


def export(module: Any, folder: str | Path, merge_lora: bool = True) -> Path:
    """A plain transformers Qwen2-VL folder (LoRA merged, or kept as ``adapter/`` beside the base) with the base's
    processor, its pixel range fixed at S×S; ``vladva.json`` (written by the caller) records ``image_spec``: squash
    an image to S×S first, as the zoo does, and the processor keeps it whole."""
    from transformers import AutoProcessor

    folder = Path(folder)
    module.save_weights(folder, merge_lora)
    processor = AutoProcessor.from_pretrained(module.hparams.model_name_or_path, cache_dir=module.hparams.cache_dir)
    pixels = module.image_spec.image_size**2
    processor.image_processor.size = {"shortest_edge": pixels, "longest_edge": pixels}
    processor.save_pretrained(folder)
    return folder


def recipe_extras(module: Any) -> dict[str, Any]:
    """What ``vladva.json`` adds on Qwen2-VL: the image preprocessing and the position rule."""
    return {
        "image_spec": dataclasses.asdict(module.image_spec),
        "positions": "M-RoPE: model.model.get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, attention_mask)",
    }
