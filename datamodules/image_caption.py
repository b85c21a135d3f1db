"""Image-caption data for contrastive training and retrieval evaluation."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from torch.utils.data import DataLoader, Dataset, IterableDataset

from datamodules.base import Split, ZooDataModule
from datamodules.hard_negatives import NegativeCaptions
from datamodules.neighbours import WithNeighbours, read_neighbour_table
from datamodules.samples import CaptionCollator, SampleRecipe
from datamodules.shapesworld import (
    ShapesWorld,
)
from datamodules.sources import ManifestDataset, WebDatasetSource


@dataclasses.dataclass
class ShapesWorldConfig:
    """Sizes and rendering of the built-in synthetic source."""

    n_train: int = 10000
    n_val: int = 500
    n_test: int = 500
    seed: int = 0
    image_size: int = 64
    max_objects: int = 4


def _captions_of(records: Dataset) -> list[str]:
    """Every caption of a map-style source, without decoding images where the source allows it."""
    if isinstance(records, ManifestDataset):
        return [c for r in records.records if r is not None for c in r["captions"]]
    return [c for i in range(len(records)) if (r := records[i]) is not None for c in r["captions"]]


class ImageCaptionDataModule(ZooDataModule):
    """Image-caption pairs from ShapesWorld (default), webdataset shards or a manifest.

    Batches: ``image`` [B, 3, H, W], ``text`` token ids [B, L], ``caption`` (the sampled caption),
    ``captions`` (all captions of each image), ``image_id`` [B] and ``key``; with hard negatives also
    ``negatives`` [B, K, L] token ids, ``negative_mask`` [B, K] and ``negative_captions``. The model's
    tokenizer and transforms come in through :meth:`connect` (``train.py`` calls it); tokenisation
    happens in the collate function. Caption choice and hard negatives are functions of
    (seed, epoch, sample index): reproducible whatever the number of workers, new every epoch.
    Resume, sampling and corrupt-sample substitution come from :class:`~datamodules.base.ZooDataModule`.

    Args:
        source: ``"shapesworld"``, ``"webdataset"`` (``train``/``val``/``test`` are shard URLs, brace
            patterns allowed) or ``"manifest"`` (JSON / JSON-lines / CSV manifest paths, or NegCLIP's
            ``.tsv`` with precomputed negatives and hard images).
        train, val, test: paths per split (ignored for ShapesWorld).
        batch_size: training batch size per device; also used for evaluation unless ``eval_batch_size``.
        num_workers: dataloader workers (persistent, pinned memory).
        skip_corrupt: replace bad samples by deterministic substitutes (each counted, with a warning naming
            its file) instead of raising.
        shuffle_buffer: webdataset sample shuffle buffer for training.
        shapesworld: ShapesWorld sizes and rendering.
        benchmark_dir: where evaluation callbacks write ShapesWorld's benchmarks when they run on this data
            module (default ``None``: ``shapesworld/`` of the cache folder, ``$VLZOO_CACHE`` or ``~/.cache/vlzoo``;
            see ``datamodules.benchmarks.shapesworld_benchmark_file``).
        hard_negatives: hard-negative generators for training and validation batches, e.g.
            ``[negclip, replace, bigram_shuffle]`` (rule-based), ShapesWorld's exact types
            (``swap_attribute``, ...) or ``precomputed`` (NegCLIP TSV); one negative per generator.
        hard_images: attach each sample's hard image (NegCLIP: a neighbour with its caption and negatives).
        neighbours: a neighbour table for the training split (``python -m callbacks.neighbours``),
            for sources without NegCLIP's ``neg_image`` column.
        seed: seed of the per-sample caption choice and hard negatives.
        warm_text_engine: parse every training caption with spaCy (batched) before the workers start,
            so rule-based negatives run from the cache from the first step (map-style sources).
        seeded_augmentation: random crops (and RandAugment) as a function of (seed, epoch, index):
            the same whatever the number of workers, and exact when a run resumes mid-epoch
            (``false``: from each worker's global RNGs, as the README's tables were measured).
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
        hard_negatives: list[str] | None = None,
        hard_images: bool = False,
        neighbours: str | None = None,
        seed: int = 0,
        warm_text_engine: bool = True,
        seeded_augmentation: bool = True,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            skip_corrupt=skip_corrupt,
            seed=seed,
            seeded_augmentation=seeded_augmentation,
        )
        if source != "shapesworld" and train is None and val is None and test is None:
            raise ValueError(f"source={source!r} needs at least one of train / val / test paths")
        if isinstance(shapesworld, dict):  # as saved in a checkpoint's hyper-parameters
            shapesworld = ShapesWorldConfig(**shapesworld)
        self.save_hyperparameters()
        self.hparams["shapesworld"] = dataclasses.asdict(shapesworld)  # plain types: weights_only loads
        self.source = source
        self.paths = {"train": train, "val": val, "test": test}
        self.shuffle_buffer = shuffle_buffer
        self.shapesworld = shapesworld
        self.benchmark_dir = Path(benchmark_dir) if benchmark_dir else None
        self.hard_negatives = list(hard_negatives or [])
        self.hard_images = hard_images
        self.neighbours = neighbours
        self.warm_text_engine = warm_text_engine
        self._negatives: NegativeCaptions | None = None

    # --------------------------------------------------------------------------------- records
    def records(self, split: Split) -> Dataset | IterableDataset:
        """Untransformed records ``{"key", "image": PIL, "captions", ...}`` of a split."""
        records = self._source_records(split)
        if split == "train" and self.neighbours is not None:
            if isinstance(records, IterableDataset):
                raise ValueError("a neighbour table needs a map-style source (shapesworld or manifest)")
            records = WithNeighbours(records, read_neighbour_table(self.neighbours, len(records)))
        return records

    def _source_records(self, split: Split) -> Dataset | IterableDataset:
        if self.source == "shapesworld":
            cfg = self.shapesworld
            n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
            return ShapesWorld(n, split=split, seed=cfg.seed, image_size=cfg.image_size, max_objects=cfg.max_objects)
        path = self.paths[split]
        if path is None:
            raise ValueError(f"no {split} data: set data.init_args.{split}")
        if self.source == "manifest":
            return ManifestDataset(path, skip_corrupt=self.skip_corrupt)
        shuffle = self.shuffle_buffer if split == "train" else 0
        return WebDatasetSource(path, shuffle=shuffle, skip_corrupt=self.skip_corrupt, seed=self.seed)

    # ----------------------------------------------------------------------------- samples
    def negative_captions(self) -> NegativeCaptions | None:
        """The hard-negative generators (built once, on first use)."""
        if self.hard_negatives and self._negatives is None:
            self._negatives = NegativeCaptions(self.hard_negatives, seed=self.seed, normalize=self.text_normalizer())
        return self._negatives

    def text_normalizer(self) -> Callable[[str], str] | None:
        """The connected text tower's own cleaning (a tokenizer's ``clean_fn``): a hard negative equal to its
        caption after it is no negative. open_clip's ``SimpleTokenizer`` cleaning (lower case) is
        ``clip_normalize``, its faster equivalent, which is also the default without a tokenizer."""
        clean = getattr(self.tokenizer, "clean_fn", None)
        if clean is None or getattr(clean, "__qualname__", "") == "_clean_lower":
            return None  # NegativeCaptions' default: clip_normalize
        return clean

    def recipe(self, split: Split, records: Dataset | IterableDataset, train: bool, tokenize: bool) -> SampleRecipe:
        """Transform, caption choice (random in training), hard negatives and hard images."""
        recipe = SampleRecipe(
            transform=self.transforms["train" if train else "eval"],
            caption=("random" if train else "first") if tokenize else None,
            negatives=self.negative_captions() if tokenize else None,
            hard_images=self.hard_images and train,
            seed=self.seed,
            seeded_augmentation=self.seeded_augmentation and train,
        )
        streaming = isinstance(records, IterableDataset)
        smoke_test = self.trainer is not None and self.trainer.fast_dev_run
        if train and self.warm_text_engine and recipe.negatives is not None and not streaming and not smoke_test:
            recipe.negatives.warm(_captions_of(records))  # parsed once here, inherited by the workers
        return recipe

    def collator(self, split: Split, tokenize: bool) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return CaptionCollator(self.tokenizer if tokenize else None)

    def retrieval_dataloader(self, split: Split = "val") -> DataLoader:
        """Held-out images with all their captions (``image``, ``captions``), for retrieval evaluation."""
        return self.loader(split, train=False, tokenize=False)
