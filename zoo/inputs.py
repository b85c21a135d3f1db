"""What users have, turned into what encoders take: PIL images or tensors → an image batch, strings →
a list of strings. Shared by every method's public ``encode_*`` API."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image

Images = torch.Tensor | Image.Image | Sequence[Image.Image | torch.Tensor]
Texts = str | Sequence[str] | torch.Tensor


def image_batch(images: Images, transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """``[B, 3, H, W]`` from a batch tensor, one image tensor ``[3, H, W]``, a PIL image, or a list of
    PIL images and / or image tensors; PIL images go through ``transform`` (the model's eval transform),
    tensors are taken as already transformed."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            return images.unsqueeze(0)
        if images.ndim == 4:
            return images
        raise ValueError(f"an image tensor must be [3, H, W] or [B, 3, H, W], got shape {tuple(images.shape)}")
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or not images:
        raise TypeError(
            f"images must be a PIL image, a tensor or a non-empty list of them, got {_describe(images)}"
        )
    views = []
    for i, image in enumerate(images):
        if isinstance(image, Image.Image):
            views.append(transform(image.convert("RGB")))
        elif isinstance(image, torch.Tensor) and image.ndim == 3:
            views.append(image)
        else:
            raise TypeError(f"image {i} must be a PIL image or a [3, H, W] tensor, got {_describe(image)}")
    return torch.stack(views)


def text_list(texts: Texts) -> list[str] | torch.Tensor:
    """A list of strings from one string or a sequence of them; token ids (a tensor) pass through."""
    if isinstance(texts, torch.Tensor):
        return texts
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, Sequence) and texts and all(isinstance(text, str) for text in texts):
        return list(texts)
    raise TypeError(f"texts must be a string, a non-empty list of strings or token ids, got {_describe(texts)}")


def _describe(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"{type(value).__name__} of {', '.join(kinds) or 'nothing'}"
    return type(value).__name__
