"""Benchmark file formats shared by synthetic and real evaluation data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from datamodules.benchmarks.base import Benchmark, ImageRef, Item
from datamodules.sources import CorruptSampleError, open_image

COMPOSITIONAL_FIELDS = ("image", "positive", "negative", "category")


def load_compositional_benchmark(path: str | Path) -> list[dict[str, Any]]:
    """Read a compositional multiple-choice benchmark: a JSON list of records
    ``{"id", "image", "positive", "negative", "category"}`` (image paths relative to the file).

    Returns the records with ``image`` resolved to an absolute path; raises
    :class:`CorruptSampleError` naming the file and record for anything malformed.
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CorruptSampleError(f"benchmark {path}: cannot parse ({error})") from error
    if not isinstance(records, list) or not records:
        raise CorruptSampleError(f"benchmark {path}: expected a non-empty JSON list of records")
    resolved = []
    for i, record in enumerate(records):
        missing = [f for f in COMPOSITIONAL_FIELDS if not isinstance(record, dict) or not record.get(f)]
        if missing:
            raise CorruptSampleError(f"benchmark {path}, record {i}: missing or empty {missing}")
        image = Path(record["image"])
        resolved.append(
            {**record, "id": record.get("id", str(i)), "image": image if image.is_absolute() else path.parent / image}
        )
    return resolved


class ImageFiles(Dataset):
    """Images read from paths (or :class:`ImageRef` crops) and transformed; errors name the file."""

    def __init__(self, paths: list[Path | ImageRef], transform: Callable) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        ref = self.paths[index]
        if not isinstance(ref, ImageRef):
            return self.transform(open_image(ref, str(ref)))
        image = open_image(ref.path, ref.path)
        if ref.box is not None:  # ARO's boxes: x, y, width, height
            x, y, w, h = ref.box
            image = image.crop((x, y, x + w, y + h))
        return self.transform(image)


def compositional_benchmarks(path: str | Path, name: str = "shapesworld") -> list[Benchmark]:
    """The records of :func:`load_compositional_benchmark` as one multiple-choice benchmark per
    category (``"<name>/<category>"``, texts [positive, negative], answer 0)."""
    by_category: dict[str, list[Item]] = {}
    for record in load_compositional_benchmark(path):
        item = Item(
            id=str(record["id"]),
            images=[ImageRef(str(record["image"]))],
            texts=[record["positive"], record["negative"]],
            group=record["category"],
            meta={"answer": 0},
        )
        by_category.setdefault(record["category"], []).append(item)
    return [
        Benchmark(f"{name}/{category}", "multiple_choice", items, source=str(path))
        for category, items in sorted(by_category.items())
    ]
