"""LLaVA's instruction data, read from its JSON format or from webdataset shards.

A LLaVA JSON file is a list of ``{"id", "image"? (a path relative to an image root, or a list of them: several
images, one ``<image>`` tag each in the human turns, as LLaVA-OneVision's interleaved data), "conversations":
[{"from": "human" | "gpt", "value"}, ...], ...}``; text-only samples have no ``"image"``. Both readers
give records ``{"id", "conversations", "image": PIL RGB | list of them | None, "image_file": str | list[str] |
None, ...extra keys}`` (``image_file`` is the ``"image"`` of the JSON; a list stays a list). Every bad record
raises :class:`LLaVASampleError` naming the sample id and the file: an :class:`InvalidSampleError` that is also a
:class:`~datamodules.sources.CorruptSampleError`, so :class:`~datamodules.sources.WebDatasetSource`'s
``skip_corrupt`` skips and replaces it like any corrupt sample.

Shards (:func:`write_llava_shards`) hold per sample a ``json`` member (the JSON record as it is) and, for
an image sample, the image file's bytes under its own extension (one image: a record of several images is
refused, read it from the JSON); :func:`decode_llava_sample` is the ``decode`` of a
:class:`~datamodules.sources.WebDatasetSource` over them.
"""

from __future__ import annotations

import json
import logging
import operator
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image
from torch.utils.data import Dataset

from datamodules.sources import IMAGE_EXTENSIONS, CorruptSampleError, open_image
from zoo.backbones.llava.conversation import InvalidSampleError, check_conversation

log = logging.getLogger(__name__)


class LLaVASampleError(InvalidSampleError, CorruptSampleError):
    """A bad LLaVA record: an ``InvalidSampleError`` (id + reason) that the zoo's readers skip as corrupt."""


def image_files(image: str | list[str] | None) -> list[str]:
    """The image paths of a record's ``image`` (``image_file``) as a list: none, one, or the list itself."""
    return [] if image is None else [image] if isinstance(image, str) else list(image)


def validate_record(record: Any, index: int | str, where: str) -> dict[str, Any]:
    """The record with a string ``id`` (``index``, its position or shard key, when it has none), checked without
    opening its images: a dict with ``conversations`` (a list) and, if any, an ``image`` that is a path string or
    a non-empty list of them; then ``check_conversation`` (roles and turns; several images: one tag each)."""
    if not isinstance(record, dict):
        raise LLaVASampleError(str(index), f"{where}: record {index} is a {type(record).__name__}, not a dict")
    sample_id = record.get("id", index)
    if not isinstance(sample_id, (str, int)) or isinstance(sample_id, bool):
        raise LLaVASampleError(str(index), f"{where}: record {index} has an id of type {type(sample_id).__name__}")
    sample_id = str(sample_id)
    if not isinstance(record.get("conversations"), list):
        raise LLaVASampleError(sample_id, f"{where}: 'conversations' is missing or not a list")
    image = record.get("image")
    if "image" in record and not (
        isinstance(image, str) or (isinstance(image, list) and image and all(isinstance(x, str) for x in image))
    ):
        reason = f"'image' must be a path string or a non-empty list of path strings, got {image!r}"
        raise LLaVASampleError(sample_id, f"{where}: {reason}")
    try:
        images = len(image_files(image)) if "image" in record else 1
        check_conversation(sample_id, record["conversations"], "image" in record, images)
    except InvalidSampleError as error:
        raise LLaVASampleError(sample_id, f"{where}: {error.reason}") from error
    return {**record, "id": sample_id}


def _output(record: dict[str, Any], image: Image.Image | None) -> dict[str, Any]:
    extra = {key: value for key, value in record.items() if key not in ("id", "conversations", "image")}
    image_file = record.get("image")
    return {
        "id": record["id"],
        "conversations": record["conversations"],
        "image": image,
        "image_file": image_file,
        **extra,
    }


def _read_image(data: bytes | Path, sample_id: str, where: str) -> Image.Image:
    try:
        return open_image(data, where)
    except CorruptSampleError as error:
        raise LLaVASampleError(sample_id, str(error)) from error


