"""The compositional benchmark: images with a true caption and one hard negative per negative type."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .files import write_atomic
from .generate import generate_sample
from .render import png_bytes

BENCHMARK_FILE = "compositional.json"


def write_compositional_benchmark(
    out_dir: str | os.PathLike, n: int = 500, split: str = "test", seed: int = 0, image_size: int = 64
) -> Path:
    """Write ``out_dir/images/<key>.png`` and ``out_dir/compositional.json``; return the JSON path.

    The JSON is a list of records {"id": "<key>/<category>", "image": "images/<key>.png" (relative to the
    JSON's folder), "positive", "negative", "category"}, one per scene and available negative type.
    Rerunning with the same arguments rewrites identical files; all writes are atomic.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for index in tqdm(range(n), desc=f"shapesworld {split} benchmark", unit="scene", disable=None):
        sample = generate_sample(index, split, seed, image_size)
        available = [(category, text) for category, text in sample["negatives"].items() if text is not None]
        if not available:
            continue
        image = f"images/{sample['key']}.png"
        write_atomic(out / image, png_bytes(sample["image"]))
        records.extend(
            {
                "id": f"{sample['key']}/{category}",
                "image": image,
                "positive": sample["captions"][0],
                "negative": negative,
                "category": category,
            }
            for category, negative in available
        )
    path = out / BENCHMARK_FILE
    write_atomic(path, json.dumps(records, indent=1).encode("utf-8"))
    return path
