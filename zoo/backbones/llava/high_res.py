"""LLaVA-NeXT AnyRes and LLaVA-1.5-HD wired to a model: the settings (:class:`HighRes`), the image transform
(views + image size), the per-image visual-token count every part uses (the data's placeholder expansion, the
model's check, the ``max_visual_tokens`` guard), the expansion of a sample's one placeholder, and the
transformers ``LlavaNextForConditionalGeneration`` the model lives in.

The geometry itself is :mod:`zoo.backbones.llava.anyres`; image sizes are (height, width) everywhere.

How ``pinpoint_order`` is stored: :attr:`HighRes.pinpoints` keeps the pairs as configured (read with
``pinpoint_order``); the transformers config always gets the candidate canvases as (height, width)
(:attr:`HighRes.canvases`), i.e. for ``"wh"`` each pair swapped: transformers then chooses the same grids as the
original code. Its unpad still rounds as transformers does, so only ``"hw"`` + ``spatial_unpad`` with the global
view and the newline is transformers' own layout (:meth:`HighRes.expressible_in_transformers`); the zoo computes the
merged features itself in every mode and hands them to the model as ``mm_encoder_outputs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from zoo.backbones.llava import anyres
from zoo.backbones.llava.clip_vision import ImageSpec
from zoo.backbones.llava.conversation import InvalidSampleError
from zoo.losses import IGNORE_INDEX

Mode = Literal["anyres", "hd"]
MODES = ("anyres", "hd")
MERGES = ("flat", "spatial", "spatial_unpad")


class VisualTokenBudgetError(InvalidSampleError):
    """A sample whose image needs more visual tokens than ``max_visual_tokens`` (never truncated silently)."""

    def __init__(self, sample_id: str, image_hw: Sequence[int], tokens: int, budget: int) -> None:
        super().__init__(
            sample_id,
            f"image of (h, w) = {tuple(image_hw)} needs {tokens} visual tokens, over max_visual_tokens {budget}",
        )
        self.image_hw, self.tokens, self.budget = tuple(image_hw), tokens, budget


@dataclasses.dataclass(frozen=True)
class HighRes:
    """High-resolution input of a LLaVA (resolved: every field set; build with :meth:`from_options`).

    Args:
        mode: ``anyres`` (LLaVA-NeXT: the canvas chosen per image from ``pinpoints``) or ``hd`` (LLaVA-1.5-HD: one
            fixed ``grid`` of native tiles).
        tile, patch: the vision tower's input size and patch size (tokens per tile side: tile // patch).
        pinpoints: candidate canvases, each pair read with ``pinpoint_order``.
        grid: HD's (rows, cols); None for anyres.
        merge: ``spatial_unpad`` (anyres default), ``spatial`` (HD default) or ``flat``.
        pinpoint_order: ``hw`` (transformers, default) or ``wh`` (the original LLaVA-NeXT code).
        global_view: the whole image squashed to one tile, first (HD: ``global_context``).
        newline: the learned ``image_newline`` after each row (``spatial_unpad`` only; default there).
        max_visual_tokens: the most visual tokens one image may take (a sample over it is a named error).
    """

    mode: Mode
    tile: int
    patch: int
    pinpoints: tuple[tuple[int, int], ...]
    grid: tuple[int, int] | None = None
    merge: anyres.Merge = "spatial_unpad"
    pinpoint_order: anyres.Convention = "hw"
    global_view: bool = True
    newline: bool = True
    max_visual_tokens: int | None = None

    @classmethod
    def from_options(
        cls, options: dict[str, Any], tile: int, patch: int, config_canvases: Sequence[Sequence[int]] | None = None
    ) -> HighRes:
        """Validated settings from a config's ``high_res:`` dict; ``config_canvases``: a loaded LLaVA-NeXT's
        ``image_grid_pinpoints`` (the anyres default when ``pinpoints`` is not given)."""
        options = dict(options)
        if "global_context" in options:  # LLaVA-1.5-HD's name for the global view
            options["global_view"] = options.pop("global_context")
        for fixed in ("tile", "patch"):
            given = options.pop(fixed, None)
            if given is not None and int(given) != {"tile": tile, "patch": patch}[fixed]:
                raise ValueError(f"high_res.{fixed} {given} differs from the vision tower's {fixed} {tile, patch}")
        known = {f.name for f in dataclasses.fields(cls)} - {"tile", "patch"}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"high_res: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        mode = options.get("mode", "anyres")
        if mode not in MODES:
            raise ValueError(f"high_res.mode must be one of {MODES}, not {mode!r}")
        order = options.get("pinpoint_order", "hw")
        if order not in ("hw", "wh"):
            raise ValueError(f"high_res.pinpoint_order must be 'hw' or 'wh', not {order!r}")
        merge = options.get("merge") or ("spatial_unpad" if mode == "anyres" else "spatial")
        if merge not in MERGES:
            raise ValueError(f"high_res.merge must be one of {MERGES}, not {merge!r}")
        newline = options.get("newline")
        newline = merge == "spatial_unpad" if newline is None else bool(newline)
        if newline and merge != "spatial_unpad":
            raise ValueError(f"high_res.newline goes with merge spatial_unpad only, not {merge!r}")
        grid, pinpoints = options.get("grid"), options.get("pinpoints")
        if mode == "hd":
            if pinpoints is not None:
                raise ValueError("high_res mode hd takes a fixed grid (rows, cols), not pinpoints")
            grid = tuple(int(side) for side in (grid or (2, 2)))
            if len(grid) != 2:
                raise ValueError(f"high_res.grid must be (rows, cols), not {grid}")
            pinpoints = anyres.hd_pinpoints(grid, tile)
            pinpoints = pinpoints if order == "hw" else [pair[::-1] for pair in pinpoints]
        else:
            if grid is not None:
                raise ValueError("high_res.grid is for mode hd; anyres chooses the grid from pinpoints")
            if pinpoints is None and config_canvases is not None:  # the loaded model's (stored as (h, w))
                pinpoints = [list(pair) if order == "hw" else list(pair)[::-1] for pair in config_canvases]
            pinpoints = anyres.scaled_pinpoints(tile) if pinpoints is None else pinpoints
        pinpoints = tuple(tuple(int(side) for side in pair) for pair in pinpoints)
        for canvas in anyres.canvases(pinpoints, order):
            if canvas[0] % tile or canvas[1] % tile:
                raise ValueError(f"high_res pinpoint canvas {canvas} (h, w) is not a grid of {tile} px tiles")
        budget = options.get("max_visual_tokens")
        if budget is not None and int(budget) < 1:
            raise ValueError(f"high_res.max_visual_tokens must be positive, not {budget}")
        if tile % patch:
            raise ValueError(f"the tower's image size {tile} is not a multiple of its patch {patch}")
        return cls(
            mode, int(tile), int(patch), pinpoints, grid, merge, order, bool(options.get("global_view", True)),
            newline, None if budget is None else int(budget),
        )  # fmt: skip

    def options(self) -> dict[str, Any]:
        """The settings as a ``high_res:`` dict (what checkpoints keep: :meth:`from_options` gives them back)."""
        out = dataclasses.asdict(self)
        out["pinpoints"] = None if self.mode == "hd" else [list(pair) for pair in self.pinpoints]
        out["grid"] = None if self.grid is None else list(self.grid)
        return out

    @property
    def canvases(self) -> list[list[int]]:
        """The candidate canvases as (height, width): transformers' ``image_grid_pinpoints``."""
        return [list(canvas) for canvas in anyres.canvases(self.pinpoints, self.pinpoint_order)]

    def grid_of(self, image_hw: Sequence[int]) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of ``image_hw``."""
        return anyres.grid_shape(image_hw, self.pinpoints, self.tile, self.pinpoint_order)

    def views_of(self, image_hw: Sequence[int]) -> int:
        """How many tower inputs (tiles, plus the global view) an image of ``image_hw`` becomes."""
        rows, cols = self.grid_of(image_hw)
        return rows * cols + int(self.global_view)

    def tokens(self, image_hw: Sequence[int]) -> int:
        """THE visual-token count of an image of ``image_hw`` (``anyres.visual_token_count``): the data expands
        its placeholder to it, the model checks it, ``max_visual_tokens`` bounds it."""
        return anyres.visual_token_count(
            image_hw, self.pinpoints, self.tile, self.patch, self.merge, self.pinpoint_order, self.global_view,
            self.newline,
        )  # fmt: skip

    def check_budget(self, sample_id: str, image_hw: Sequence[int]) -> int:
        """The image's token count; :class:`VisualTokenBudgetError` over ``max_visual_tokens``."""
        count = self.tokens(image_hw)
        if self.max_visual_tokens is not None and count > self.max_visual_tokens:
            raise VisualTokenBudgetError(sample_id, image_hw, count, self.max_visual_tokens)
        return count

    def merge_features(self, features: torch.Tensor, image_hw: Sequence[int], newline: torch.Tensor | None):
        """One image's visual sequence [tokens, D] from its views' projected features [views, t, D]."""
        return anyres.merge_tile_features(
            features, image_hw, self.grid_of(image_hw), self.merge, newline if self.newline else None,
            self.pinpoint_order, self.global_view,
        )  # fmt: skip

    def expressible_in_transformers(self) -> str | None:
        """None when a LLaVA-NeXT export reproduces the zoo's features, else why not."""
        if self.merge != "spatial_unpad" or not self.newline or not self.global_view:
            return (
                f"LlavaNextForConditionalGeneration always merges spatial_unpad with the global view first and a "
                f"newline per row; this model merges {self.merge!r} (newline {self.newline}, global view "
                f"{self.global_view}){' (LLaVA-1.5-HD)' if self.mode == 'hd' else ''}"
            )
        return None


