"""Short and long captions of the same image, for VladVA (an LVLM trained as a two-tower embedding model: a
contrastive loss on short captions, a next-token loss on long captions of the same images).

Records are those of :mod:`datamodules.sources` with a ``long_caption``: ``{"key", "image", "captions"
(short captions, may be empty), "long_caption" (str or None)}``. An image with only one kind of caption
trains the loss that kind feeds (the batch's ``has_short`` / ``has_long``); one with neither is corrupt.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset, IterableDataset

from datamodules.base import Split
from datamodules.hard_negatives import sample_rng
from datamodules.image_caption import ImageCaptionDataModule, ShapesWorldConfig
from datamodules.samples import CaptionCollator, SampleRecipe
from datamodules.shapesworld import ShapesWorld
from datamodules.sources import (
    IMAGE_EXTENSIONS,
    CorruptSampleError,
    ManifestDataset,
    SkipCounter,
    WebDatasetSource,
    open_image,
    read_manifest_rows,
)

Sequences = Callable[[list[str | None], list[str | None]], dict[str, torch.Tensor]]


def caption_pair(fields: Any, where: str) -> tuple[list[str], str | None]:
    """The short captions and the long caption of a manifest row or a shard's ``json``: ``short`` (a string or
    a list; ``captions`` / ``caption`` are synonyms) and ``long`` (a string). Blank values count as absent
    (a CSV manifest leaves a missing kind's cell empty)."""
    if not isinstance(fields, dict):
        raise CorruptSampleError(f"{where}: expected an object with 'short' and/or 'long', got {fields!r}")
    short = next((fields[k] for k in ("short", "captions", "caption") if fields.get(k)), [])
    shorts, long = [short] if isinstance(short, str) else short, fields.get("long")
    if not isinstance(shorts, list) or not all(isinstance(s, str) for s in shorts) or not isinstance(long, str | None):
        raise CorruptSampleError(f"{where}: 'short' must be a string or a list of strings, 'long' a string: {fields!r}")
    return [s.strip() for s in shorts if s.strip()], (long.strip() or None) if long else None


LONG_WORDS = 30  # a LLaVA-style answer of at least this many words is a long caption (VladVA: short < 30 tokens)


def llava_caption_pair(conversations: Any, where: str) -> dict[str, Any]:
    """``short`` / ``long`` fields of a LLaVA-style record's ``conversations``: every answer (``gpt`` turn) of
    fewer than :data:`LONG_WORDS` words is a short caption, the first longer one the long caption."""
    if not isinstance(conversations, list) or not all(isinstance(t, dict) for t in conversations):
        raise CorruptSampleError(f"{where}: 'conversations' must be a list of turns, got {conversations!r}")
    answers = [str(t.get("value", "")).strip() for t in conversations if t.get("from") == "gpt"]
    longs = [a for a in answers if len(a.split()) >= LONG_WORDS]
    return {"short": [a for a in answers if a and len(a.split()) < LONG_WORDS], "long": longs[0] if longs else None}


def read_pair_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON list / JSON-lines / CSV manifest of ``image`` + ``short`` and/or ``long``, or of LLaVA-style
    records (``image`` + ``conversations``: :func:`llava_caption_pair`). Rows naming the same image merge (their
    short captions add up; the first long caption is kept), as in :func:`~datamodules.sources.read_manifest`. Image
    paths are relative to the manifest's folder unless absolute."""
    path = Path(path)
    records: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(read_manifest_rows(path)):
        where = f"manifest {path}, record {i}"
        if not isinstance(row, dict) or "image" not in row:
            raise CorruptSampleError(f"{where}: needs 'image' and 'short' and/or 'long', got {row!r}")
        fields = llava_caption_pair(row["conversations"], where) if "conversations" in row else row
        shorts, long = caption_pair(fields, where)
        image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
        key = str(row.get("key", row["image"]))
        record = records.setdefault(
            str(image), {"key": key, "image": image, "captions": [], "long_caption": None, "where": where}
        )
        record["captions"].extend(shorts)
        record["long_caption"] = record["long_caption"] or long
    return list(records.values())


class PairManifestDataset(ManifestDataset):
    """Map-style records of a short/long caption manifest (:func:`read_pair_manifest`); images are read lazily.
    A record with neither kind of caption raises :class:`CorruptSampleError` naming the manifest, row and key
    (with ``skip_corrupt``: skipped, counted, and replaced by :class:`~datamodules.samples.Samples`)."""

    def __init__(self, path: str | Path, skip_corrupt: bool = False) -> None:
        self.path, self.skip_corrupt, self.skipped = Path(path), skip_corrupt, SkipCounter()
        self.records = []
        for record in read_pair_manifest(path):
            if not record["captions"] and record["long_caption"] is None:
                where = f"{record['where']} (key {record['key']})"
                error = CorruptSampleError(f"{where}: neither a short nor a long caption")
                if not skip_corrupt:
                    raise error
                self.skipped.skip(error)
                record = None
            self.records.append(record)


def decode_pair_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode one raw webdataset sample: an image and a ``json`` member with ``short`` and/or ``long``
    (:func:`caption_pair`), or a ``txt`` member alone (one short caption)."""
    where = f"{sample.get('__url__', '?')} (key {sample.get('__key__', '?')})"
    image_key = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)
    if image_key is None:
        raise CorruptSampleError(f"{where}: no image among {sorted(k for k in sample if not k.startswith('__'))}")
    try:
        fields = json.loads(sample["json"]) if "json" in sample else {"short": sample.get("txt", b"").decode()}
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CorruptSampleError(f"{where}: cannot read the captions ({error})") from error
    shorts, long = caption_pair(fields, where)
    if not shorts and long is None:
        raise CorruptSampleError(f"{where}: neither a short nor a long caption ('txt', or 'json' 'short' / 'long')")
    image = open_image(sample[image_key], where)
    return {"key": sample["__key__"], "image": image, "captions": shorts, "long_caption": long}


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def is_shortcut(record: dict[str, Any]) -> bool:
    """Whether a short caption of a record is its long caption or the beginning of it (after lower case and
    collapsed whitespace): the shortcut VladVA warns of, the two losses then learning from the same text."""
    long = record["long_caption"]
    return long is not None and any(_normal(long).startswith(_normal(short)) for short in record["captions"])


@dataclasses.dataclass
class PairRecipe(SampleRecipe):
    """:class:`~datamodules.samples.SampleRecipe` for short/long pairs: the image transformed, ``short`` (random
    among the record's short captions when ``caption="random"``, seeded by (seed, epoch, index); the first when
    ``"first"``; ``None`` without any) and ``long``. ``caption=None`` (retrieval) keeps ``captions`` only, and
    refuses a record without a short caption."""

    def build(self, records: Any, record: dict, index: int, epoch: int, neighbour: bool = True) -> dict:
        shorts = record["captions"]
        if self.caption is None and not shorts:
            raise ValueError(f"{record['key']} has no short caption: retrieval evaluation needs short captions")
        image = self.augment(record["image"], index, epoch)
        sample = {"key": record["key"], "image": image, "captions": shorts, "image_id": record.get("image_id", index)}
        if self.caption is None:
            return sample
        short = shorts[0] if shorts else None
        if shorts and self.caption == "random":
            short = sample_rng(self.seed, epoch, index, "caption").choice(shorts)
        return {**sample, "short": short, "long": record.get("long_caption")}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool((a == b).all())
    return a == b


class PairCollator(CaptionCollator):
    """Stacks images (``image``, also as ``pixel_values``), lists ``short`` / ``long`` with their ``has_short``
    / ``has_long`` masks and merges in ``sequences(short, long)``; without ``sequences``, the retrieval batch of
    :class:`~datamodules.samples.CaptionCollator` (``image``, ``captions``)."""

    def __init__(self, sequences: Sequences | None) -> None:
        super().__init__(None)
        self.sequences = sequences

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(samples)  # key, image, captions, image_id (and a stream's stream_position)
        if self.sequences is None:
            return batch
        shorts, longs = [s["short"] for s in samples], [s["long"] for s in samples]
        image = batch["image"]  # high-res: a mapping of views, sizes and each image's count, spread into the batch
        batch.update(dict(image) if isinstance(image, Mapping) else {"pixel_values": image}, short=shorts, long=longs)
        batch["has_short"] = torch.tensor([s is not None for s in shorts], dtype=torch.bool)
        batch["has_long"] = torch.tensor([t is not None for t in longs], dtype=torch.bool)
        counts = {"image_tokens": batch["image_tokens"].tolist()} if "image_tokens" in batch else {}
        tokens = self.sequences(shorts, longs, **counts)
        clash = sorted(k for k in set(tokens) & set(batch) if not _same(tokens[k], batch[k]))
        if clash:
            raise ValueError(f"the model's sequences() returned {clash}, which the batch holds with other values")
        return {**batch, **tokens}


class ShortLongCaptionDataModule(ImageCaptionDataModule):
    """Images with a short caption (contrastive loss) and a long caption (next-token loss), for VladVA.

    Training and validation batches: ``image`` [B, 3, H, W] (the same tensor as ``pixel_values``), ``short`` and
    ``long`` (B str or None: the sampled short caption, random each epoch in training and the first in
    evaluation, and the long caption), ``has_short`` / ``has_long`` bool [B] (which losses each row feeds),
    ``captions`` (all short captions of each image), ``image_id`` [B], ``key``, and whatever the model's
    ``sequences(short, long)`` returns (token ids of both kinds; :meth:`connect` receives it).
    :meth:`~ImageCaptionDataModule.retrieval_dataloader` gives ``image`` + ``captions`` (the short captions) as
    :class:`~datamodules.image_caption.ImageCaptionDataModule` does; it raises ``ValueError`` naming the key of
    an image without a short caption.

    :meth:`setup` reports, for map-style splits (ShapesWorld, manifests: from the metadata, without opening
    an image), how many images feed each loss (``routing[split]``: ``short_only``, ``long_only``, ``both``)
    and warns of shortcuts (``shortcuts[split]``: keys of images whose short caption is their long caption or
    its beginning, :func:`is_shortcut`). Every ShapesWorld image has both, and none is a shortcut (long captions
    begin "There are ..."). Webdataset streams are not counted: they are known only once read.

    Args:
        source: ``"shapesworld"``, ``"webdataset"`` (shards with a ``json`` of ``short`` (string or list)
            and/or ``long``, or a ``txt`` short caption) or ``"manifest"`` (JSON / JSON-lines / CSV rows of
            ``image`` with ``short`` (``caption`` / ``captions`` too) and/or ``long``).
        train, val, test: paths per split (ignored for ShapesWorld).
        batch_size: training batch size per device; also used for evaluation unless ``eval_batch_size``.
        num_workers: dataloader workers (persistent, pinned memory).
        skip_corrupt: replace bad samples (an image with neither caption among them) by deterministic
            substitutes, each counted with a warning naming its file, instead of raising.
        shuffle_buffer: webdataset sample shuffle buffer for training.
        shapesworld: ShapesWorld sizes and rendering.
        benchmark_dir: where evaluation callbacks write ShapesWorld's benchmarks (see ImageCaptionDataModule).
        seed: seed of the per-sample short-caption choice and augmentation.
        seeded_augmentation: random augmentation as a function of (seed, epoch, index) in training.
    """

    def __init__(
        self,
        source: Literal["shapesworld", "webdataset", "manifest"] = "shapesworld",
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        skip_corrupt: bool = False,
        shuffle_buffer: int = 1000,
        shapesworld: ShapesWorldConfig = ShapesWorldConfig(),
        benchmark_dir: str | None = None,
        seed: int = 0,
        seeded_augmentation: bool = True,
    ) -> None:
        if isinstance(shapesworld, dict):  # as saved in a checkpoint's hyper-parameters
            shapesworld = ShapesWorldConfig(**shapesworld)
        super().__init__(
            source=source, train=train, val=val, test=test, batch_size=batch_size, eval_batch_size=eval_batch_size,
            num_workers=num_workers, skip_corrupt=skip_corrupt, shuffle_buffer=shuffle_buffer,
            shapesworld=shapesworld, benchmark_dir=benchmark_dir, seed=seed, warm_text_engine=False,
            seeded_augmentation=seeded_augmentation,
        )  # fmt: skip
        # this class's arguments only (the base saved its own: hard negatives and images do not apply here)
        self.save_hyperparameters(ignore=["hard_negatives", "hard_images", "neighbours", "warm_text_engine"])
        self.hparams["shapesworld"] = dataclasses.asdict(shapesworld)
        self.sequences: Sequences | None = None
        self.routing: dict[str, dict[str, int]] = {}
        self.shortcuts: dict[str, list[str]] = {}

    def connect(
        self,
        tokenizer: Callable,
        train_transform: Callable,
        eval_transform: Callable,
        sequences: Sequences | None = None,
        **kwargs: Any,
    ) -> None:
        """The model's tokenizer, image transforms and ``sequences(shorts, longs) -> {name: tensor}``, which
        tokenises both kinds of caption (picklable: the dataloader workers run it)."""
        super().connect(tokenizer, train_transform, eval_transform, **kwargs)
        self.sequences = sequences

    def _source_records(self, split: Split) -> Dataset | IterableDataset:
        if self.source == "shapesworld":
            return super()._source_records(split)
        path = self.paths[split]
        if path is None:
            raise ValueError(f"no {split} data: set data.init_args.{split}")
        if self.source == "manifest":
            return PairManifestDataset(path, skip_corrupt=self.skip_corrupt)
        shuffle = self.shuffle_buffer if split == "train" else 0
        return WebDatasetSource(path, shuffle, self.skip_corrupt, self.seed, decode=decode_pair_sample)

    def setup(self, stage: str | None = None) -> None:
        """Count, once per map-style split of ``stage``, the images each loss sees, and warn of shortcuts."""
        if self.source == "webdataset":  # a stream is known only once read
            return
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), None: ("train", "val", "test")}
        for split in splits.get(stage, ()):
            if split in self.routing or (self.source == "manifest" and not self.paths[split]):
                continue
            records = self.records(split)
            if isinstance(records, ShapesWorld):  # every record has both, none a shortcut (see the class docstring)
                self.routing[split], self.shortcuts[split] = {"short_only": 0, "long_only": 0, "both": len(records)}, []
            else:
                self._count(split, [r for r in records.records if r is not None])
            self._report(split)

    def _count(self, split: Split, records: list[dict[str, Any]]) -> None:
        kinds = [("both" if r["captions"] else "long_only") if r["long_caption"] else "short_only" for r in records]
        self.routing[split] = {kind: kinds.count(kind) for kind in ("short_only", "long_only", "both")}
        self.shortcuts[split] = [r["key"] for r in records if is_shortcut(r)]

    def _report(self, split: Split) -> None:
        n, shortcuts = self.routing[split], self.shortcuts[split]
        rank_zero_info(
            f"{split}: {n['short_only']} images without a long caption go to the contrastive loss only; "
            f"{n['long_only']} without a short caption to the next-token loss only; {n['both']} to both"
        )
        if shortcuts:
            rank_zero_warn(
                f"{split}: {len(shortcuts)} images have a short caption equal to their long caption or its beginning "
                f"(a shortcut: both losses learn from the same text), e.g. {shortcuts[:5]}"
            )

    def recipe(self, split: Split, records: Dataset | IterableDataset, train: bool, tokenize: bool) -> PairRecipe:
        """Transform (seeded augmentation in training) and short-caption choice (random in training)."""
        caption = ("random" if train else "first") if tokenize else None
        transform, augment = self.transforms["train" if train else "eval"], self.seeded_augmentation and train
        return PairRecipe(transform, caption, seed=self.seed, seeded_augmentation=augment)

    def collator(self, split: Split, tokenize: bool) -> PairCollator:
        if tokenize and self.sequences is None:
            raise RuntimeError(
                f"{type(self).__name__} tokenises short and long captions with the model's sequences(shorts, longs):"
                " the model must provide it to datamodule.connect(..., sequences=...) (in data_transforms())"
            )
        return PairCollator(self.sequences if tokenize else None)
