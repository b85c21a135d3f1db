"""MMVP-VLM (``tsb0601/MMVP``, ``scripts/evaluate_vlm.py``; data: ``MMVP/MMVP_VLM`` on the Hub) loader.

``Questions.csv``: a header (``Question ID,Type,Statement``) then one row per image, read as
``qid, qtype, statement``; consecutive rows form a pair. The images are
``MLLM_VLM Images/<qtype of the pair's first row>/<qid>.jpg`` (both in the first row's folder). The
official script prompts ``"a photo of " + statement`` and takes a statement's right image to be the
pair's first when its qid is odd, the second when even (qids run 1, 2, 3, ...: statement 1 goes with
image 1). A pair counts when both statements pick their image (``softmax > 0.5`` over the two images:
for statement 1, ``s(i1, t1) > s(i2, t1)``; for statement 2 a tie picks image 2). Categories are 15
pairs each, in the order of :data:`MMVP_CATEGORIES` (the script labels them by position).
"""

from __future__ import annotations

import csv
from pathlib import Path

from datamodules.benchmarks.base import Benchmark, BenchmarkFormatError, ImageRef, Item, MalformedRecord, resolve_image

MMVP_CATEGORIES: tuple[str, ...] = (
    "Orientation and Direction",
    "Presence of Specific Features",
    "State and Condition",
    "Quantity and Count",
    "Positional and Relational Context",
    "Color and Appearance",
    "Structural Characteristics",
    "Texts",
    "Viewpoint and Perspective",
)
MMVP_PAIRS_PER_CATEGORY = 15
MMVP_PROMPT = "a photo of "
MMVP_IMAGE_FOLDER = "MLLM_VLM Images"


def load_mmvp(
    questions_csv: str | Path,
    image_root: str | Path | None = None,
    skip_missing: bool = False,
    prompt: str = MMVP_PROMPT,
) -> Benchmark:
    """MMVP-VLM as ``"mmvp_vlm"`` (protocol ``"mmvp"``).

    Args:
        questions_csv: the dataset's ``Questions.csv``.
        image_root: the ``MLLM_VLM Images`` folder (default: next to ``questions_csv``).
        skip_missing: skip (and count) pairs with a missing image or malformed rows instead of raising.
        prompt: prefix of every statement (the official ``"a photo of "``; ``""`` for the bare statements).

    Items: ``id = "<qid1>-<qid2>"``, ``images = [<type>/<qid1>.jpg, <type>/<qid2>.jpg]``, ``texts =
    [prompt + statement1, prompt + statement2]`` (``texts[k]`` matches ``images[k]``), ``group`` = the
    pair's ``Type`` (its image folder), ``meta = {"qids": (qid1, qid2), "category": ...}`` where
    ``category`` is the official script's label for the pair's position (:data:`MMVP_CATEGORIES`, 15
    pairs each; absent past the ninth block). A pair's qids must be one odd, one even (the
    official ground truth is the qid's parity; were the first qid even, the statements are swapped so that
    ``texts[k]`` still matches ``images[k]``).
    """
    path = Path(questions_csv)
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: file does not exist")
    root = Path(image_root) if image_root is not None else path.parent / MMVP_IMAGE_FOLDER
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise BenchmarkFormatError(f"{path}: no rows after the header")
    rows = rows[1:]
    items: list[Item] = []
    skipped = 0
    if len(rows) % 2:
        if not skip_missing:
            raise BenchmarkFormatError(
                f"{path}, record {rows[-1][0] if rows[-1] else '?'}: "
                f"odd number of rows ({len(rows)}); the last has no pair"
            )
        skipped += 1
        rows = rows[:-1]
    for position in range(len(rows) // 2):
        first, second = rows[2 * position], rows[2 * position + 1]
        rid = f"{first[0].strip() if first else '?'}-{second[0].strip() if second else '?'}"
        where = f"{path}, record {rid}"
        try:
            if len(first) != 3 or len(second) != 3:
                raise MalformedRecord("expected 3 columns (Question ID, Type, Statement) per row")
            try:
                qid1, qid2 = int(first[0]), int(second[0])
            except ValueError:
                raise MalformedRecord("non-integer Question ID") from None
            if qid1 % 2 == qid2 % 2:
                raise MalformedRecord(
                    f"the pair's qids {qid1}, {qid2} have the same parity (the official ground "
                    "truth: an odd qid's statement matches the pair's first image)"
                )
            qtype = first[1]
            statements = [first[2], second[2]]
            if not qtype.strip() or not all(s.strip() for s in statements):
                raise MalformedRecord("empty Type or Statement")
            if qid1 % 2 == 0:  # statement 1 matches image 2: put the statements in image order
                statements.reverse()
        except MalformedRecord as error:
            if skip_missing:
                skipped += 1
                continue
            raise BenchmarkFormatError(f"{where}: {error}") from None
        images = [resolve_image(root, f"{qtype}/{qid}.jpg", where, skip_missing) for qid in (qid1, qid2)]
        if None in images:
            skipped += 1
            continue
        meta: dict = {"qids": (qid1, qid2)}
        block = position // MMVP_PAIRS_PER_CATEGORY
        if block < len(MMVP_CATEGORIES):
            meta["category"] = MMVP_CATEGORIES[block]
        items.append(
            Item(
                id=rid,
                images=[ImageRef(image) for image in images],
                texts=[prompt + statement for statement in statements],
                group=qtype,
                meta=meta,
            )
        )
    return Benchmark(
        name="mmvp_vlm", protocol="mmvp", items=items, source=str(path), skipped=skipped, options={"prompt": prompt}
    )
