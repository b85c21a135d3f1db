"""REACT's queries: class names and prompt templates in, the corpus rows each class retrieves out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamodules.benchmarks.prompts import format_prompt
from datamodules.retrieval.index import LoadedIndex

MODE_MODALITY = {"t2i": "image", "t2t": "text"}


def load_templates(spec: str | Sequence[str] | None = None) -> list[str]:
    """Prompt templates (``{c}`` or ``{}``): ``None`` / ``"default"`` gives the 80 OpenAI ImageNet
    templates; a path to a JSON list or a text file (one per line); or a list of templates."""
    if spec is None or spec == "default":
        from datamodules.benchmarks.imagenet import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"template file {spec} does not exist (or pass 'default')")
        text = path.read_text()
        spec = json.loads(text) if path.suffix == ".json" else [line.strip() for line in text.splitlines()]
    templates = [t for t in spec if t]
    if not templates:
        raise ValueError("no templates")
    for template in templates:
        try:
            ok = "\x00" in format_prompt(template, "\x00")
        except (KeyError, IndexError):
            ok = False
        if not ok:
            raise ValueError(f"template {template!r} needs one class-name placeholder, {{c}} or {{}}")
    return templates


def load_classnames(spec: str | Sequence[str]) -> list[str]:
    """Class names: a list, a path to a JSON list or a text file (one per line), or a comma-separated string."""
    if isinstance(spec, str):
        path = Path(spec)
        if path.is_file():
            text = path.read_text()
            spec = json.loads(text) if path.suffix == ".json" else text.splitlines()
        elif path.suffix in (".txt", ".json"):
            raise FileNotFoundError(f"class-name file {spec} does not exist")
        else:
            spec = spec.split(",")
    names = [str(n).strip() for n in spec if str(n).strip()]
    if not names:
        raise ValueError("empty class list")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate class names: {duplicates[:10]}")
    return names



@dataclass(frozen=True)
class Hit:
    """A retrieved corpus row, its best score for the class and the prompt that scored it."""

    row: int
    score: float
    query: str


def search_classes(
    index: LoadedIndex, queries: np.ndarray, prompts: list[list[str]], k: int, dedup_across_classes: bool = False
) -> list[list[Hit]]:
    """Top-``k`` rows of every query, united per class (a row keeps its best score) and, with
    ``dedup_across_classes``, given only to the class that scores it highest (first class on ties).
    Each class's hits are sorted by score, best first."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(queries) != sum(len(ps) for ps in prompts):
        raise ValueError(f"{len(queries)} query embeddings for {sum(len(ps) for ps in prompts)} prompts")
    scores, rows = index.search(queries, k)
    per_class: list[dict[int, Hit]] = []
    start = 0
    for texts in prompts:
        best: dict[int, Hit] = {}
        for q, prompt in enumerate(texts, start):
            for score, row in zip(scores[q].tolist(), rows[q].tolist()):
                if row >= 0 and (row not in best or score > best[row].score):
                    best[row] = Hit(row, score, prompt)
        per_class.append(best)
        start += len(texts)
    if dedup_across_classes:
        owner: dict[int, int] = {}
        for c, best in enumerate(per_class):
            for row, hit in best.items():
                if row not in owner or hit.score > per_class[owner[row]][row].score:
                    owner[row] = c
        per_class = [{r: h for r, h in best.items() if owner[r] == c} for c, best in enumerate(per_class)]
    return [sorted(best.values(), key=lambda h: (-h.score, h.row)) for best in per_class]

