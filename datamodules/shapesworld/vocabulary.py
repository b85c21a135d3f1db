"""Closed vocabulary of ShapesWorld: shapes, colours, sizes, relations and grid positions."""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "pentagon", "diamond", "cross")

SHAPE_PLURALS: dict[str, str] = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}

# Saturated, mutually distinct colours that all stand out on a black background.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (40, 200, 40),
    "blue": (50, 100, 255),
    "yellow": (255, 230, 0),
    "purple": (170, 60, 230),
    "orange": (255, 140, 0),
    "white": (255, 255, 255),
    "cyan": (0, 225, 225),
}
COLORS: tuple[str, ...] = tuple(COLOR_RGB)

SIZES: tuple[str, ...] = ("small", "large")

# Object extent (diameter of the shape's bounding circle) as a fraction of the image side.
SIZE_EXTENT: dict[str, float] = {"small": 1 / 8, "large": 1 / 4}

GRID_SIZE = 3

RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
RELATION_PHRASES: dict[str, str] = {
    "left_of": "to the left of",
    "right_of": "to the right of",
    "above": "above",
    "below": "below",
}
OPPOSITE_RELATION: dict[str, str] = {
    "left_of": "right_of",
    "right_of": "left_of",
    "above": "below",
    "below": "above",
}

ROW_NAMES: tuple[str, ...] = ("top", "middle", "bottom")
COLUMN_NAMES: tuple[str, ...] = ("left", "center", "right")

NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def position_name(row: int, col: int) -> str:
    """Name of a grid cell, e.g. "top left", "middle right" or "center"."""
    if (row, col) == (1, 1):
        return "center"
    return f"{ROW_NAMES[row]} {COLUMN_NAMES[col]}"
