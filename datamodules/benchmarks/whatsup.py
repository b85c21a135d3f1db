"""What'sUp (``amitakamath/whatsup_vlms``, ``dataset_zoo/aro_datasets.py``) loaders.

Every file lists its caption options with the right one first (the README: "the first option is always
the correct one"); the official ``evaluate_scores`` counts ``argmax == 0``.

* Controlled Images A / B: ``controlled_images_dataset.json`` / ``controlled_clevr_dataset.json``, JSON
  lists of ``{"image_path": "data/controlled_images/<obj1>_<rel>_<obj2>.jpeg", "caption_options": [4]}``
  (``data/controlled_clevr/...`` for B). The official code keys an image by ``(obj1, obj2)`` = the first
  and last ``_``-separated parts of the file name (extension dropped) and its relation by the second part:
  ``left`` / ``right`` / ``on`` / ``under`` (A), ``left`` / ``right`` / ``in-front`` / ``behind`` (B). A
  *pair* is left+right or on+under (A) / in-front+behind (B) of the same key, both right; a *set* is the
  four images of a key, all right.
* COCO-spatial / GQA-spatial: ``coco_qa_{one,two}_obj.json`` and ``vg_qa_{one,two}_obj.json``, JSON lists
  of ``[image_id, true_caption, false_caption]``; images ``val2017/<id zero-padded to 12>.jpg`` (COCO 2017
  val) and ``vg_images/<id>.jpg``. The paper and code report only per-image accuracy for these subsets: no
  pairs or sets are defined, so their items carry none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from datamodules.benchmarks.base import (
    Benchmark,
    BenchmarkFormatError,
    ImageRef,
    Item,
    MalformedRecord,
    resolve_image,
)

# relation word in the file name -> (official preposition label, pair name, caption keyword)
_CONTROLLED_RELATIONS: dict[str, dict[str, tuple[str, str, str]]] = {
    "A": {
        "left": ("left_of", "left_right", "left"),
        "right": ("right_of", "left_right", "right"),
        "on": ("on", "on_under", "on"),
        "under": ("under", "on_under", "under"),
    },
    "B": {
        "left": ("left_of", "left_right", "left"),
        "right": ("right_of", "left_right", "right"),
        "in-front": ("in-front_of", "front_behind", "front"),
        "behind": ("behind", "front_behind", "behind"),
    },
}
_PARTNER = {"left": "right", "right": "left", "on": "under", "under": "on", "in-front": "behind", "behind": "in-front"}
# the official evaluate_scores' preposition words
_PREPOSITION_WORDS = frozenset({"on", "under", "front", "behind", "left", "right"})

WHATSUP_FILES: dict[str, str] = {
    "controlled_a": "controlled_images_dataset.json",
    "controlled_b": "controlled_clevr_dataset.json",
    "coco_one": "coco_qa_one_obj.json",
    "coco_two": "coco_qa_two_obj.json",
    "gqa_one": "vg_qa_one_obj.json",
    "gqa_two": "vg_qa_two_obj.json",
}


def _read_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise BenchmarkFormatError(f"{path}: file does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BenchmarkFormatError(f"{path}: cannot parse JSON ({error})") from error
    if not isinstance(data, list) or not data:
        raise BenchmarkFormatError(f"{path}: expected a non-empty JSON list of records")
    return data


def _options(values: Any, where: str) -> list[str]:
    if not isinstance(values, list) or not values:
        raise BenchmarkFormatError(f"{where}: empty or missing caption options")
    if not all(isinstance(v, str) and v.strip() for v in values):
        raise MalformedRecord("caption options must be non-empty strings")
    if len(values) < 2:
        raise MalformedRecord(f"only {len(values)} caption option")
    return list(values)


def _controlled_image(root: Path, image_path: str, where: str, skip_missing: bool) -> str | None:
    """``image_path`` is relative to the What'sUp repository (``data/controlled_images/x.jpeg``): found
    under ``root`` as given, without its leading ``data/``, or by file name alone."""
    relative = PurePosixPath(image_path)
    candidates = [relative]
    if relative.parts and relative.parts[0] == "data":
        candidates.append(PurePosixPath(*relative.parts[1:]))
    candidates.append(PurePosixPath(relative.name))
    for candidate in candidates:
        found = resolve_image(root, str(candidate), where, skip_missing=True)
        if found is not None:
            return found
    if skip_missing:
        return None
    tried = ", ".join(str(root / c) for c in dict.fromkeys(candidates))
    raise BenchmarkFormatError(
        f"{where}: image {image_path} does not exist (tried {tried}; skip_missing: true skips such items)"
    )


def _keyword_of(caption: str) -> set[str]:
    return _PREPOSITION_WORDS.intersection(caption.split())


def load_whatsup_controlled(
    json_path: str | Path, image_root: str | Path, subset: str | None = None, skip_missing: bool = False
) -> Benchmark:
    """Controlled Images A or B as ``"whatsup/controlled_a"`` / ``"whatsup/controlled_b"`` (``"whatsup"``).

    Args:
        json_path: ``controlled_images_dataset.json`` (A) or ``controlled_clevr_dataset.json`` (B).
        image_root: the What'sUp ``data`` folder (holding ``controlled_images/`` / ``controlled_clevr/``);
            the repository root or the image folder itself work too.
        subset: ``"A"`` or ``"B"``; inferred from the file name when None.
        skip_missing: skip (and count) records with a missing image or malformed fields instead of raising;
            an empty option list always raises.

    Items (``id`` = list index): ``texts`` = the four options (right one first), ``meta = {"answer": 0,
    "relation", "pair": "<obj1>|<obj2>|<left_right|on_under|front_behind>", "set": "<obj1>|<obj2>",
    "caption_pair": (0, index of the pair partner's caption)}``, ``group`` = the official preposition
    label (``left_of``, ``right_of``, ``on``, ``under``, ``in-front_of``, ``behind``). ``caption_pair`` is
    left out when the partner image is not in the file (or was skipped) or its caption is not among the
    options. A pair or set missing a member (skipped) can never be all right, as in the official counts.
    """
    path = Path(json_path)
    if subset is None:
        subset = "B" if "clevr" in path.name else "A" if "controlled_images" in path.name else None
        if subset is None:
            raise BenchmarkFormatError(f"{path}: cannot tell Controlled Images A from B; pass subset='A' or 'B'")
    subset = subset.upper()
    if subset not in _CONTROLLED_RELATIONS:
        raise ValueError(f"subset must be 'A' or 'B', got {subset!r}")
    relations = _CONTROLLED_RELATIONS[subset]
    items: list[Item] = []
    skipped = 0
    keys: dict[int, tuple[str, str, str]] = {}  # item position -> (obj1, obj2, relation)
    for index, record in enumerate(_read_list(path)):
        rid = str(index)
        where = f"{path}, record {rid}"
        try:
            if not isinstance(record, Mapping):
                raise MalformedRecord(f"expected an object, got {type(record).__name__}")
            image_path = record.get("image_path")
            if not isinstance(image_path, str) or not image_path.strip():
                raise MalformedRecord("missing or empty 'image_path'")
            texts = _options(record.get("caption_options"), where)
            parts = PurePosixPath(image_path).stem.split("_")
            if len(parts) < 3 or parts[1] not in relations:
                raise MalformedRecord(
                    f"image name {PurePosixPath(image_path).name!r} is not <obj1>_<relation>_<obj2> "
                    f"with a relation in {sorted(relations)}"
                )
        except MalformedRecord as error:
            if skip_missing:
                skipped += 1
                continue
            raise BenchmarkFormatError(f"{where}: {error}") from None
        image = _controlled_image(Path(image_root), image_path, where, skip_missing)
        if image is None:
            skipped += 1
            continue
        obj1, relation, obj2 = parts[0], parts[1], parts[-1]
        label, pair_name, _ = relations[relation]
        keys[len(items)] = (obj1, obj2, relation)
        items.append(
            Item(
                id=rid,
                images=[ImageRef(image)],
                texts=texts,
                group=label,
                meta={"answer": 0, "relation": relation, "pair": f"{obj1}|{obj2}|{pair_name}", "set": f"{obj1}|{obj2}"},
            )
        )
    by_key = {key: position for position, key in keys.items()}
    for position, (obj1, obj2, relation) in keys.items():
        partner = by_key.get((obj1, obj2, _PARTNER[relation]))
        if partner is None:
            continue
        texts = items[position].texts
        wanted = items[partner].texts[0]
        index = texts.index(wanted) if wanted in texts else None
        if index is None:  # not verbatim: the option naming the partner's preposition
            keyword = relations[_PARTNER[relation]][2]
            matches = [k for k, text in enumerate(texts) if _keyword_of(text) == {keyword}]
            index = matches[0] if len(matches) == 1 else None
        if index is not None and index != 0:
            items[position].meta["caption_pair"] = (0, index)
    return Benchmark(
        name=f"whatsup/controlled_{subset.lower()}", protocol="whatsup", items=items, source=str(path), skipped=skipped
    )


def _qa_group(caption: str, source: str, objects: str) -> str:
    """The official per-preposition label (``COCO_QA`` / ``VG_QA.__init__``)."""
    if objects == "one":
        return caption.split()[-1]
    if "left of" in caption:
        return "left"
    if "right of" in caption:
        return "right"
    if source == "coco":
        return "above" if "above" in caption else "below"
    if "front of" in caption:
        return "front"
    return "behind" if "behind" in caption else "top"


def load_whatsup_qa(
    json_path: str | Path, image_root: str | Path, source: str, objects: str, skip_missing: bool = False
) -> Benchmark:
    """COCO-spatial or GQA-spatial as ``"whatsup/{coco,gqa}_{one,two}"`` (protocol ``"whatsup"``).

    Args:
        json_path: ``coco_qa_one_obj.json`` / ``coco_qa_two_obj.json`` (``source="coco"``) or
            ``vg_qa_one_obj.json`` / ``vg_qa_two_obj.json`` (``source="gqa"``).
        image_root: the folder of the images: COCO-2017 ``val2017`` (``<id:012d>.jpg``) or What'sUp's
            ``vg_images`` (``<id>.jpg``).
        source: ``"coco"`` or ``"gqa"``.
        objects: ``"one"`` or ``"two"``.
        skip_missing: skip (and count) records with a missing image or malformed fields; an empty option
            list always raises.

    Items (``id`` = list index): ``texts = [true_caption, false_caption]``, ``meta={"answer": 0}`` (no
    pair / set: the paper defines none for these subsets), ``group`` = the official preposition label.
    """
    if source not in ("coco", "gqa") or objects not in ("one", "two"):
        raise ValueError(f"source must be 'coco' or 'gqa' and objects 'one' or 'two', got {source!r}, {objects!r}")
    path = Path(json_path)
    items: list[Item] = []
    skipped = 0
    for index, record in enumerate(_read_list(path)):
        rid = str(index)
        where = f"{path}, record {rid}"
        try:
            if not isinstance(record, list) or len(record) < 1:
                raise MalformedRecord("expected [image_id, true_caption, false_caption]")
            if len(record) < 2:
                raise BenchmarkFormatError(f"{where}: empty or missing caption options")
            image_id = record[0]
            if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or not str(image_id).strip():
                raise MalformedRecord(f"bad image id {image_id!r}")
            texts = _options(list(record[1:]), where)
            if len(texts) != 2:
                raise MalformedRecord(f"expected 2 caption options, got {len(texts)}")
            name = f"{str(image_id).zfill(12)}.jpg" if source == "coco" else f"{image_id}.jpg"
        except MalformedRecord as error:
            if skip_missing:
                skipped += 1
                continue
            raise BenchmarkFormatError(f"{where}: {error}") from None
        image = resolve_image(image_root, name, where, skip_missing)
        if image is None:
            skipped += 1
            continue
        items.append(
            Item(
                id=rid,
                images=[ImageRef(image)],
                texts=texts,
                group=_qa_group(texts[0], source, objects),
                meta={"answer": 0},
            )
        )
    return Benchmark(
        name=f"whatsup/{source}_{objects}", protocol="whatsup", items=items, source=str(path), skipped=skipped
    )


def load_whatsup(
    data_dir: str | Path,
    coco_image_root: str | Path | None = None,
    gqa_image_root: str | Path | None = None,
    skip_missing: bool = False,
) -> list[Benchmark]:
    """Every What'sUp subset whose JSON is in ``data_dir`` (the official ``data`` layout), in the order
    controlled_a, controlled_b, coco_one, coco_two, gqa_one, gqa_two.

    Images: ``data_dir/controlled_images``, ``data_dir/controlled_clevr``, ``coco_image_root`` (default
    ``data_dir/val2017``) and ``gqa_image_root`` (default ``data_dir/vg_images``).
    """
    root = Path(data_dir)
    benchmarks = []
    for key, filename in WHATSUP_FILES.items():
        path = root / filename
        if not path.is_file():
            continue
        if key.startswith("controlled"):
            benchmarks.append(load_whatsup_controlled(path, root, key[-1].upper(), skip_missing))
        else:
            source, objects = key.split("_")
            if source == "coco":
                images = coco_image_root if coco_image_root is not None else root / "val2017"
            else:
                images = gqa_image_root if gqa_image_root is not None else root / "vg_images"
            benchmarks.append(load_whatsup_qa(path, images, source, objects, skip_missing))
    if not benchmarks:
        raise BenchmarkFormatError(f"{root}: none of the What'sUp files {sorted(WHATSUP_FILES.values())}")
    return benchmarks
