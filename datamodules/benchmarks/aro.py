"""ARO (``mertyg/vision-language-models-are-bows``, ``dataset_zoo/aro_datasets.py``) loaders.

VG-Relation / VG-Attribution: ``visual_genome_relation.json`` / ``visual_genome_attribution.json``, JSON
lists of ``{"image_path", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "true_caption", "false_caption", ...}``
with ``"relation_name"`` (VG-R) or ``"attributes": [a, b]`` (VG-A); images under ``<root>/images``. ARO
crops ``(x, y, x + w, y + h)``, so the box is (x, y, width, height), and orders the captions
``[false, true]`` (the right answer is index 1). Its figures are macro accuracies:

* VG-R: ``evaluate_scores`` keeps every relation with at least one item; the paper's figure (notebook
  ``Replicate ARO! VG-Relation, VG-Attribution.ipynb``) then drops the symmetric relations listed in
  :data:`ARO_SYMMETRIC_RELATIONS` before averaging.
* VG-A: ``evaluate_scores`` keeps attribute pairs (``"<a>_<b>"``) with at least 25 items.

COCO-Order / Flickr30k-Order live in :mod:`datamodules.benchmarks.aro_order` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from datamodules.benchmarks.aro_order import (
    ARO_ORDER_MAX_WORDS,
    ARO_ORDER_PERTURBATIONS,
    load_coco_order,
    load_flickr30k_order,
)
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

VG_ATTRIBUTION_MIN_ITEMS = 25
# Relations the ARO notebook removes before the VG-Relation macro average (verbatim, its order).
ARO_SYMMETRIC_RELATIONS: tuple[str, ...] = (
    "adjusting",
    "attached to",
    "between",
    "bigger than",
    "biting",
    "boarding",
    "brushing",
    "chewing",
    "cleaning",
    "climbing",
    "close to",
    "coming from",
    "coming out of",
    "contain",
    "crossing",
    "dragging",
    "draped over",
    "drinking",
    "drinking from",
    "driving",
    "driving down",
    "driving on",
    "eating from",
    "eating in",
    "enclosing",
    "exiting",
    "facing",
    "filled with",
    "floating in",
    "floating on",
    "flying",
    "flying above",
    "flying in",
    "flying over",
    "flying through",
    "full of",
    "going down",
    "going into",
    "going through",
    "grazing in",
    "growing in",
    "growing on",
    "guiding",
    "hanging from",
    "hanging in",
    "hanging off",
    "hanging over",
    "higher than",
    "holding onto",
    "hugging",
    "in between",
    "jumping off",
    "jumping on",
    "jumping over",
    "kept in",
    "larger than",
    "leading",
    "leaning over",
    "leaving",
    "licking",
    "longer than",
    "looking in",
    "looking into",
    "looking out",
    "looking over",
    "looking through",
    "lying next to",
    "lying on top of",
    "making",
    "mixed with",
    "mounted on",
    "moving",
    "on the back of",
    "on the edge of",
    "on the front of",
    "on the other side of",
    "opening",
    "painted on",
    "parked at",
    "parked beside",
    "parked by",
    "parked in",
    "parked in front of",
    "parked near",
    "parked next to",
    "perched on",
    "petting",
    "piled on",
    "playing",
    "playing in",
    "playing on",
    "playing with",
    "pouring",
    "reaching for",
    "reading",
    "reflected on",
    "riding on",
    "running in",
    "running on",
    "running through",
    "seen through",
    "sitting behind",
    "sitting beside",
    "sitting by",
    "sitting in front of",
    "sitting near",
    "sitting next to",
    "sitting under",
    "skiing down",
    "skiing on",
    "sleeping in",
    "sleeping on",
    "smiling at",
    "sniffing",
    "splashing",
    "sprinkled on",
    "stacked on",
    "standing against",
    "standing around",
    "standing behind",
    "standing beside",
    "standing in front of",
    "standing near",
    "standing next to",
    "staring at",
    "stuck in",
    "surrounding",
    "swimming in",
    "swinging",
    "talking to",
    "topped with",
    "touching",
    "traveling down",
    "traveling on",
    "tying",
    "typing on",
    "underneath",
    "wading in",
    "waiting for",
    "walking across",
    "walking by",
    "walking down",
    "walking next to",
    "walking through",
    "working in",
    "working on",
    "worn on",
    "wrapped around",
    "wrapped in",
    "by",
    "of",
    "near",
    "next to",
    "with",
    "beside",
    "on the side of",
    "around",
)


def _box(record: Mapping[str, Any]) -> tuple[float, float, float, float]:
    values = []
    for key in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, Real):
            raise MalformedRecord(f"missing or non-numeric {key!r}")
        values.append(float(value))
    if values[2] <= 0 or values[3] <= 0:
        raise MalformedRecord(f"empty box (bbox_w={values[2]:g}, bbox_h={values[3]:g})")
    return values[0], values[1], values[2], values[3]


def _load_vg(json_path: str | Path, image_root: str | Path, skip_missing: bool, relation: bool) -> Benchmark:
    path = Path(json_path)
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise BenchmarkFormatError(f"{path}: expected a non-empty JSON list of records")
    items: list[Item] = []
    skipped = 0
    for index, record in enumerate(data):
        rid = str(index)
        where = f"{path}, record {rid}"
        try:
            if not isinstance(record, Mapping):
                raise MalformedRecord(f"expected an object, got {type(record).__name__}")
            image_name = required_text(record, "image_path")
            box = _box(record)
            texts = [required_text(record, "false_caption"), required_text(record, "true_caption")]
            if relation:
                group = required_text(record, "relation_name")
            else:
                attributes = record.get("attributes")
                if (
                    not isinstance(attributes, (list, tuple))
                    or len(attributes) != 2
                    or not all(isinstance(a, str) and a for a in attributes)
                ):
                    raise MalformedRecord("'attributes' must be a list of two non-empty strings")
                group = f"{attributes[0]}_{attributes[1]}"
        except MalformedRecord as error:
            if skip_missing:
                skipped += 1
                continue
            raise BenchmarkFormatError(f"{where}: {error}") from None
        image = resolve_image(image_root, image_name, where, skip_missing)
        if image is None:
            skipped += 1
            continue
        meta: dict[str, Any] = {"answer": 1}
        if relation:
            meta["symmetric"] = group in ARO_SYMMETRIC_RELATIONS
        items.append(Item(id=rid, images=[ImageRef(image, box)], texts=texts, group=group, meta=meta))
    if relation:
        options = {
            "macro_over_groups": True,
            "macro_min_items": 1,
            "macro_exclude_groups": list(ARO_SYMMETRIC_RELATIONS),
        }
        name = "aro/vg_relation"
    else:
        options = {"macro_over_groups": True, "macro_min_items": VG_ATTRIBUTION_MIN_ITEMS}
        name = "aro/vg_attribution"
    return Benchmark(
        name=name, protocol="multiple_choice", items=items, source=str(path), skipped=skipped, options=options
    )


def load_vg_relation(json_path: str | Path, image_root: str | Path, skip_missing: bool = False) -> Benchmark:
    """ARO's VG-Relation (``visual_genome_relation.json``) as ``"aro/vg_relation"``.

    ``image_root`` is ARO's ``<root>/images`` folder. Item ``id`` = the record's list index,
    ``images=[ImageRef(image, (bbox_x, bbox_y, bbox_w, bbox_h))]``, ``texts=[false_caption,
    true_caption]``, ``meta={"answer": 1, "symmetric": ...}``, ``group`` = ``relation_name``.
    ``options``: macro accuracy over relations with >= 1 item, excluding ``macro_exclude_groups``
    (:data:`ARO_SYMMETRIC_RELATIONS`, as the paper's figure does). ``skip_missing`` skips (and counts)
    records with a missing image or malformed fields instead of raising.
    """
    return _load_vg(json_path, image_root, skip_missing, relation=True)


def load_vg_attribution(json_path: str | Path, image_root: str | Path, skip_missing: bool = False) -> Benchmark:
    """ARO's VG-Attribution (``visual_genome_attribution.json``) as ``"aro/vg_attribution"``.

    As :func:`load_vg_relation`, with ``group = f"{attributes[0]}_{attributes[1]}"``, no ``symmetric``
    meta, and ``options`` = macro accuracy over attribute pairs with >= 25 items (ARO's cut-off).
    """
    return _load_vg(json_path, image_root, skip_missing, relation=False)


__all__ = [
    "ARO_ORDER_MAX_WORDS",
    "ARO_ORDER_PERTURBATIONS",
    "ARO_SYMMETRIC_RELATIONS",
    "VG_ATTRIBUTION_MIN_ITEMS",
    "load_coco_order",
    "load_flickr30k_order",
    "load_vg_attribution",
    "load_vg_relation",
]
