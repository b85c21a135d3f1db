"""Spatial pairs and sets: the same two objects rendered in four arrangements (What'sUp-style).

Scene ``i`` places objects A and B left of / right of / above / below each other (A in the middle row
or column, B across the grid), so each image is described by exactly one of the four captions
"A <relation> B"; left/right and above/below images form pairs, all four a set.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .description import Description, ObjectDescription
from .files import write_atomic
from .render import png_bytes, render_scene
from .scene import Scene, SceneObject
from .vocabulary import COLORS, SHAPES, SIZES

SPATIAL_RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
# (row, col) of A and of B for each relation
PLACEMENTS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "left_of": ((1, 0), (1, 2)),
    "right_of": ((1, 2), (1, 0)),
    "above": ((0, 1), (2, 1)),
    "below": ((2, 1), (0, 1)),
}
SPATIAL_FILE = "spatial.json"


def spatial_set(index: int, split: str = "test", seed: int = 0, image_size: int = 64) -> dict[str, Any]:
    """Set ``index``: ``{"key", "images": {relation: PIL}, "captions": {relation: "A <relation> B"},
    "swapped": {relation: "B <relation> A"}}``."""
    rng = random.Random(f"shapesworld-spatial/{seed}/{split}/{index}")
    (shape_a, color_a), (shape_b, color_b) = rng.sample([(s, c) for s in SHAPES for c in COLORS], 2)
    size_a, size_b = rng.choice(SIZES), rng.choice(SIZES)
    images, captions, swapped = {}, {}, {}
    for relation, ((row_a, col_a), (row_b, col_b)) in PLACEMENTS.items():
        a = SceneObject(shape_a, color_a, size_a, row_a, col_a)
        b = SceneObject(shape_b, color_b, size_b, row_b, col_b)
        images[relation] = render_scene(Scene((a, b), image_size))
        captions[relation] = Description(ObjectDescription.of(a), relation, ObjectDescription.of(b)).text()
        swapped[relation] = Description(ObjectDescription.of(b), relation, ObjectDescription.of(a)).text()
    return {"key": f"{split}-spatial-{index:08d}", "images": images, "captions": captions, "swapped": swapped}


def write_spatial_benchmark(
    out_dir: str | os.PathLike, n: int = 100, split: str = "test", seed: int = 0, image_size: int = 64
) -> Path:
    """Write ``out_dir/images/<key>_<relation>.png`` and ``out_dir/spatial.json``: a list of
    ``{"key", "images": {relation: path relative to the JSON}, "captions": {...}, "swapped": {...}}``."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in tqdm(range(n), desc=f"shapesworld {split} spatial sets", unit="set", disable=None):
        sample = spatial_set(index, split, seed, image_size)
        paths = {}
        for relation, image in sample["images"].items():
            paths[relation] = f"images/{sample['key']}_{relation}.png"
            write_atomic(out / paths[relation], png_bytes(image))
        records.append(
            {"key": sample["key"], "images": paths, "captions": sample["captions"], "swapped": sample["swapped"]}
        )
    path = out / SPATIAL_FILE
    write_atomic(path, json.dumps(records, indent=1).encode("utf-8"))
    return path
