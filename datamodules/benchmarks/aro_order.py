"""ARO's COCO-Order / Flickr30k-Order loaders (``mertyg/vision-language-models-are-bows``).

COCO-Order / Flickr30k-Order: for every caption of every Karpathy *test* image, the options are the
caption and its four ``TextShuffler`` perturbations (nouns and adjectives shuffled, everything but nouns
and adjectives shuffled, within-trigram shuffle, trigram shuffle), all passed through ``pre_caption``
(lower-case, ``.!"()*#:;~`` removed, 30 words); the right answer is index 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datamodules.benchmarks.base import Benchmark, BenchmarkFormatError, ImageRef, Item, read_json, resolve_image

ARO_ORDER_PERTURBATIONS: tuple[str, ...] = (
    "shuffle_nouns_and_adj",
    "shuffle_allbut_nouns_and_adj",
    "shuffle_within_trigrams",
    "shuffle_trigrams",
)
ARO_ORDER_MAX_WORDS = 30


def _order_annotations(path: Path, split: str) -> list[tuple[str, list[Any]]]:
    """(image path relative to the image root, captions) per image, in file order.

    Reads ARO's own annotation files (BLIP's ``coco_karpathy_test.json`` / ``flickr30k_test.json``: a list
    of ``{"image", "caption": [...]}``) or Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json``
    (``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}]}]}``, images of ``split``).
    """
    data = read_json(path)
    annotations: list[tuple[str, list[Any]]] = []
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        for index, image in enumerate(data["images"]):
            if not isinstance(image, Mapping) or image.get("split") != split:
                continue
            filename = image.get("filename")
            sentences = image.get("sentences")
            if not isinstance(filename, str) or not filename or not isinstance(sentences, list):
                raise BenchmarkFormatError(f"{path}, image {index}: missing 'filename' or 'sentences'")
            name = f"{image['filepath']}/{filename}" if image.get("filepath") else filename
            annotations.append((name, [s.get("raw") if isinstance(s, Mapping) else None for s in sentences]))
    elif isinstance(data, list):
        for index, ann in enumerate(data):
            if (
                not isinstance(ann, Mapping)
                or not isinstance(ann.get("image"), str)
                or not isinstance(ann.get("caption"), list)
            ):
                raise BenchmarkFormatError(f"{path}, image {index}: expected {{'image': str, 'caption': [str]}}")
            annotations.append((ann["image"], list(ann["caption"])))
    else:
        raise BenchmarkFormatError(f"{path}: expected ARO's annotation list or a Karpathy {{'images': [...]}} file")
    if not annotations:
        raise BenchmarkFormatError(f"{path}: no {split!r} images")
    return annotations


def _load_order(
    name: str,
    annotation_path: str | Path,
    image_root: str | Path,
    skip_missing: bool,
    reference_ties: bool,
    seed: int,
    split: str,
    engine: Any | None,
) -> Benchmark:
    from datamodules.text_augment import aro_pre_caption

    path = Path(annotation_path)
    annotations = _order_annotations(path, split)
    if engine is None:
        from datamodules.text_augment import HardNegativeEngine

        engine = HardNegativeEngine(list(ARO_ORDER_PERTURBATIONS), seed=seed)
    warm = getattr(engine, "warm", None)
    if callable(warm):  # batch-parse every caption once (spaCy's nlp.pipe) before the per-caption calls
        warm([c for _, captions in annotations for c in captions if isinstance(c, str) and c.strip()])
    items: list[Item] = []
    skipped = 0
    tied = 0
    case_index = -1  # every caption of the file, in order: the engine's sample index
    for image_index, (image_name, captions) in enumerate(annotations):
        image: str | None = None
        missing = False
        for caption_index, caption in enumerate(captions):
            case_index += 1
            rid = f"{image_index}_{caption_index}"
            where = f"{path}, record {rid}"
            original = aro_pre_caption(caption, ARO_ORDER_MAX_WORDS) if isinstance(caption, str) else ""
            if not original:
                if skip_missing:
                    skipped += 1
                    continue
                raise BenchmarkFormatError(f"{where}: missing or empty caption")
            if image is None and not missing:
                image = resolve_image(image_root, image_name, where, skip_missing)
                missing = image is None
            if image is None:
                skipped += 1
                continue
            perturbed = engine(caption, case_index, epoch=0)
            if len(perturbed) != len(ARO_ORDER_PERTURBATIONS):
                raise BenchmarkFormatError(
                    f"{where}: the text engine returned {len(perturbed)} perturbations, "
                    f"expected {len(ARO_ORDER_PERTURBATIONS)}"
                )
            texts = [original] + [original if p is None else aro_pre_caption(p, ARO_ORDER_MAX_WORDS) for p in perturbed]
            unchanged = [k for k in range(1, len(texts)) if texts[k] == original]
            tied += bool(unchanged)
            items.append(
                Item(id=rid, images=[ImageRef(image)], texts=texts, meta={"answer": 0, "unchanged": unchanged})
            )
    options = {
        "tie_rule": "first_max" if reference_ties else "strict",
        "perturbations": list(ARO_ORDER_PERTURBATIONS),
        "seed": seed,
        "max_words": ARO_ORDER_MAX_WORDS,
        "tied_items": tied,
    }
    return Benchmark(
        name=name, protocol="multiple_choice", items=items, source=str(path), skipped=skipped, options=options
    )


def load_coco_order(
    annotation_path: str | Path,
    image_root: str | Path,
    skip_missing: bool = False,
    reference_ties: bool = False,
    seed: int = 0,
    split: str = "test",
    engine: Any | None = None,
) -> Benchmark:
    """ARO's COCO-Order as ``"aro/coco_order"``: multiple choice over the caption and 4 shuffles.

    Args:
        annotation_path: ARO's ``coco_karpathy_test.json`` (``[{"image", "caption": [...]}]``) or
            Karpathy's ``dataset_coco.json`` (``{"images": [...]}``; the images whose ``split`` is
            ``split``, path ``filepath/filename``).
        image_root: the folder those image paths are relative to (ARO's COCO root, holding ``val2014/``).
        skip_missing: skip (and count, per caption) missing images and empty captions instead of raising.
        reference_ties: how a tie between the right option and another is scored, recorded as
            ``Benchmark.options["tie_rule"]``. A perturbation the engine cannot make different (it returns
            None; ARO keeps such a caption unchanged), or one that only differs before ``pre_caption`` or
            beyond the 30th word, gives an option *equal to the original*: an exact similarity tie
            (``meta["unchanged"]`` lists such options, ``options["tied_items"]`` counts such items).
            False (default), ``"strict"``: ties are failures, as in every other benchmark, so such an item
            is always wrong. True, ``"first_max"``: ARO's ``np.argmax`` takes the first maximum, so a tie
            with the original (index 0) counts as right; this reproduces ARO's own figures.
        seed: seed of the perturbations: ``HardNegativeEngine(ARO_ORDER_PERTURBATIONS, seed)`` called as
            ``engine(raw_caption, caption_index, epoch=0)``, ``caption_index`` counting every caption of
            the file in order (ARO's shuffles are unseeded numpy draws).
        split: the split read from a Karpathy file (ARO's own file is the test split).
        engine: a ready engine with that call signature instead of building one.

    Items: ``id = f"{image_index}_{caption_index_in_image}"``, ``images=[image]``, ``texts =
    [pre(caption)] + [pre(perturbation), or pre(caption) where the engine returned None]`` with ARO's
    ``pre_caption`` at 30 words, ``meta={"answer": 0, "unchanged": [option indices equal to texts[0]]}``.
    """
    return _load_order("aro/coco_order", annotation_path, image_root, skip_missing, reference_ties, seed, split, engine)


def load_flickr30k_order(
    annotation_path: str | Path,
    image_root: str | Path,
    skip_missing: bool = False,
    reference_ties: bool = False,
    seed: int = 0,
    split: str = "test",
    engine: Any | None = None,
) -> Benchmark:
    """ARO's Flickr30k-Order as ``"aro/flickr30k_order"``; as :func:`load_coco_order`.

    ``annotation_path``: ARO's ``flickr30k_test.json`` (image paths ``flickr30k-images/<id>.jpg``, relative
    to ARO's Flickr30k root) or Karpathy's ``dataset_flickr30k.json`` (bare file names: ``image_root`` is
    then the image folder itself).
    """
    return _load_order(
        "aro/flickr30k_order", annotation_path, image_root, skip_missing, reference_ties, seed, split, engine
    )
