"""LLaVA instruction data as image-caption pairs, for CLIP (the seed's appendix: answers and descriptions become
captions; "On erroneous agreements of CLIP image embeddings", Li et al., 2024).

A LLaVA JSON file (``{"id", "image"?, "conversations": [{"from": "human" | "gpt", "value"}, ...]}``, read and
checked by :class:`~datamodules.llava_json.LLaVAJsonRecords`, image paths by its rule: under ``image_folder``,
by default the JSON's folder, unless absolute) becomes a manifest of ``image`` + ``caption`` rows that
:class:`~datamodules.ImageCaptionDataModule` reads with ``source: manifest`` (rows of one image merge into one
record; training draws one of its captions per epoch). The rules, each skip counted by reason:

* every ``gpt`` answer of an image record is a caption of its image, ``<image>`` tags taken out and whitespace
  runs collapsed to one space;
* ``text_only``: records without an image (counted per record); ``multi_image``: records of several images
  (an answer about several images is a caption of none; counted per record);
* ``short_answer``: answers of fewer than ``min_words`` whitespace-separated words ("Yes", "2", "Red",
  "A dog" at the default 3): answers, not captions (counted per answer). ShapesWorld's short answers are one
  word; its captions and descriptions four or more;
* ``duplicate`` (with ``dedupe``): an (image, caption) pair written already (counted per answer);
* ``invalid`` / ``missing_image`` (with ``skip_invalid``; otherwise they raise naming the file and record id):
  a record the reader refuses (no ``conversations``, a duplicate id, broken turns) / an image file that is
  not there (checked with ``check_images``).

The manifest's format follows its suffix, as :func:`~datamodules.sources.read_manifest` reads it: ``.jsonl``
(JSON lines), ``.json`` (a JSON list) or ``.csv``; one row per caption ``{"image", "caption", "id"}`` (``id``:
the LLaVA record's, for tracing), image paths relative to the manifest's folder.

Command: ``python -m datamodules.llava_captions IN.json OUT.jsonl --image-folder DIR`` prints the summary.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datamodules.llava_json import LLaVAJsonRecords, LLaVASampleError
from datamodules.shapesworld.files import write_atomic
from zoo.backbones.llava.conversation import IMAGE_TOKEN

SKIP_REASONS: tuple[str, ...] = ("text_only", "multi_image", "short_answer", "duplicate", "invalid", "missing_image")
FORMATS: tuple[str, ...] = (".jsonl", ".json", ".csv")
COLUMNS: tuple[str, ...] = ("image", "caption", "id")


def clean_answer(text: str) -> str:
    """An answer as a caption: ``<image>`` tags out, whitespace runs (line breaks included) one space, stripped."""
    return " ".join(text.replace(IMAGE_TOKEN, " ").split())


def _manifest_bytes(rows: list[dict[str, str]], suffix: str) -> bytes:
    if suffix == ".jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    if suffix == ".json":
        return json.dumps(rows, ensure_ascii=False, indent=1).encode("utf-8")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def llava_to_captions(
    json_path: str | Path | Sequence[str | Path],
    out_path: str | Path,
    image_folder: str | Path | None = None,
    min_words: int = 3,
    dedupe: bool = True,
    skip_invalid: bool = False,
    check_images: bool = True,
) -> dict[str, Any]:
    """Write the captions of LLaVA JSON ``json_path`` (or of several files, e.g. LLaVA's stage-1 captions and its
    stage-2 conversations, each read with its own ``image_folder`` rule) to the manifest ``out_path`` (see the
    module docstring) and
    return the summary: ``records`` (read), ``image_records``, ``answers`` (of image records), ``captions``
    (written), ``images`` (distinct, with a caption), ``skipped`` (reason -> count, every reason of
    :data:`SKIP_REASONS` present) and ``out``.

    Raises ``ValueError`` for a file that is not a LLaVA JSON list or a bad ``out_path`` / ``min_words``, and
    :class:`~datamodules.llava_json.LLaVASampleError` naming the file and record id for a bad record or a
    missing image (unless ``skip_invalid``: then counted)."""
    paths = [Path(p) for p in ([json_path] if isinstance(json_path, str | Path) else json_path)]
    out_path = Path(out_path)
    if out_path.suffix not in FORMATS:
        raise ValueError(f"{out_path}: write the manifest as one of {FORMATS} (by its suffix), not {out_path.suffix!r}")
    if any(out_path.resolve() == path.resolve() for path in paths):
        raise ValueError(f"{out_path}: the manifest would overwrite the LLaVA JSON it is made from")
    if min_words < 1:
        raise ValueError(f"min_words must be at least 1, got {min_words}")
    datasets = [LLaVAJsonRecords(path, image_folder, skip_invalid=skip_invalid) for path in paths]
    records = [(path, dataset, record) for path, dataset in zip(paths, datasets) for record in dataset.records]
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    skipped["invalid"] = sum(record is None for _, _, record in records)
    out_dir = os.path.abspath(out_path.parent)
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    image_records = answers = 0
    for json_path, dataset, record in records:
        if record is None:
            continue
        if "image" not in record:
            skipped["text_only"] += 1
            continue
        if len(dataset.image_paths(record)) > 1:
            skipped["multi_image"] += 1
            continue
        path = dataset.image_path(record)
        if check_images and not path.is_file():
            error = LLaVASampleError(record["id"], f"image file {path} (named in {json_path}) does not exist")
            if not skip_invalid:
                raise error
            skipped["missing_image"] += 1
            continue
        image_records += 1
        image = os.path.relpath(os.path.abspath(path), out_dir)
        for turn in record["conversations"]:
            if turn["from"] != "gpt":
                continue
            answers += 1
            caption = clean_answer(turn["value"])
            if len(caption.split()) < min_words:
                skipped["short_answer"] += 1
            elif dedupe and (image, caption) in seen:
                skipped["duplicate"] += 1
            else:
                seen.add((image, caption))
                rows.append({"image": image, "caption": caption, "id": record["id"]})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, _manifest_bytes(rows, out_path.suffix))
    return {
        "records": len(records),
        "image_records": image_records,
        "answers": answers,
        "captions": len(rows),
        "images": len({row["image"] for row in rows}),
        "skipped": skipped,
        "out": str(out_path),
    }


def format_summary(summary: dict[str, Any], min_words: int) -> str:
    """The summary as the command prints it."""
    s = summary["skipped"]
    return "\n".join(
        [
            f"records: {summary['records']} ({summary['image_records']} with an image, {summary['answers']} answers)",
            f"captions written: {summary['captions']} of {summary['images']} images to {summary['out']}",
            f"skipped: {s['text_only']} text-only records, {s['multi_image']} records of several images, "
            f"{s['short_answer']} answers under {min_words} words, "
            f"{s['duplicate']} duplicate captions, {s['invalid']} invalid records, {s['missing_image']} missing images",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.llava_captions",
        description="Turn LLaVA instruction JSON into an image-caption manifest (source: manifest) for CLIP.",
    )
    parser.add_argument("json_path", type=Path, help="LLaVA instruction JSON (a list of records)")
    parser.add_argument("out_path", type=Path, help="the manifest to write: .jsonl, .json or .csv")
    parser.add_argument("--image-folder", type=Path, default=None, help="image root (default: the JSON's folder)")
    parser.add_argument("--min-words", type=int, default=3, help="shorter answers are skipped (default: 3)")
    parser.add_argument("--keep-duplicates", action="store_true", help="keep repeated (image, caption) pairs")
    parser.add_argument("--skip-invalid", action="store_true", help="count bad records and missing images, not fail")
    parser.add_argument("--no-check-images", action="store_true", help="do not check that the images exist")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        summary = llava_to_captions(
            args.json_path,
            args.out_path,
            image_folder=args.image_folder,
            min_words=args.min_words,
            dedupe=not args.keep_duplicates,
            skip_invalid=args.skip_invalid,
            check_images=not args.no_check_images,
        )
    except (ValueError, OSError) as error:  # a bad file or record (the message names it): no traceback
        raise SystemExit(f"error: {error}") from error
    print(format_summary(summary, args.min_words))


if __name__ == "__main__":
    main()
