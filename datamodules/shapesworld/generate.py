"""One ShapesWorld sample: scene, image and all texts, drawn from the scene's private RNG."""

from __future__ import annotations

from typing import Any

from .captions import caption_descriptions, long_caption
from .negatives import negative_descriptions
from .qa import question_answers
from .render import render_scene
from .scene import sample_scene, scene_rng


def sample_key(split: str, index: int) -> str:
    return f"{split}-{index:08d}"


def generate_sample(
    index: int, split: str = "train", seed: int = 0, image_size: int = 64, max_objects: int = 4
) -> dict[str, Any]:
    """Sample ``index`` of ``split``: keys "key", "image" (PIL RGB), "captions", "long_caption",
    "negatives" (``NEGATIVE_TYPES`` -> caption or None), "qa" and "scene" (JSON-ready dict).

    Identical arguments always give identical images and texts; texts do not depend on ``image_size``.
    """
    rng = scene_rng(index, split, seed)
    scene = sample_scene(rng, image_size, max_objects)
    captions = caption_descriptions(scene, rng)
    negatives = negative_descriptions(scene, captions[0], rng)
    return {
        "key": sample_key(split, index),
        "image": render_scene(scene),
        "captions": [caption.text() for caption in captions],
        "long_caption": long_caption(scene),
        "negatives": {name: None if negative is None else negative.text() for name, negative in negatives.items()},
        "qa": question_answers(scene, rng),
        "scene": scene.to_dict(),
    }


def sample_metadata(sample: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of a sample (everything except key and image)."""
    return {name: sample[name] for name in ("captions", "long_caption", "negatives", "qa", "scene")}
