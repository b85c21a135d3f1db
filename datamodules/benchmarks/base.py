"""The common shape of every evaluation benchmark: items of images and candidate texts.

A loader turns an official benchmark file into a :class:`Benchmark`; the scorers only need
similarities between the benchmark's unique images and unique texts, so every image (crop) and every
text is embedded once, whatever the number of items that use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ImageRef:
    """An image file, optionally cropped to ``box`` = (x, y, width, height) in pixels (ARO's boxes)."""

    path: str
    box: tuple[float, float, float, float] | None = None

    @property
    def key(self) -> str:
        return self.path if self.box is None else f"{self.path}#{','.join(f'{v:g}' for v in self.box)}"


@dataclass
class Item:
    """One test: its images and candidate texts; what counts as right is the protocol's business.

    ``group`` names what the figure is macro-averaged over (a relation, a category, a pair);
    ``meta`` holds protocol details (e.g. ``answer``: the index of the right text).
    """

    id: str
    images: list[ImageRef]
    texts: list[str]
    group: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Benchmark:
    """A named list of items scored by one protocol.

    Attributes:
        name: e.g. ``"sugarcrepe/replace_att"``.
        protocol: how items are scored: ``"multiple_choice"``, ``"whatsup"``, ``"winoground"``,
            ``"mmvp"``, ``"sugarcrepe_pp"``, ``"brittleness"``.
        items: the tests.
        source: the file(s) it was read from.
        skipped: items dropped for bad input under ``skip_missing``.
        options: protocol options (e.g. ``{"macro_min_items": 25}`` for ARO's attribution).
    """

    name: str
    protocol: str
    items: list[Item]
    source: str = ""
    skipped: int = 0
    options: dict[str, Any] = field(default_factory=dict)


class BenchmarkFormatError(ValueError):
    """A benchmark file or record that cannot be used; the message names the file and record."""


def resolve_image(root: str | Path, name: str, where: str, skip_missing: bool) -> str | None:
    """Absolute path of image ``name`` under ``root``; a missing file raises (naming ``where``) or,
    with ``skip_missing``, returns None so the caller skips and counts the item."""
    path = Path(root) / name
    if path.is_file():
        return str(path.resolve())
    if skip_missing:
        return None
    raise BenchmarkFormatError(f"{where}: image {path} does not exist (skip_missing: true skips such items)")


class MalformedRecord(Exception):
    """A record that cannot be used: the loader raises it as :class:`BenchmarkFormatError` naming the
    file and record, or skips and counts the record under ``skip_missing``."""


def read_json(path: Path) -> Any:
    """A JSON file, or :class:`BenchmarkFormatError` naming it."""
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: file does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BenchmarkFormatError(f"{path}: cannot parse JSON ({error})") from error


def required_text(record: Mapping[str, Any], key: str) -> str:
    """``record[key]`` as a non-empty string, or :class:`MalformedRecord`."""
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedRecord(f"missing or empty {key!r}")
    return value