class HighResTransform:
    """PIL image → ``{"pixel_values": [views, 3, T, T], "image_size": (h, w)}``: :func:`anyres.anyres_views`
    (black padding, squashed global view first), each view rescaled and normalised as the CLIP processor does
    (picklable for DataLoader workers)."""

    def __init__(self, high_res: HighRes, spec: ImageSpec) -> None:
        self.high_res = high_res
        self.mean = np.asarray(spec.image_mean, dtype=np.float32)
        self.std = np.asarray(spec.image_std, dtype=np.float32)
        self.resample = Image.Resampling.BICUBIC if spec.interpolation == "bicubic" else Image.Resampling.BILINEAR

    def __call__(self, image: Image.Image) -> dict[str, Any]:
        image = image.convert("RGB")
        hr = self.high_res
        views = anyres.anyres_views(image, hr.pinpoints, hr.tile, hr.pinpoint_order, hr.global_view, self.resample)
        arrays = [(np.asarray(v, dtype=np.float32) / np.float32(255.0) - self.mean) / self.std for v in views]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return {"pixel_values": pixels, "image_size": (image.height, image.width)}


def expand_image_span(
    sample_id: str,
    input_ids: list[int],
    labels: list[int],
    image_id: int,
    count: int,
    max_length: int | None,
) -> tuple[list[int], list[int]]:
    """A sample tokenised with ONE ``image_id`` placeholder, expanded to ``count`` (labels −100), then cut to
    ``max_length``: never inside the image span (an :class:`InvalidSampleError` naming the sample), and never to
    a sample with no supervised token left."""
    found = input_ids.count(image_id)
    if found != 1:
        raise InvalidSampleError(sample_id, f"{found} image placeholders before expansion, expected 1")
    at = input_ids.index(image_id)
    ids = input_ids[:at] + [image_id] * count + input_ids[at + 1 :]
    labels = labels[:at] + [IGNORE_INDEX] * count + labels[at + 1 :]
    if max_length is not None and len(ids) > max_length:
        if max_length < at + count:
            raise InvalidSampleError(
                sample_id,
                f"max_length {max_length} cuts into the image span (its {count} visual tokens end at {at + count}; "
                f"the sample has {len(ids)} tokens)",
            )
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise InvalidSampleError(sample_id, f"no supervised token left ({len(ids)} tokens, max_length {max_length})")
    return ids, labels


def describe_out_of_memory(batch: dict[str, Any], batch_idx: int, visual: torch.Tensor, error: Exception) -> str:
    """The message of an out-of-memory error in a training step: the batch's sample ids with their token counts
    (all, visual) and image sizes."""
    total = batch["attention_mask"].sum(1).tolist()
    keys = batch.get("key") or [str(i) for i in range(len(total))]
    if "samples_per_row" in batch:  # packed rows (datamodules.packing): each row's samples together
        ends = torch.as_tensor(batch["samples_per_row"]).cumsum(0).tolist()
        keys = ["+".join(map(str, keys[end - n : end])) for n, end in zip(batch["samples_per_row"].tolist(), ends)]
    sizes = batch["image_sizes"].tolist() if "image_sizes" in batch else None
    rows = [
        f"{key}: {count} tokens, {seen} visual" + (f", image (h, w) {tuple(sizes[i])}" if sizes else "")
        for i, (key, count, seen) in enumerate(zip(keys, total, visual.tolist()))
    ]
    return (
        f"out of memory in the training step of batch {batch_idx} ({len(rows)} samples, padded to "
        f"{batch['input_ids'].shape[1]} tokens): " + "; ".join(rows) + f". Original error: {error}"
    )
