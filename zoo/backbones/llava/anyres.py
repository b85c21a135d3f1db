"""The geometry of LLaVA-NeXT AnyRes and LLaVA-1.5-HD, with no model attached: canvas choice, resize-and-pad,
tiling, the global view, unpadding, the merge of tile features into one visual sequence, and its token count.

Image sizes passed to every public function are **(height, width)**, whatever the convention; a PIL image's
``.size`` is (width, height), so pass ``image.size[::-1]``. Canvases and grids come back as (height, width) and
(rows, cols). The two conventions differ only in how a pinpoint pair is read and how unpad rounds:

- ``"hw"`` (transformers' ``LlavaNext*``): pinpoint ``[a, b]`` is a canvas a px high and b px wide; unpad keeps
  ``int(round(x, 7))`` rows or columns (``modeling_llava_next.unpad_image``).
- ``"wh"`` (the original LLaVA / LLaVA-NeXT code, ``llava/mm_utils.py`` and ``llava_arch.unpad_image``):
  pinpoint ``[a, b]`` is a canvas a px wide and b px high (each pair swapped relative to "hw"); unpad
  truncates with ``int(x)``.

The same numeric pinpoint list therefore gives different grids where candidates tie (all images with both sides
≤ one tile: "hw" picks 1 row × 2 cols, "wh" 2 rows × 1 col), and odd cell counts or float products that land
just under an integer make the unpadded maps differ.

LLaVA-1.5-HD is one fixed canvas (:func:`hd_pinpoints`) with merge ``"spatial"`` (no unpad, no newline), the
global view first (or ``global_view=False`` for the tiles-only ablation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from PIL import Image

Convention = Literal["hw", "wh"]
Merge = Literal["flat", "spatial", "spatial_unpad"]
Pinpoints = Sequence[Sequence[int]]

DEFAULT_TILE = 336
# llava-v1.6 configs and transformers' LlavaNextConfig / LlavaNextImageProcessor default (grids 1×2, 2×1, 2×2,
# 1×3, 3×1 in "hw"; transposed in "wh")
DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def scaled_pinpoints(tile: int, pinpoints: Pinpoints = DEFAULT_PINPOINTS, base: int = DEFAULT_TILE) -> list[list[int]]:
    """``pinpoints`` (multiples of ``base``) for tiles of ``tile`` px: 42 → [[42, 84], [84, 42], ...]."""
    out = []
    for pair in pinpoints:
        if any(side % base for side in pair):
            raise ValueError(f"pinpoint {list(pair)} is not a multiple of the base tile {base}")
        out.append([side // base * tile for side in pair])
    return out


def hd_pinpoints(grid: tuple[int, int] = (2, 2), tile: int = DEFAULT_TILE) -> list[list[int]]:
    """LLaVA-1.5-HD's single fixed canvas: ``[[rows·tile, cols·tile]]``, read with order "hw" (a square grid
    reads the same in both conventions). Use with merge "spatial"."""
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise ValueError(f"grid {grid} needs at least one row and one column")
    return [[rows * tile, cols * tile]]


def canvases(pinpoints: Pinpoints, order: Convention = "hw") -> list[tuple[int, int]]:
    """The candidate canvases as (height, width), in list order (``order`` says how a pair is read)."""
    if order not in ("hw", "wh"):
        raise ValueError(f"order must be 'hw' or 'wh', not {order!r}")
    out = []
    for pair in pinpoints:
        if len(pair) != 2 or min(pair) < 1:
            raise ValueError(f"a pinpoint is two positive sizes, not {pair!r}")
        a, b = (int(side) for side in pair)
        out.append((a, b) if order == "hw" else (b, a))
    if not out:
        raise ValueError("no pinpoints")
    return out


def select_canvas(image_hw: Sequence[int], pinpoints: Pinpoints, order: Convention = "hw") -> tuple[int, int]:
    """The canvas (height, width) for an image of ``image_hw`` (``select_best_resolution`` in both libraries):
    the largest effective resolution ``min(int(w·s)·int(h·s), w·h)`` with ``s = min(cw/w, ch/h)``, then the
    least waste ``cw·ch − effective``, then the first in list order."""
    height, width = (int(side) for side in image_hw)
    best, best_effective, best_waste = None, 0, math.inf
    for canvas_h, canvas_w in canvases(pinpoints, order):
        scale = min(canvas_w / width, canvas_h / height)  # the same float operations as both libraries
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = canvas_w * canvas_h - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (canvas_h, canvas_w), effective, waste
    if best is None:
        raise ValueError(f"no canvas fits an image of (h, w) = {tuple(image_hw)}")
    return best


def grid_shape(image_hw: Sequence[int], pinpoints: Pinpoints, tile: int, order: Convention = "hw") -> tuple[int, int]:
    """(rows, cols) of tiles for the selected canvas (``get_anyres_image_grid_shape``; transformers' returns
    (rows, cols), the original code's (cols, rows))."""
    canvas_h, canvas_w = select_canvas(image_hw, pinpoints, order)
    return canvas_h // tile, canvas_w // tile


def fit_size(image_hw: Sequence[int], canvas_hw: Sequence[int]) -> tuple[int, int]:
    """The resized (height, width) inside the canvas: the binding side exactly, the other
    ``min(ceil(side·scale), target)`` (``resize_and_pad_image`` / ``get_patch_output_size``)."""
    (height, width), (target_h, target_w) = image_hw, canvas_hw
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def resize_and_pad(
    image: Image.Image, canvas_hw: Sequence[int], resample: int = Image.Resampling.BICUBIC
) -> Image.Image:
    """``image`` resized to :func:`fit_size` (PIL bicubic, as both the original code and transformers'
    ``LlavaNextImageProcessorPil``; the default torchvision ``LlavaNextImageProcessor`` differs by a few grey
    levels) and centred on a black canvas (offsets floor((target − new)/2))."""
    target_h, target_w = (int(side) for side in canvas_hw)
    new_h, new_w = fit_size(image.size[::-1], (target_h, target_w))
    canvas = Image.new(image.mode, (target_w, target_h))  # zeros: black
    canvas.paste(image.resize((new_w, new_h), resample), ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_into_tiles(image: Image.Image, tile: int) -> list[Image.Image]:
    """Square ``tile`` px crops, row-major (``divide_to_patches``)."""
    width, height = image.size
    return [image.crop((x, y, x + tile, y + tile)) for y in range(0, height, tile) for x in range(0, width, tile)]


def anyres_views(
    image: Image.Image,
    pinpoints: Pinpoints,
    tile: int,
    order: Convention = "hw",
    global_view: bool = True,
    resample: int = Image.Resampling.BICUBIC,
) -> list[Image.Image]:
    """The crops the tower sees (``process_anyres_image``): [global view, tiles row-major...]; the global view is
    the whole image squashed to tile × tile (no aspect ratio kept, no padding), dropped with ``global_view=False``.
    Pass an RGB image (both libraries convert before this step)."""
    canvas = resize_and_pad(image, select_canvas(image.size[::-1], pinpoints, order), resample)
    tiles = divide_into_tiles(canvas, tile)
    return ([image.resize((tile, tile), resample)] if global_view else []) + tiles


def unpadded_shape(shape_hw: Sequence[int], image_hw: Sequence[int], order: Convention = "hw") -> tuple[int, int]:
    """The (rows, cols) :func:`unpad` keeps of a (rows, cols) feature map for an image of ``image_hw``: the
    padded side loses ``(current − new) // 2`` at each end, so it keeps ``new`` or ``new + 1``."""
    current_h, current_w = (int(side) for side in shape_hw)
    height, width = (int(side) for side in image_hw)
    if order not in ("hw", "wh"):
        raise ValueError(f"order must be 'hw' or 'wh', not {order!r}")

    def kept(value: float) -> int:  # transformers rounds to 7 places first; the original truncates
        return int(round(value, 7)) if order == "hw" else int(value)

    if width / height > current_w / current_h:  # padding went top and bottom
        padding = (current_h - kept(height * (current_w / width))) // 2
        return current_h - 2 * padding, current_w
    padding = (current_w - kept(width * (current_h / height))) // 2
    return current_h, current_w - 2 * padding


def unpad(features: torch.Tensor, image_hw: Sequence[int], order: Convention = "hw") -> torch.Tensor:
    """Drop the padding rows or columns of a [D, H, W] feature map (``unpad_image``, the convention's rounding)."""
    current_h, current_w = features.shape[1:]
    new_h, new_w = unpadded_shape((current_h, current_w), image_hw, order)
    top, left = (current_h - new_h) // 2, (current_w - new_w) // 2
    return features[:, top : top + new_h, left : left + new_w]


def cells_per_side(tokens: int) -> int:
    """The side of a square per-tile token map of ``tokens`` tokens."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{tokens} tokens per tile is not a square map (a CLS token left in?)")
    return side


def stitch(tiles: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[rows·cols, h·w, D] tile features (row-major tiles) → one [D, rows·h, cols·w] map: element (r, c) is
    tile (r // h)·cols + c // w's cell (r % h, c % w) (order: tile-row, cell-row, tile-col, cell-col)."""
    rows, cols = grid
    count, tokens, dim = tiles.shape
    if count != rows * cols:
        raise ValueError(f"{count} tile features for a {rows}×{cols} grid")
    side = cells_per_side(tokens)
    grid_map = tiles.view(rows, cols, side, side, dim).permute(4, 0, 2, 1, 3)
    return grid_map.reshape(dim, rows * side, cols * side)


def merge_tile_features(
    features: torch.Tensor,
    image_hw: Sequence[int],
    grid: tuple[int, int],
    merge: Merge = "spatial_unpad",
    newline: torch.Tensor | None = None,
    order: Convention = "hw",
    global_view: bool = True,
) -> torch.Tensor:
    """One image's visual sequence [tokens, D] from its crops' features ``[1 + n or n, h·w, D]`` (global first
    when ``global_view``), the merges of ``llava_arch.prepare_inputs_labels_for_multimodal``:

    - ``flat``: every crop's tokens in turn, global first;
    - ``spatial``: the global tokens, then the :func:`stitch`ed map read row-major (LLaVA-1.5-HD);
    - ``spatial_unpad``: the global tokens, then the stitched map :func:`unpad`ded, with ``newline`` (D,) after
      each row when given (LLaVA-NeXT; transformers' ``pack_image_features``).
    ``newline`` is used by ``spatial_unpad`` only.
    """
    if features.dim() != 3:
        raise ValueError(f"features are [crops, tokens, D], got shape {tuple(features.shape)}")
    if merge not in ("flat", "spatial", "spatial_unpad"):
        raise ValueError(f"merge must be flat, spatial or spatial_unpad, not {merge!r}")
    expected = grid[0] * grid[1] + int(global_view)
    if features.shape[0] != expected:
        raise ValueError(f"{features.shape[0]} crops, expected {expected} for grid {grid}, global_view={global_view}")
    if merge == "flat":
        return features.reshape(-1, features.shape[-1])
    head, tiles = (features[0], features[1:]) if global_view else (features[:0].flatten(0, 1), features)
    grid_map = stitch(tiles, grid)  # [D, H, W]
    if merge == "spatial_unpad":
        grid_map = unpad(grid_map, image_hw, order)
        if newline is not None:
            column = newline.to(grid_map)[:, None, None].expand(-1, grid_map.shape[1], 1)
            grid_map = torch.cat((grid_map, column), dim=-1)
    return torch.cat((head, grid_map.flatten(1, 2).transpose(0, 1)), dim=0)


def visual_token_count(
    image_hw: Sequence[int],
    pinpoints: Pinpoints,
    tile: int,
    patch: int,
    merge: Merge = "spatial_unpad",
    order: Convention = "hw",
    global_view: bool = True,
    newline: bool = True,
) -> int:
    """The length of :func:`merge_tile_features`' output for an image of ``image_hw`` (no tensors built); with
    ``newline`` whether ``spatial_unpad`` gets a newline vector. For "hw" and spatial_unpad this is
    ``LlavaNextProcessor``'s number of ``<image>`` tokens."""
    if tile % patch:
        raise ValueError(f"tile {tile} is not a multiple of the patch {patch}")
    side = tile // patch
    rows, cols = grid_shape(image_hw, pinpoints, tile, order)
    head = side * side if global_view else 0
    if merge in ("flat", "spatial"):
        return head + rows * cols * side * side
    if merge != "spatial_unpad":
        raise ValueError(f"merge must be flat, spatial or spatial_unpad, not {merge!r}")
    kept_h, kept_w = unpadded_shape((rows * side, cols * side), image_hw, order)
    return head + kept_h * (kept_w + int(newline))
