"""Zero-shot image-text retrieval sets: COCO and Flickr30k in Karpathy's split files.

Karpathy's ``dataset_coco.json`` / ``dataset_flickr30k.json`` (``caption_datasets.zip`` of
"Deep Visual-Semantic Alignments") hold ``{"images": [record, ...], "dataset": "coco"}`` with
records like::

    {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "imgid": 0, "split": "test",
     "sentids": [...], "cocoid": 391895,
     "sentences": [{"tokens": ["a", "man", ...], "raw": "A man with a red helmet on a small moped on a dirt road. ",
                    "imgid": 0, "sentid": 770337}, ...]}

Flickr30k records have no ``filepath`` (images sit in one folder). Splits are ``train`` / ``val`` /
``test`` (COCO also ``restval``, which is usually trained on). The test splits are 5,000 COCO images
and 1,000 Flickr30k images; Flickr30k has 5 sentences per image; a few COCO images have more than 5.

Captions are the ``raw`` strings exactly as in the file (COCO's often end with a space). clip_benchmark
reads its own conversions of the same splits (a COCO-format JSON read by torchvision's
``CocoCaptions``, kept verbatim; a ``image.jpg,caption`` text file for Flickr, each line stripped) and
keeps every caption of an image; the open_clip tokenizer cleans whitespace and strips anyway, so the
tokens are the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.benchmarks.base import BenchmarkFormatError, resolve_image
from datamodules.sources import open_image


@dataclass
class RetrievalSet:
    """Images and their captions for Recall@K evaluation.

    Attributes:
        name: e.g. ``"flickr30k/test"``.
        images: absolute image paths, in file order.
        captions: the captions of each image (``captions[i]`` describe ``images[i]``).
        skipped: images dropped because their file is missing (``skip_missing``).
        source: the annotation file.
    """

    name: str
    images: list[str]
    captions: list[list[str]]
    skipped: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)

    @property
    def texts(self) -> list[str]:
        """All captions, image by image (the order of :attr:`text_to_image`)."""
        return [caption for captions in self.captions for caption in captions]

    @property
    def text_to_image(self) -> torch.Tensor:
        """``[T]`` index of each caption's image, for :func:`callbacks.retrieval.retrieval_recall`."""
        return torch.tensor([i for i, captions in enumerate(self.captions) for _ in captions], dtype=torch.long)

    def dataloader(self, transform: Callable, batch_size: int = 64, num_workers: int = 0) -> DataLoader:
        """Batches ``{"image": [B, 3, H, W], "captions": list[list[str]], "index": [B]}`` in file order
        (what :class:`callbacks.retrieval.RetrievalEvaluation` reads)."""
        return DataLoader(
            RetrievalImages(self.images, transform, self.captions),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_retrieval,
        )


class RetrievalImages(Dataset):
    """Images read from paths and transformed (decoded in the loader's workers); with ``captions``
    each item is ``{"image", "captions", "index"}``, without them ``{"image", "index"}``.
    Unreadable files raise :class:`datamodules.sources.CorruptSampleError` naming the file."""

    def __init__(self, paths: Sequence[str], transform: Callable, captions: Sequence[list[str]] | None = None) -> None:
        if captions is not None and len(captions) != len(paths):
            raise ValueError(f"{len(paths)} images but {len(captions)} caption lists")
        self.paths, self.transform, self.captions = list(paths), transform, captions

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "image": self.transform(open_image(self.paths[index], self.paths[index])),
            "index": index,
        }
        if self.captions is not None:
            item["captions"] = list(self.captions[index])
        return item


def collate_retrieval(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and indices; keep captions as one list per image (default_collate would transpose them)."""
    batch: dict[str, Any] = {
        "image": torch.stack([item["image"] for item in items]),
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }
    if items and "captions" in items[0]:
        batch["captions"] = [item["captions"] for item in items]
    return batch


def load_karpathy(
    json_path: str | Path,
    image_root: str | Path,
    split: str | Sequence[str] = "test",
    skip_missing: bool = False,
    max_captions: int | None = None,
    name: str | None = None,
) -> RetrievalSet:
    """Read one split of a Karpathy-split file (COCO or Flickr30k) into a :class:`RetrievalSet`.

    Args:
        json_path: ``dataset_coco.json`` or ``dataset_flickr30k.json``.
        image_root: for COCO the folder holding ``train2014/`` and ``val2014/`` (records name their
            ``filepath``); for Flickr30k the folder of the ``*.jpg`` files.
        split: a split name, or several (``("train", "restval")``).
        skip_missing: drop (and count in ``skipped``) images whose file is missing instead of raising.
        max_captions: keep at most this many captions per image (first ones in file order); None
            keeps all, as clip_benchmark does.
        name: the set's name; default ``"<dataset>/<split>"`` from the file's ``dataset`` field.

    Raises:
        BenchmarkFormatError: naming the file and the record (index and file name) for an unreadable
            file, a record without ``filename`` / ``split`` / ``sentences`` or with an empty ``raw``
            caption, a missing image (unless ``skip_missing``), or a split with no images.
    """
    json_path = Path(json_path)
    splits = (split,) if isinstance(split, str) else tuple(split)
    if max_captions is not None and max_captions < 1:
        raise ValueError(f"max_captions must be >= 1 or None, got {max_captions}")
    try:
        data = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BenchmarkFormatError(f"{json_path}: cannot read Karpathy split file ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise BenchmarkFormatError(f"{json_path}: expected a JSON object with an 'images' list (Karpathy split format)")

    images: list[str] = []
    captions: list[list[str]] = []
    skipped = 0
    seen_splits: set[str] = set()
    for i, record in enumerate(data["images"]):
        if not isinstance(record, dict) or not isinstance(record.get("split"), str):
            raise BenchmarkFormatError(f"{json_path}, image record {i}: not an object with a 'split' string")
        seen_splits.add(record["split"])
        if record["split"] not in splits:
            continue
        filename = record.get("filename")
        if not isinstance(filename, str) or not filename:
            raise BenchmarkFormatError(f"{json_path}, image record {i}: missing or empty 'filename'")
        where = f"{json_path}, image record {i} ({filename})"
        sentences = record.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise BenchmarkFormatError(f"{where}: missing or empty 'sentences'")
        raw = [sentence.get("raw") if isinstance(sentence, dict) else None for sentence in sentences]
        bad = [j for j, text in enumerate(raw) if not isinstance(text, str) or not text.strip()]
        if bad:
            raise BenchmarkFormatError(f"{where}: sentence(s) {bad} have no non-empty 'raw' caption")
        filepath = record.get("filepath") or ""
        if not isinstance(filepath, str):
            raise BenchmarkFormatError(f"{where}: 'filepath' is not a string")
        path = resolve_image(image_root, str(Path(filepath) / filename), where, skip_missing)
        if path is None:
            skipped += 1
            continue
        images.append(path)
        captions.append(raw[:max_captions] if max_captions else raw)

    if not images:
        raise BenchmarkFormatError(
            f"{json_path}: no usable images in split {'+'.join(splits)} "
            f"(splits in the file: {sorted(seen_splits)}, skipped for missing files: {skipped})"
        )
    if name is None:
        name = f"{data.get('dataset', json_path.stem)}/{'+'.join(splits)}"
    return RetrievalSet(name=name, images=images, captions=captions, skipped=skipped, source=str(json_path))


__all__ = ["RetrievalImages", "RetrievalSet", "collate_retrieval", "load_karpathy"]
