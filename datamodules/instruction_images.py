"""The images of :mod:`datamodules.instruction`'s samples: none, one, or several per record (a LLaVA JSON ``"image"``
list, LLaVA-OneVision's convention: one ``<image>`` tag per image in the human turns, image k spliced at tag k).

A sample's ``pixel_values`` are [3, S, S] for a record with one image (or none: a zero stand-in) and [k, 3, S, S]
for a record with a list of k images; a batch's are all of them in row order, [N_images, 3, S, S], with
``images_per_row`` [B]: transformers' LLaVA fills the placeholders of the whole batch, row by row and left to
right, with the features of the images in that order (``masked_scatter``), so the flat order is the one it needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from zoo.backbones.llava.conversation import InvalidSampleError


def image_count(record: dict[str, Any]) -> int:
    """The images of a record (text only: 0), from its ``image_file``: a list of paths, else one image unless None."""
    files = record.get("image_file")
    return len(files) if isinstance(files, list) else int(files is not None)


def one_image_per_row(sample_id: str, count: int, high_res: Any) -> None:
    """A high-res model (AnyRes / HD) takes one image per row: refuse a sample of several, naming it."""
    if count > 1 and high_res is not None:
        raise InvalidSampleError(
            sample_id,
            f"{count} images in one sample: high_res ({high_res.mode}) takes one image per row; multi-image "
            "records train with LLaVA-1.5 (high_res: null)",
        )


def sample_pixels(transform: Callable, image: Any, image_size: int) -> torch.Tensor:
    """A sample's ``pixel_values``: the image transformed [3, S, S] (``None``: zeros), or for a list of images
    each transformed, stacked [k, 3, S, S]."""
    if image is None:
        return torch.zeros(3, image_size, image_size)
    if isinstance(image, list):
        return torch.stack([transform(one) for one in image])
    return transform(image)


def image_stack(pixels: torch.Tensor) -> torch.Tensor:
    """A sample's ``pixel_values`` as [k, 3, S, S] (one image, or a text-only sample's stand-in: k = 1)."""
    return pixels if pixels.dim() == 4 else pixels[None]


def batch_pixels(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``pixel_values`` [N_images, 3, S, S] (every row's images, in row order) and ``images_per_row`` [B] (a
    text-only row: 1, its zero stand-in); one image per row gives exactly the stacked images [B, 3, S, S]."""
    pixels = [image_stack(s["pixel_values"]) for s in samples]
    return torch.cat(pixels), torch.tensor([len(p) for p in pixels])
