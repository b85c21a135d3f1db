"""Winoground (``facebook/winoground`` on the Hugging Face Hub) loader.

``data/examples.jsonl``: one JSON object per line, ``{"id", "image_0", "image_1", "caption_0",
"caption_1", "tag", "secondary_tag", "num_main_preds", "collapsed_tag"}``; ``image_0`` / ``image_1`` are
file names without extension (``ex_0_img_0``) of the PNGs in ``data/images.zip`` (``images/``).
``caption_0`` describes ``image_0`` and ``caption_1`` ``image_1``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from datamodules.benchmarks.base import (
    Benchmark,
    BenchmarkFormatError,
    ImageRef,
    Item,
    MalformedRecord,
    required_text,
    resolve_image,
)


def load_winoground(examples_jsonl: str | Path, image_root: str | Path, skip_missing: bool = False) -> Benchmark:
    """Winoground as ``"winoground"`` (protocol ``"winoground"``).

    Args:
        examples_jsonl: the dataset's ``examples.jsonl``.
        image_root: the folder of the extracted ``images.zip`` (``ex_0_img_0.png``, ...).
        skip_missing: skip (and count) examples with a missing image or malformed fields instead of raising.

    Items: ``id`` = the example's ``id``, ``images = [image_0.png, image_1.png]``, ``texts = [caption_0,
    caption_1]``, ``group = tag``, ``meta = {"secondary_tag", "num_main_preds", "collapsed_tag"}`` (as given).
    A name that already has an extension is used as is.
    """
    path = Path(examples_jsonl)
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: file does not exist")
    items: list[Item] = []
    skipped = 0
    seen = 0
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            seen += 1
            rid = f"line {line_number}"
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise MalformedRecord(f"cannot parse JSON ({error})") from None
                if not isinstance(record, Mapping):
                    raise MalformedRecord(f"expected an object, got {type(record).__name__}")
                if record.get("id") is not None:
                    rid = str(record["id"])
                names = [required_text(record, "image_0"), required_text(record, "image_1")]
                texts = [required_text(record, "caption_0"), required_text(record, "caption_1")]
                tag = required_text(record, "tag")
            except MalformedRecord as error:
                if skip_missing:
                    skipped += 1
                    continue
                raise BenchmarkFormatError(f"{path}, record {rid}: {error}") from None
            where = f"{path}, record {rid}"
            images = [
                resolve_image(image_root, n if PurePosixPath(n).suffix else f"{n}.png", where, skip_missing)
                for n in names
            ]
            if None in images:
                skipped += 1
                continue
            meta = {key: record.get(key) for key in ("secondary_tag", "num_main_preds", "collapsed_tag")}
            items.append(Item(id=rid, images=[ImageRef(image) for image in images], texts=texts, group=tag, meta=meta))
    if not seen:
        raise BenchmarkFormatError(f"{path}: no examples")
    return Benchmark(name="winoground", protocol="winoground", items=items, source=str(path), skipped=skipped)