class LLaVAJsonRecords(Dataset):
    """Map-style records of a LLaVA JSON file; images (relative to ``image_root``, by default the JSON's
    folder, unless absolute) are opened in ``__getitem__``.

    Whole-file problems (not JSON, not a list) raise ``ValueError``. A bad record raises
    :class:`LLaVASampleError`: a non-dict, missing ``conversations``, a duplicate id, an ``image`` that is not a
    path string or a non-empty list of them, or a tag count unlike the image count when built; a missing or
    unreadable image (any of a list) when read. With ``skip_invalid``, a bad record is logged,
    kept in ``skipped`` (id -> reason; in each DataLoader worker, its own) and read as ``None``: the caller
    substitutes or drops it.
    """

    def __init__(self, json_path: str | Path, image_root: str | Path | None = None, skip_invalid: bool = False) -> None:
        self.json_path = Path(json_path)
        self.image_root = Path(image_root) if image_root is not None else self.json_path.parent
        self.skip_invalid = skip_invalid
        self.skipped: dict[str, str] = {}
        try:
            rows = json.loads(self.json_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"LLaVA JSON {self.json_path}: cannot parse ({error})") from error
        if not isinstance(rows, list):
            raise ValueError(f"LLaVA JSON {self.json_path}: expected a list of records, got {type(rows).__name__}")
        self.records: list[dict[str, Any] | None] = []  # None: invalid (skip_invalid), kept so indices hold
        seen: set[str] = set()
        for index, row in enumerate(rows):
            try:
                record = validate_record(row, index, str(self.json_path))
                if record["id"] in seen:
                    raise LLaVASampleError(record["id"], f"{self.json_path}: duplicate id (record {index})")
            except LLaVASampleError as error:
                self._skip(error)
                record = None
            if record is not None:
                seen.add(record["id"])
            self.records.append(record)

    def _skip(self, error: LLaVASampleError) -> None:
        if not self.skip_invalid:
            raise error
        self.skipped[error.sample_id] = error.reason
        log.warning("skipped invalid LLaVA sample (%d so far): %s", len(self.skipped), error)

    def __len__(self) -> int:
        return len(self.records)

    def image_paths(self, record: dict[str, Any]) -> list[Path]:
        """Where the record's images are: each ``image`` path, under ``image_root`` unless absolute."""
        paths = map(Path, image_files(record["image"]))
        return [path if path.is_absolute() else self.image_root / path for path in paths]

    def image_path(self, record: dict[str, Any]) -> Path:
        """Where the record's one image is (:meth:`image_paths`; a record of several images raises
        :class:`LLaVASampleError`)."""
        paths = self.image_paths(record)
        if len(paths) != 1:
            sample_id = str(record.get("id", "?"))
            raise LLaVASampleError(sample_id, f"{self.json_path}: {len(paths)} images where one is expected")
        return paths[0]

    def text_record(self, index: int) -> dict[str, Any] | None:
        """Record ``index`` without opening its image (``image`` None, ``image_file`` its path as written)."""
        record = self.records[operator.index(index)]
        return None if record is None else _output(record, None)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[operator.index(index)]
        if record is None:
            return None
        if "image" not in record:
            return _output(record, None)
        images = []
        try:
            for path in self.image_paths(record):
                if not path.is_file():
                    where = f"image file {path} (named in {self.json_path}) does not exist"
                    raise LLaVASampleError(record["id"], where)
                images.append(_read_image(path, record["id"], f"{path} (named in {self.json_path})"))
        except LLaVASampleError as error:
            self._skip(error)
            return None
        return _output(record, images[0] if isinstance(record["image"], str) else images)


def decode_llava_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw webdataset sample (``json`` + image bytes) -> a record as :class:`LLaVAJsonRecords` gives it,
    plus the sample's ``key``; the ``decode`` of a :class:`~datamodules.sources.WebDatasetSource`."""
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', '?')} (key {key})"
    if "json" not in sample:
        raise LLaVASampleError(key, f"{where}: no 'json' member")
    try:
        row = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LLaVASampleError(key, f"{where}: 'json' member cannot be parsed ({error})") from error
    record = validate_record(row, key, where)
    if len(image_files(record.get("image"))) > 1:
        reason = f"{where}: several images in one sample: shards hold one image member (read it from LLaVA JSON)"
        raise LLaVASampleError(record["id"], reason)
    image_key = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if ("image" in record) != (image_key is not None):
        found = "no image member" if image_key is None else f"an image member ({image_key}) but no 'image' key"
        raise LLaVASampleError(record["id"], f"{where}: {found}")
    image = None if image_key is None else _read_image(sample[image_key], record["id"], where)
    image = [image] if isinstance(record.get("image"), list) else image  # a list of one stays a list
    return {**_output(record, image), "key": key}


def write_llava_shards(
    records_json: str | Path, image_root: str | Path | None, out_pattern: str, samples_per_shard: int = 1000
) -> list[str]:
    """Write the records of a LLaVA JSON file to tar shards named by ``out_pattern`` (``"dir/llava-%06d.tar"``)
    and return their paths. Sample ``i`` has key ``sample<i:09d>``, a ``json`` member (the record) and the
    image file's bytes under its extension; member times are fixed, so the same input gives the same shards."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    dataset = LLaVAJsonRecords(records_json, image_root)
    Path(out_pattern).parent.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    writer = wds.ShardWriter(
        out_pattern, maxcount=samples_per_shard, post=shards.append, verbose=0, encoder=False, mtime=0.0
    )
    with writer as sink:
        for index, record in enumerate(dataset.records):
            sample = {"__key__": f"sample{index:09d}", "json": json.dumps(record).encode("utf-8")}
            if "image" in record:
                if len(dataset.image_paths(record)) > 1:
                    reason = f"{records_json}: several images in one sample; shards hold one image per sample"
                    raise LLaVASampleError(record["id"], reason)
                path = dataset.image_path(record)
                extension = path.suffix.lstrip(".").lower()
                if not path.is_file():
                    raise LLaVASampleError(record["id"], f"image file {path} (named in {records_json}) does not exist")
                if extension not in IMAGE_EXTENSIONS:
                    raise LLaVASampleError(record["id"], f"image file {path}: not an image extension PIL reads")
                sample[extension] = path.read_bytes()
            sink.write(sample)
    return shards
