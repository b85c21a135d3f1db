"""The ``small_objects`` layout: a few small shapes with distinct colours on a wide canvas, where resolution matters.

A scene is 4-8 shapes (``SmallObjectsLayout.objects``) of distinct colours, each 5-8 % of the canvas height across
(6-10 px on the default 128 x 256 canvas), centred on distinct points of a lattice whose pitch is twice the largest
extent, so objects never overlap and keep at least one object's width between them. Relations are judged on
lattice cells as in the grid layout (objects in one lattice column share their x, so "left of" is exact), which
lets ``relation_holds``, ``relations_between``, ``caption_descriptions`` and ``is_true`` work on these scenes
unchanged. Scaled to a 64 px square, as LLaVA-1.5's tower sees it, a shape is 2-3 px; in 64 px tiles of the
native image (AnyRes) it keeps its 6-10 px.

Scene ``index`` of a split has its own RNG (``small_objects_rng``), independent of the grid layout's, so adding
this layout changed no grid scene.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .captions import object_name
from .description import ObjectDescription
from .qa import _count_questions, _exists_questions, _qa, _relation_questions
from .render import render_shapes
from .scene import scene_rng
from .vocabulary import COLORS, NUMBER_WORDS, SHAPES

LAYOUT_NAME = "small_objects"
SIZE = "small"  # every object is "small" in descriptions ("a small red circle")


@dataclass(frozen=True)
class SmallObjectsLayout:
    """Canvas ``(height, width)`` in pixels, object count range ``(min, max)`` and object extent range (diameter
    of the shape's bounding circle, as a fraction of the canvas height)."""

    canvas: tuple[int, int] = (128, 256)
    objects: tuple[int, int] = (4, 8)
    object_size: tuple[float, float] = (0.05, 0.08)

    def __post_init__(self) -> None:
        for name in ("canvas", "objects", "object_size"):
            value = tuple(getattr(self, name))
            if len(value) != 2:
                raise ValueError(f"{name} must be a pair, got {value}")
            object.__setattr__(self, name, value)
        height, width = self.canvas
        if min(height, width) < 1 or int(height) != height or int(width) != width:
            raise ValueError(f"canvas must be two positive integers (height, width), got {self.canvas}")
        low, high = self.objects
        if not 1 <= low <= high <= len(COLORS):
            raise ValueError(f"objects must be 1 <= min <= max <= {len(COLORS)} (distinct colours), got {self.objects}")
        small, large = self.object_size
        if not 0 < small <= large:
            raise ValueError(f"object_size must be 0 < min <= max, got {self.object_size}")
        rows, cols = self.lattice
        if rows * cols < high:
            raise ValueError(
                f"a {height}x{width} canvas holds only {rows * cols} objects of extent {large} x height, not {high}"
            )

    @property
    def lattice(self) -> tuple[int, int]:
        """Rows and columns of the lattice the object centres sit on (pitch: twice the largest extent)."""
        pitch = 2 * self.object_size[1] * self.canvas[0]
        return math.floor(self.canvas[0] / pitch), math.floor(self.canvas[1] / pitch)


@dataclass(frozen=True)
class SmallObject:
    """One shape: lattice cell (``row``, ``col``), centre (``x``, ``y``) and ``extent`` (diameter) in canvas pixels."""

    shape: str
    color: str
    row: int
    col: int
    x: float
    y: float
    extent: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in COLORS:
            raise ValueError(f"unknown attribute in {self}")
        if self.extent <= 0:
            raise ValueError(f"extent must be positive, got {self.extent}")

    @property
    def size(self) -> str:
        return SIZE

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in canvas pixels."""
        half = self.extent / 2
        return (self.x - half, self.y - half, self.x + half, self.y + half)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: centre and extent exact (``from_dict`` restores them), ``bbox`` rounded."""
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "row": self.row,
            "col": self.col,
            "center": [self.x, self.y],
            "extent": self.extent,
            "bbox": [round(v, 3) for v in self.bbox],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmallObject:
        x, y = data["center"]
        return cls(data["shape"], data["color"], data["row"], data["col"], x, y, data["extent"])


@dataclass(frozen=True)
class SmallObjectsScene:
    """Objects with distinct colours in distinct lattice cells, inside the canvas, not overlapping, in reading
    order (row, then column)."""

    objects: tuple[SmallObject, ...]
    canvas: tuple[int, int] = (128, 256)

    def __post_init__(self) -> None:
        objects = tuple(sorted(self.objects, key=lambda o: (o.row, o.col)))
        object.__setattr__(self, "objects", objects)
        object.__setattr__(self, "canvas", tuple(self.canvas))
        if not objects:
            raise ValueError("a scene needs at least one object")
        if len({o.color for o in objects}) != len(objects):
            raise ValueError("colours must be distinct within a small-objects scene")
        if len({(o.row, o.col) for o in objects}) != len(objects):
            raise ValueError("objects must sit in distinct lattice cells")
        height, width = self.canvas
        for o in objects:
            x0, y0, x1, y1 = o.bbox
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise ValueError(f"{o} leaves the {height}x{width} canvas")
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                if math.dist((a.x, a.y), (b.x, b.y)) < (a.extent + b.extent) / 2:
                    raise ValueError(f"{a} and {b} overlap")

    @property
    def height(self) -> int:
        return self.canvas[0]

    @property
    def width(self) -> int:
        return self.canvas[1]

    def side(self, obj: SmallObject) -> int | None:
        """The third of the width (0 left, 1 middle, 2 right) ``obj`` lies in; None when it straddles a border."""
        x0, _, x1, _ = obj.bbox
        first, last = math.floor(3 * x0 / self.width), math.floor(3 * x1 / self.width)
        return first if first == last else None

    def to_dict(self) -> dict[str, Any]:
        return {"layout": LAYOUT_NAME, "canvas": list(self.canvas), "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmallObjectsScene:
        return cls(tuple(SmallObject.from_dict(o) for o in data["objects"]), tuple(data["canvas"]))


def small_objects_rng(index: int, split: str = "train", seed: int = 0) -> random.Random:
    """The private RNG of one small-objects scene (a stream of its own: grid scenes do not depend on it)."""
    scene_rng(index, split, seed)  # validates split and index
    return random.Random(f"shapesworld-{LAYOUT_NAME}/{seed}/{split}/{index}")


def sample_small_objects_scene(rng: random.Random, layout: SmallObjectsLayout) -> SmallObjectsScene:
    """Draw ``layout.objects`` objects: distinct lattice cells, distinct colours, shapes with repetition."""
    height, width = layout.canvas
    rows, cols = layout.lattice
    count = rng.randint(*layout.objects)
    cells = rng.sample(range(rows * cols), count)
    colors = rng.sample(COLORS, count)
    objects = []
    for cell, color in zip(cells, colors):
        shape = rng.choice(SHAPES)
        extent = rng.uniform(*layout.object_size) * height
        row, col = divmod(cell, cols)
        x, y = (col + 0.5) * width / cols, (row + 0.5) * height / rows
        objects.append(SmallObject(shape, color, row, col, x, y, extent))
    return SmallObjectsScene(tuple(objects), layout.canvas)


def render_small_objects(scene: SmallObjectsScene) -> Image.Image:
    """RGB image of the native ``canvas`` size (width x height pixels; not square)."""
    shapes = [(o.shape, o.color, o.x, o.y, o.extent / 2) for o in scene.objects]
    return render_shapes((scene.width, scene.height), shapes)


def small_objects_question_answers(scene: SmallObjectsScene, rng: random.Random) -> list[dict[str, str]]:
    """QA pairs as ``question_answers`` makes them, each about the small objects: the colour of every shape that
    occurs once ("What color is the star?"), the shape of every object by its (distinct) colour, the count of
    objects and of a random shape, one "yes" and one "no" relation, one present and one absent object."""
    shapes = [o.shape for o in scene.objects]
    qa = [_qa(f"What color is the {o.shape}?", o.color, "color") for o in scene.objects if shapes.count(o.shape) == 1]
    qa += [_qa(f"What shape is the {o.color} object?", o.shape, "shape") for o in scene.objects]
    return qa + _count_questions(scene, rng) + _relation_questions(scene, rng) + _exists_questions(scene, rng)


def small_objects_long_caption(scene: SmallObjectsScene) -> str:
    """Object count, the objects from left to right (top to bottom within a lattice column), and which third
    of the width each is in (objects across a border left out)."""
    count = len(scene.objects)
    noun, verb = ("object", "is") if count == 1 else ("objects", "are")
    ordered = sorted(scene.objects, key=lambda o: (o.col, o.row))
    listed = _listed([ObjectDescription(color=o.color, shape=o.shape).text() for o in ordered])
    sentences = [f"There {verb} {NUMBER_WORDS[count]} small {noun} in the image.", f"From left to right: {listed}."]
    for side, words in enumerate(("On the left", "In the middle", "On the right")):
        here = [object_name(o) for o in ordered if scene.side(o) == side]
        if here:
            sentences.append(f"{words}: {_listed(here)}.")
    return " ".join(sentences)


def _listed(names: list[str]) -> str:
    """Names joined: "a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
