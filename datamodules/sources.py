"""Readers for image-caption data: manifests, webdataset shards, ShapesWorld.

Every reader yields records ``{"key": str, "image": PIL.Image (RGB), "captions": list[str]}``.
Bad input never passes silently: a missing or corrupt image, an empty caption or a malformed
manifest raises :class:`CorruptSampleError` naming the file and the sample key, unless the reader
was built with ``skip_corrupt=True``, in which case the sample is skipped and counted.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class CorruptSampleError(ValueError):
    """A sample (or manifest) that cannot be used; the message names the file and sample key."""


class SkipCounter:
    """Counts skipped samples in this process and logs a warning for each."""

    def __init__(self) -> None:
        self.count = 0

    def skip(self, error: Exception) -> None:
        self.count += 1
        log.warning("skipped corrupt sample (%d skipped so far in this process): %s", self.count, error)


def open_image(data: bytes | str | Path, where: str) -> Image.Image:
    """Decode an image fully (so truncated files fail here, not later) and convert to RGB."""
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
        return image.convert("RGB")
    except Exception as error:  # PIL raises many types: report them all the same way
        raise CorruptSampleError(f"{where}: cannot read image ({type(error).__name__}: {error})") from error


def check_captions(captions: list[str], where: str) -> list[str]:
    """Strip captions; raise if there are none or any is empty."""
    cleaned = [str(c).strip() for c in captions]
    if not cleaned or any(not c for c in cleaned):
        raise CorruptSampleError(f"{where}: empty caption in {captions!r}")
    return cleaned


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON list / JSON-lines / CSV manifest of ``image`` + ``caption`` or ``captions``.

    Rows naming the same image are merged into one record with several captions (COCO style).
    Image paths are relative to the manifest's folder unless absolute.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text())
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as error:
        raise CorruptSampleError(f"manifest {path}: cannot parse ({error})") from error
    if not isinstance(rows, list):
        raise CorruptSampleError(f"manifest {path}: expected a list of records, got {type(rows).__name__}")
    records: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        where = f"manifest {path}, record {i}"
        if not isinstance(row, dict) or "image" not in row or not ("caption" in row or "captions" in row):
            raise CorruptSampleError(f"{where}: needs 'image' and 'caption' or 'captions', got {row!r}")
        captions = row["captions"] if "captions" in row else [row["caption"]]
        if not isinstance(captions, list):
            raise CorruptSampleError(f"{where}: 'captions' must be a list, got {captions!r}")
        image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
        key = str(row.get("key", row["image"]))
        record = records.setdefault(str(image), {"key": key, "image": image, "captions": [], "where": where})
        record["captions"].extend(captions)
    return list(records.values())


def read_negclip_tsv(path: str | Path) -> list[dict[str, Any]]:
    """Read NegCLIP's training TSV: columns ``title`` (caption), ``filepath``, ``neg_caption`` (a Python
    list literal of hard-negative captions) and ``neg_image`` (a list literal of row indices: the hard
    images). One record per row, as NegCLIP trains; rows of the same image share an ``image_id``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NegCLIP TSV {path} does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    required = {"title", "filepath", "neg_caption", "neg_image"}
    if not rows or not required <= set(rows[0]):
        raise CorruptSampleError(
            f"NegCLIP TSV {path}: needs columns {sorted(required)}, got {sorted(rows[0]) if rows else 'no rows'}"
        )
    image_ids: dict[str, int] = {}
    records = []
    for i, row in enumerate(rows):
        where = f"NegCLIP TSV {path}, row {i}"
        try:
            negatives, neighbours = ast.literal_eval(row["neg_caption"]), ast.literal_eval(row["neg_image"])
        except (ValueError, SyntaxError) as error:
            raise CorruptSampleError(f"{where}: neg_caption / neg_image are not list literals ({error})") from error
        if not all(isinstance(n, int) and 0 <= n < len(rows) for n in neighbours):
            raise CorruptSampleError(f"{where}: neg_image must list row indices in [0, {len(rows)}), got {neighbours}")
        image = Path(row["filepath"]) if Path(row["filepath"]).is_absolute() else path.parent / row["filepath"]
        records.append(
            {
                "key": f"{path.name}:{i}",
                "image": image,
                "captions": [row["title"]],
                "negative_captions": [str(n) for n in negatives],
                "neighbours": neighbours,
                "image_id": image_ids.setdefault(str(image), len(image_ids)),
                "where": where,
            }
        )
    return records


class ManifestDataset(Dataset):
    """Map-style records from a manifest (JSON / JSON-lines / CSV, or NegCLIP's ``.tsv``); images are read lazily."""

    def __init__(self, path: str | Path, skip_corrupt: bool = False) -> None:
        self.path = Path(path)
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter()
        self.records = []
        for record in read_negclip_tsv(path) if self.path.suffix == ".tsv" else read_manifest(path):
            try:
                record["captions"] = check_captions(record["captions"], f"{record['where']} (key {record['key']})")
            except CorruptSampleError as error:
                if not skip_corrupt:
                    raise
                self.skipped.skip(error)
                record = None  # keep positions: NegCLIP's neg_image refers to rows by index
            self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        if record is None:
            return None
        try:
            image = open_image(record["image"], f"{record['image']} (key {record['key']})")
        except CorruptSampleError as error:
            if not self.skip_corrupt:
                raise
            self.skipped.skip(error)
            return None
        return {**{k: v for k, v in record.items() if k != "where"}, "image": image}


def decode_webdataset_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode one raw webdataset sample (image bytes + ``txt`` or ``json`` captions)."""
    where = f"{sample.get('__url__', '?')} (key {sample.get('__key__', '?')})"
    image_key = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if image_key is None:
        raise CorruptSampleError(f"{where}: no image among {sorted(k for k in sample if not k.startswith('__'))}")
    if "json" in sample:
        meta = json.loads(sample["json"])
        captions = meta.get("captions") or ([meta["caption"]] if "caption" in meta else None)
    elif "txt" in sample:
        captions = [sample["txt"].decode("utf-8")]
    else:
        captions = None
    if captions is None:
        raise CorruptSampleError(f"{where}: no caption ('txt', or 'json' with 'caption'/'captions')")
    return {
        "key": sample["__key__"],
        "image": open_image(sample[image_key], where),
        "captions": check_captions(captions, where),
    }


class WebDatasetSource(IterableDataset):
    """Records from webdataset tar shards (brace patterns allowed), split across nodes and workers."""

    def __init__(self, urls: str | list[str], shuffle: int = 0, skip_corrupt: bool = False) -> None:
        self.urls = urls
        self.shuffle = shuffle
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pipeline = wds.WebDataset(
            self.urls,
            shardshuffle=self.shuffle or False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            empty_check=False,
        )
        if self.shuffle:
            pipeline = pipeline.shuffle(self.shuffle)
        for sample in pipeline:
            try:
                yield decode_webdataset_sample(sample)
            except CorruptSampleError as error:
                if not self.skip_corrupt:
                    raise
                self.skipped.skip(error)
