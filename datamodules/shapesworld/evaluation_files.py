"""ShapesWorld written in the layouts of real evaluation data, so the same loaders read both:
a Karpathy-split JSON for retrieval and an ImageFolder tree (one folder per shape) for zero-shot
classification of single-object scenes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from .files import write_atomic
from .generate import generate_sample
from .render import png_bytes
from .vocabulary import SHAPES


def write_retrieval_benchmark(
    out_dir: str | os.PathLike, n: int = 500, split: str = "test", seed: int = 0, image_size: int = 64
) -> Path:
    """``out_dir/dataset_shapesworld.json`` (Karpathy format, split "test") + ``out_dir/<key>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for index in tqdm(range(n), desc=f"shapesworld {split} retrieval", unit="scene", disable=None):
        sample = generate_sample(index, split, seed, image_size)
        filename = f"{sample['key']}.png"
        write_atomic(out / filename, png_bytes(sample["image"]))
        sentences = [{"raw": caption, "tokens": caption.split()} for caption in sample["captions"]]
        images.append({"filename": filename, "split": "test", "sentences": sentences, "imgid": index})
    path = out / "dataset_shapesworld.json"
    write_atomic(path, json.dumps({"dataset": "shapesworld", "images": images}).encode("utf-8"))
    return path


def write_classification_benchmark(
    out_dir: str | os.PathLike, per_class: int = 20, split: str = "test", seed: int = 0, image_size: int = 64
) -> Path:
    """``out_dir/<shape>/<key>.png``: the first ``per_class`` single-object scenes of each shape."""
    out = Path(out_dir)
    counts = dict.fromkeys(SHAPES, 0)
    index = 0
    total = per_class * len(SHAPES)
    with tqdm(total=total, desc=f"shapesworld {split} classification", unit="image", disable=None) as bar:
        while min(counts.values()) < per_class:
            sample = generate_sample(index, split, seed, image_size, max_objects=1)
            shape = sample["scene"]["objects"][0]["shape"]
            if counts[shape] < per_class:
                (out / shape).mkdir(parents=True, exist_ok=True)
                write_atomic(out / shape / f"{sample['key']}.png", png_bytes(sample["image"]))
                counts[shape] += 1
                bar.update()
            index += 1
    return out
