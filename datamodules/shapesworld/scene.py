"""Scene representation, seeded scene sampling and spatial relations."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .vocabulary import COLORS, GRID_SIZE, RELATIONS, SHAPES, SIZE_EXTENT, SIZES

SPLITS: tuple[str, ...] = ("train", "val", "test")

# Minimum gap (fraction of the image side) kept between an object and its cell border.
CELL_MARGIN = 0.02


def max_offset(size: str) -> float:
    """Largest jitter (fraction of the image side) that keeps an object of this size inside its cell."""
    return (1 / GRID_SIZE - SIZE_EXTENT[size]) / 2 - CELL_MARGIN


@dataclass(frozen=True)
class SceneObject:
    """One shape in a grid cell; ``offset`` is its centre's jitter from the cell centre (fraction of image side)."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in COLORS or self.size not in SIZES:
            raise ValueError(f"unknown attribute in {self}")
        if not (0 <= self.row < GRID_SIZE and 0 <= self.col < GRID_SIZE):
            raise ValueError(f"cell ({self.row}, {self.col}) is outside the {GRID_SIZE}x{GRID_SIZE} grid")
        limit = max_offset(self.size)
        if any(abs(o) > limit for o in self.offset):
            raise ValueError(f"offset {self.offset} would leave the cell (limit {limit:.4f})")

    @property
    def center(self) -> tuple[float, float]:
        """Centre (x, y) as fractions of the image side."""
        return ((self.col + 0.5) / GRID_SIZE + self.offset[0], (self.row + 0.5) / GRID_SIZE + self.offset[1])

    def to_dict(self, image_size: int) -> dict[str, Any]:
        """JSON-ready description; ``bbox`` is [x0, y0, x1, y1] in pixels of an ``image_size`` render."""
        x, y = self.center
        half = SIZE_EXTENT[self.size] / 2
        bbox = [round(v * image_size, 3) for v in (x - half, y - half, x + half, y + half)]
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "row": self.row,
            "col": self.col,
            "offset": list(self.offset),
            "bbox": bbox,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneObject:
        return cls(data["shape"], data["color"], data["size"], data["row"], data["col"], tuple(data["offset"]))


@dataclass(frozen=True)
class Scene:
    """Objects in distinct grid cells with unique (colour, shape) pairs, listed in reading order."""

    objects: tuple[SceneObject, ...]
    image_size: int = 64

    def __post_init__(self) -> None:
        objects = tuple(sorted(self.objects, key=lambda o: (o.row, o.col)))
        object.__setattr__(self, "objects", objects)
        if not objects:
            raise ValueError("a scene needs at least one object")
        if len({(o.row, o.col) for o in objects}) != len(objects):
            raise ValueError("objects must sit in distinct grid cells")
        if len({(o.color, o.shape) for o in objects}) != len(objects):
            raise ValueError("(color, shape) pairs must be unique within a scene")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "objects": [o.to_dict(self.image_size) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(tuple(SceneObject.from_dict(o) for o in data["objects"]), data["image_size"])


def relation_holds(relation: str, a: SceneObject, b: SceneObject) -> bool:
    """Whether ``a <relation> b`` holds, judged on grid cells (row 0 is the top)."""
    if relation == "left_of":
        return a.col < b.col
    if relation == "right_of":
        return a.col > b.col
    if relation == "above":
        return a.row < b.row
    if relation == "below":
        return a.row > b.row
    raise ValueError(f"unknown relation {relation!r}")


def relations_between(a: SceneObject, b: SceneObject) -> list[str]:
    """All relations that hold from ``a`` to ``b``, in ``RELATIONS`` order."""
    return [relation for relation in RELATIONS if relation_holds(relation, a, b)]


def scene_rng(index: int, split: str = "train", seed: int = 0) -> random.Random:
    """The private RNG of one scene, independent of global state and of other indices."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    return random.Random(f"shapesworld/{seed}/{split}/{index}")


def sample_scene(rng: random.Random, image_size: int = 64, max_objects: int = 4) -> Scene:
    """Draw 1..max_objects objects with distinct cells, unique (colour, shape) and seeded jitter."""
    if not 1 <= max_objects <= GRID_SIZE * GRID_SIZE:
        raise ValueError(f"max_objects must be in [1, {GRID_SIZE * GRID_SIZE}], got {max_objects}")
    count = rng.randint(1, max_objects)
    cells = rng.sample(range(GRID_SIZE * GRID_SIZE), count)
    kinds = rng.sample([(color, shape) for color in COLORS for shape in SHAPES], count)
    objects = []
    for cell, (color, shape) in zip(cells, kinds):
        size = rng.choice(SIZES)
        limit = max_offset(size)
        offset = (rng.uniform(-limit, limit), rng.uniform(-limit, limit))
        objects.append(SceneObject(shape, color, size, cell // GRID_SIZE, cell % GRID_SIZE, offset))
    return Scene(tuple(objects), image_size)
