"""The sources of :mod:`datamodules.instruction`: ShapesWorld instruction records generated on the fly (with the
cheap image size of each record, for length grouping) and LLaVA's evaluation questions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import Dataset

from datamodules.base import Split
from datamodules.image_caption import ShapesWorldConfig
from datamodules.shapesworld import generate_sample
from datamodules.shapesworld.instructions import caption_record, instruction_record, scene_image
from datamodules.shapesworld.small_objects import SmallObjectsLayout


@dataclasses.dataclass
class ShapesWorldInstructions(ShapesWorldConfig):
    """Sizes of the generated ShapesWorld instruction data (stage 1: caption records; stage 2: multi-turn QA,
    detailed descriptions and some text-only records): :class:`ShapesWorldConfig` with smaller default splits
    and the fraction of text-only records.

    ``layout``: ``grid`` (1-``max_objects`` objects on a 3x3 grid, ``image_size`` px square) or ``small_objects``
    (``object_count`` shapes of distinct colours, ``object_size`` x the canvas height across, on a ``canvas``
    of (height, width) px, images at that native size; ``image_size`` and ``max_objects`` unused)."""

    n_train: int = 4096
    n_val: int = 256
    n_test: int = 256
    text_only_rate: float = 0.1
    layout: Literal["grid", "small_objects"] = "grid"
    canvas: tuple[int, int] = SmallObjectsLayout.canvas
    object_count: tuple[int, int] = SmallObjectsLayout.objects
    object_size: tuple[float, float] = SmallObjectsLayout.object_size

    def __post_init__(self) -> None:
        if self.layout not in ("grid", "small_objects"):
            raise ValueError(f"layout must be 'grid' or 'small_objects', got {self.layout!r}")
        self.canvas, self.object_count, self.object_size = (
            tuple(self.canvas), tuple(self.object_count), tuple(self.object_size)
        )  # fmt: skip
        self.scene_layout()  # validates the small-objects settings

    def scene_layout(self) -> SmallObjectsLayout | None:
        """The small-objects layout, or None for the grid."""
        if self.layout == "grid":
            return None
        return SmallObjectsLayout(self.canvas, self.object_count, self.object_size)


class ShapesWorldRecords(Dataset):
    """LLaVA-format records of ShapesWorld scenes, with the rendered image (``plain``: caption records)."""

    def __init__(self, split: Split, config: ShapesWorldInstructions, captions: bool) -> None:
        self.split, self.config, self.captions = split, config, captions
        self.n = getattr(config, f"n_{split}")

    def __len__(self) -> int:
        return self.n

    def text_record(self, index: int) -> dict[str, Any]:
        """Record ``index`` without its image (``image_file`` names it)."""
        c = self.config
        name = f"{self.split}-{index:08d}.png"
        layout = c.scene_layout()
        if self.captions:
            record = caption_record(index, self.split, c.seed, name, max_objects=c.max_objects, layout=layout)
        else:
            record = instruction_record(
                index, self.split, c.seed, name, c.text_only_rate, max_objects=c.max_objects, layout=layout
            )
        return {**record, "image": None, "image_file": record.get("image")}

    def image_size(self, index: int, record: dict[str, Any]) -> tuple[int, int]:
        """The (height, width) of record ``index``'s image, without rendering it."""
        layout = self.config.scene_layout()
        return tuple(layout.canvas) if layout is not None else (self.config.image_size, self.config.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.text_record(index)
        if record["image_file"] is not None:
            c, layout = self.config, self.config.scene_layout()
            if layout is not None:
                record["image"] = scene_image(index, self.split, c.seed, layout=layout)
            else:
                record["image"] = generate_sample(index, self.split, c.seed, c.image_size, c.max_objects)["image"]
        return record


def collate_questions(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: [s[key] for s in samples] for key in ("question_ids", "questions", "images")}


class QuestionRecords(Dataset):
    """LLaVA's evaluation questions (``[{"question_id", "image"?, "text"}]``, JSON or JSON lines), images opened."""

    def __init__(self, path: str, image_root: str | None) -> None:
        text = Path(path).read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        self.questions = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in lines]
        self.root = Path(image_root) if image_root else Path(path).parent

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from datamodules.sources import open_image

        q = self.questions[index]
        qid = q.get("question_id", index)
        image = open_image(self.root / q["image"], f"question {qid}") if q.get("image") else None
        return {"question_ids": qid, "questions": q.get("text", q.get("question")), "images": image}
