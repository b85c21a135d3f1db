"""VladVA over a LLaVA-NeXT AnyRes / LLaVA-1.5-HD backbone (``high_res``): images whose visual-token count depends
on their size, so image sequences differ in length and are padded (and summarised) per row, as text sequences are.

An image goes through :class:`HighResImageTransform` to a one-image :class:`HighResImages`: its views, its size
and its count (:meth:`~zoo.backbones.llava.high_res.HighRes.tokens`, the one count every part uses). A batch of
them (the caption collator's ``type(image).collate``, or DataLoader's default collate) is one
:class:`HighResImages`: ``pixel_values`` [N, 3, T, T] (every image's views, image after image), ``image_sizes``
[B, 2] (h, w), ``tiles_per_image`` [B], ``image_tokens`` [B]. The towers take ``pixel_values`` + ``image_sizes``
(:meth:`zoo.LLaVA.visual_features` merges each image's views and checks each row's slots), the sequences
``image_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from zoo.backbones.llava.clip_vision import ImageSpec
from zoo.backbones.llava.high_res import HighRes, HighResTransform

KEYS = ("pixel_values", "image_sizes", "tiles_per_image", "image_tokens")


class HighResImages(dict):
    """High-res images, one or a batch (see the module docstring). A ``dict``, so DataLoader's default collate,
    ``pin_memory`` and Lightning's device transfer keep its type; :meth:`collate` batches images of any sizes
    (the default collate stacks, so needs images of one size: :meth:`flat` reads that layout back), :meth:`to`
    moves it (a dtype applies to the pixels only)."""

    @classmethod
    def of(cls, views: dict[str, Any], high_res: HighRes) -> HighResImages:
        """One image from :class:`~zoo.backbones.llava.high_res.HighResTransform`'s views and size."""
        size, pixels = tuple(int(side) for side in views["image_size"]), views["pixel_values"]
        return cls(
            pixel_values=pixels,
            image_sizes=torch.tensor([size]),
            tiles_per_image=torch.tensor([len(pixels)]),
            image_tokens=torch.tensor([high_res.tokens(size)]),
        )

    @classmethod
    def collate(cls, images: Sequence[HighResImages]) -> HighResImages:
        """One batch of images (or batches), in order: views concatenated, sizes and counts stacked."""
        parts = [image.flat() for image in images]
        return cls({key: torch.cat([part[key] for part in parts]) for key in KEYS})

    def flat(self) -> HighResImages:
        """The flat layout: DataLoader's default collate stacks one-image items to [B, V, 3, T, T] and [B, 1, ...]."""
        pixels = self["pixel_values"]
        return type(self)(
            pixel_values=pixels.flatten(0, 1) if pixels.ndim == 5 else pixels,
            image_sizes=self["image_sizes"].reshape(-1, 2),
            tiles_per_image=self["tiles_per_image"].reshape(-1),
            image_tokens=self["image_tokens"].reshape(-1),
        )

    def to(self, device: Any = None, dtype: torch.dtype | None = None, **kwargs: Any) -> HighResImages:
        moved = {key: value if device is None else value.to(device, **kwargs) for key, value in self.items()}
        moved["pixel_values"] = moved["pixel_values"].to(dtype=dtype) if dtype is not None else moved["pixel_values"]
        return type(self)(moved)

    @property
    def counts(self) -> list[int]:
        """Each image's visual-token count."""
        return self["image_tokens"].reshape(-1).tolist()

    def __len__(self) -> int:  # images, not keys (the dict's own length is never what a caller means)
        return len(self["image_sizes"].reshape(-1, 2))


class HighResImageTransform(HighResTransform):
    """PIL image → a one-image :class:`HighResImages` (picklable for DataLoader workers)."""

    def __call__(self, image: Image.Image) -> HighResImages:  # type: ignore[override]
        return HighResImages.of(super().__call__(image), self.high_res)


def image_inputs(high_res: HighRes, spec: ImageSpec, images: Any) -> HighResImages:
    """The flat :class:`HighResImages` of a PIL image, a list of them, or already transformed images (one or
    a batch, or a list of them); a plain tensor is refused: its size, and so its count, is lost."""
    if isinstance(images, HighResImages):
        return images.flat()
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, torch.Tensor) or isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(
            "a high-res VladVA embeds PIL images (or the HighResImages its transform gives): a pixel tensor has "
            f"lost the image's size and so its visual-token count; got {type(images).__name__}"
        )
    if not images:
        raise TypeError("no images to embed")
    transform = HighResImageTransform(high_res, spec)
    return HighResImages.collate([image if isinstance(image, HighResImages) else transform(image) for image in images])


def required_sizes(image_sizes: torch.Tensor | None) -> torch.Tensor:
    """``image_sizes``, which a high-res tower needs beside the views (a named error without them)."""
    if image_sizes is None:
        raise ValueError("a high-res VladVA needs image_sizes [B, 2] (h, w) beside the views in pixel_values")
    return image_sizes
