"""SugarCrepe (``RAIVNLab/sugar-crepe``) and SugarCrepe++ (``Sri-Harsha/scpp``) loaders.

SugarCrepe: seven JSON files ``data/<category>.json``, each a dict ``{key: {"filename", "caption",
"negative_caption"}}`` over COCO-2017 *val* images (``--coco_image_root .../val2017``). The official
``main_eval.py`` counts an item right iff ``pos_score > neg_score`` (a tie is wrong), per category.

SugarCrepe++: five JSON files ``data/<category>.json`` (replace_att, replace_obj, replace_rel, swap_att,
swap_obj), each a *list* of ``{"id", "filename", "caption", "caption2", "negative_caption"}`` over the
same COCO images. The official ``VLMs/test_*.py`` scripts score ITT (both captions closer to the image
than the negative) and TOT (``cos(p1, p2)`` above both ``cos(p1, neg)`` and ``cos(p2, neg)``), all strict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datamodules.benchmarks.base import (
    Benchmark,
    BenchmarkFormatError,
    ImageRef,
    Item,
    MalformedRecord,
    read_json,
    required_text,
    resolve_image,
)

SUGARCREPE_CATEGORIES: tuple[str, ...] = (
    "add_att",
    "add_obj",
    "replace_att",
    "replace_obj",
    "replace_rel",
    "swap_att",
    "swap_obj",
)
# The paper's Table: REPLACE (object, attribute, relation), SWAP (object, attribute), ADD (object, attribute).
SUGARCREPE_FAMILIES: dict[str, tuple[str, ...]] = {
    "replace": ("replace_obj", "replace_att", "replace_rel"),
    "swap": ("swap_obj", "swap_att"),
    "add": ("add_obj", "add_att"),
}
SUGARCREPE_PP_CATEGORIES: tuple[str, ...] = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
# An early release of the SugarCrepe repository named the object files *_ent.json.
_LEGACY_NAMES = {"add_ent": "add_obj", "replace_ent": "replace_obj", "swap_ent": "swap_obj"}


def _category_files(
    json_dir_or_files: str | Path | Sequence[str | Path], known: tuple[str, ...], what: str
) -> list[tuple[str, Path]]:
    """(category, file) pairs in ``known`` order: every category's file from a directory, or the given
    files (category = file stem, which must be one of ``known``)."""
    if isinstance(json_dir_or_files, (str, Path)) and Path(json_dir_or_files).is_dir():
        root = Path(json_dir_or_files)
        found, missing = [], []
        for category in known:
            path = root / f"{category}.json"
            legacy = [root / f"{old}.json" for old, new in _LEGACY_NAMES.items() if new == category]
            if not path.is_file() and legacy and legacy[0].is_file() and what == "SugarCrepe":
                path = legacy[0]
            (found if path.is_file() else missing).append((category, path))
        if missing:
            raise BenchmarkFormatError(
                f"{root}: {what} category file(s) missing: {', '.join(path.name for _, path in missing)}"
            )
        return found
    paths = [json_dir_or_files] if isinstance(json_dir_or_files, (str, Path)) else list(json_dir_or_files)
    if not paths:
        raise BenchmarkFormatError(f"{what}: no JSON files given")
    by_category: dict[str, Path] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise BenchmarkFormatError(f"{path}: file does not exist")
        category = _LEGACY_NAMES.get(path.stem, path.stem) if what == "SugarCrepe" else path.stem
        if category not in known:
            raise BenchmarkFormatError(f"{path}: not a {what} category file (expected one of {list(known)})")
        if category in by_category:
            raise BenchmarkFormatError(f"{path}: category {category!r} given twice (also {by_category[category]})")
        by_category[category] = path
    return [(category, by_category[category]) for category in known if category in by_category]


def _build(
    name: str,
    protocol: str,
    path: Path,
    records: list[tuple[str, Any]],
    text_keys: tuple[str, ...],
    image_root: str | Path,
    skip_missing: bool,
    meta: dict[str, Any],
) -> Benchmark:
    items: list[Item] = []
    skipped = 0
    for rid, record in records:
        where = f"{path}, record {rid}"
        try:
            if not isinstance(record, Mapping):
                raise MalformedRecord(f"expected an object, got {type(record).__name__}")
            filename = required_text(record, "filename")
            texts = [required_text(record, key) for key in text_keys]
        except MalformedRecord as error:
            if skip_missing:
                skipped += 1
                continue
            raise BenchmarkFormatError(f"{where}: {error}") from None
        image = resolve_image(image_root, filename, where, skip_missing)
        if image is None:
            skipped += 1
            continue
        items.append(Item(id=rid, images=[ImageRef(image)], texts=texts, meta=dict(meta)))
    return Benchmark(name=name, protocol=protocol, items=items, source=str(path), skipped=skipped)


def load_sugarcrepe(
    json_dir_or_files: str | Path | Sequence[str | Path], image_root: str | Path, skip_missing: bool = False
) -> list[Benchmark]:
    """SugarCrepe's categories as ``"sugarcrepe/<category>"`` multiple-choice benchmarks.

    Args:
        json_dir_or_files: the repository's ``data/`` directory (all seven files must be there; the
            early ``*_ent.json`` names are accepted for ``*_obj``) or some of the category files.
        image_root: the COCO-2017 ``val2017`` folder (``filename`` is relative to it).
        skip_missing: skip (and count in ``Benchmark.skipped``) records whose image is missing or that
            are malformed, instead of raising :class:`BenchmarkFormatError`.

    Each item: ``images=[image]``, ``texts=[caption, negative_caption]``, ``meta={"answer": 0}``, ``id``
    = the record's key; benchmarks in :data:`SUGARCREPE_CATEGORIES` order.
    """
    benchmarks = []
    for category, path in _category_files(json_dir_or_files, SUGARCREPE_CATEGORIES, "SugarCrepe"):
        data = read_json(path)
        if not isinstance(data, dict) or not data:
            raise BenchmarkFormatError(f"{path}: expected a non-empty JSON object {{id: record}}")
        benchmarks.append(
            _build(
                f"sugarcrepe/{category}",
                "multiple_choice",
                path,
                list(data.items()),
                ("caption", "negative_caption"),
                image_root,
                skip_missing,
                {"answer": 0},
            )
        )
    return benchmarks


def load_sugarcrepe_pp(
    json_dir_or_files: str | Path | Sequence[str | Path], image_root: str | Path, skip_missing: bool = False
) -> list[Benchmark]:
    """SugarCrepe++'s categories as ``"sugarcrepe_pp/<category>"`` benchmarks (protocol ``"sugarcrepe_pp"``).

    Args:
        json_dir_or_files: the repository's ``data/`` directory (all five files must be there) or some
            of the category files.
        image_root: the COCO-2017 ``val2017`` folder.
        skip_missing: as in :func:`load_sugarcrepe`.

    Each item: ``images=[image]``, ``texts=[caption, caption2, negative_caption]`` (P1, P2, N), ``id`` =
    the record's ``id`` (its list index when absent). Some official records have a negative identical to
    a positive; they are kept (such an item can never be right under the strict comparisons).
    """
    benchmarks = []
    for category, path in _category_files(json_dir_or_files, SUGARCREPE_PP_CATEGORIES, "SugarCrepe++"):
        data = read_json(path)
        if not isinstance(data, list) or not data:
            raise BenchmarkFormatError(f"{path}: expected a non-empty JSON list of records")
        records = [
            (str(r["id"]) if isinstance(r, Mapping) and r.get("id") is not None else str(i), r)
            for i, r in enumerate(data)
        ]
        benchmarks.append(
            _build(
                f"sugarcrepe_pp/{category}",
                "sugarcrepe_pp",
                path,
                records,
                ("caption", "caption2", "negative_caption"),
                image_root,
                skip_missing,
                {},
            )
        )
    return benchmarks


def sugarcrepe_averages(accuracies: Mapping[str, float]) -> dict[str, float]:
    """The paper's REPLACE / SWAP / ADD figures: the unweighted mean of each family's categories.

    ``accuracies`` maps categories (``"replace_obj"`` or ``"sugarcrepe/replace_obj"``) to accuracies;
    returns ``{"replace", "swap", "add"}``, leaving out a family whose categories are not all given.
    """
    by_category = {key.rsplit("/", 1)[-1]: float(value) for key, value in accuracies.items()}
    return {
        family: sum(by_category[c] for c in members) / len(members)
        for family, members in SUGARCREPE_FAMILIES.items()
        if all(c in by_category for c in members)
    }
