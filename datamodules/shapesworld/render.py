"""Deterministic PIL rendering of scenes: filled shapes on black, drawn at 4x and box-downsampled."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable

from PIL import Image, ImageDraw

from .scene import Scene
from .vocabulary import COLOR_RGB, SIZE_EXTENT

SUPERSAMPLING = 4

Polygon = tuple[tuple[float, float], ...]


def _regular_polygon(corners: int, start_degrees: float, radii: tuple[float, ...] = (1.0,)) -> Polygon:
    """Vertices on circles around the origin (y points down), cycling through ``radii``."""
    step = 2 * math.pi / (corners * len(radii))
    start = math.radians(start_degrees)
    return tuple(
        (radii[k % len(radii)] * math.cos(start + k * step), radii[k % len(radii)] * math.sin(start + k * step))
        for k in range(corners * len(radii))
    )


def _cross(arm: float = 0.95, half_width: float = 0.32) -> Polygon:
    a, w = arm, half_width
    return ((-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w))


# Outlines inside the unit circle; a shape of radius r is the outline scaled by r. Circles are drawn as ellipses.
UNIT_POLYGONS: dict[str, Polygon] = {
    "square": ((-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)),
    "triangle": tuple((1.15 * x, 1.15 * (y + 0.25)) for x, y in _regular_polygon(3, -90)),
    "star": _regular_polygon(5, -90, radii=(1.0, 0.42)),
    "hexagon": _regular_polygon(6, 0),
    "pentagon": tuple((x, y + 0.1) for x, y in _regular_polygon(5, -90)),
    "diamond": ((0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)),
    "cross": _cross(),
}


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill: tuple) -> None:
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    else:
        draw.polygon([(cx + radius * u, cy + radius * v) for u, v in UNIT_POLYGONS[shape]], fill=fill)


def render_scene(scene: Scene) -> Image.Image:
    """RGB image of ``scene.image_size`` pixels square."""
    canvas = scene.image_size * SUPERSAMPLING
    image = Image.new("RGB", (canvas, canvas))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x, y = obj.center
        cx, cy, radius = x * canvas, y * canvas, SIZE_EXTENT[obj.size] / 2 * canvas
        _draw_shape(draw, obj.shape, cx, cy, radius, COLOR_RGB[obj.color])
    return image.reduce(SUPERSAMPLING)


def render_shapes(size: tuple[int, int], shapes: Iterable[tuple[str, str, float, float, float]]) -> Image.Image:
    """RGB image of ``size`` = (width, height) pixels, any aspect ratio, drawn as ``render_scene`` draws:
    ``shapes`` are (shape, colour, centre x, centre y, radius) in pixels of that image."""
    width, height = size
    image = Image.new("RGB", (width * SUPERSAMPLING, height * SUPERSAMPLING))
    draw = ImageDraw.Draw(image)
    for shape, color, x, y, radius in shapes:
        scaled = (v * SUPERSAMPLING for v in (x, y, radius))
        _draw_shape(draw, shape, *scaled, COLOR_RGB[color])
    return image.reduce(SUPERSAMPLING)


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding with fixed settings (byte-identical for identical images)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
