"""Image-caption data for contrastive training and retrieval evaluation."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, IterableDataset

from datamodules.shapesworld import ShapesWorld, write_compositional_benchmark
from datamodules.sources import ManifestDataset, WebDatasetSource

Split = Literal["train", "val", "test"]
CaptionChoice = Literal["random", "first"] | None


@dataclass
class ShapesWorldConfig:
    """Sizes and rendering of the built-in synthetic source."""

    n_train: int = 10000
    n_val: int = 500
    n_test: int = 500
    seed: int = 0
    image_size: int = 64
    max_objects: int = 4


class Transformed(Dataset):
    """Applies the image transform to map-style records and picks the caption to tokenise:
    ``"random"`` (a fresh one each epoch; seeded workers make it reproducible), ``"first"``, or ``None``."""

    def __init__(self, records: Dataset, transform: Callable, pick_caption: CaptionChoice) -> None:
        self.records, self.transform, self.pick_caption = records, transform, pick_caption

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        return _transform(self.records[index], self.transform, self.pick_caption)


class TransformedStream(IterableDataset):
    """The streaming counterpart of :class:`Transformed`, for webdataset shards."""

    def __init__(self, records: IterableDataset, transform: Callable, pick_caption: CaptionChoice) -> None:
        self.records, self.transform, self.pick_caption = records, transform, pick_caption

    def __iter__(self):
        for record in self.records:
            yield _transform(record, self.transform, self.pick_caption)


def _transform(
    record: dict[str, Any] | None, transform: Callable, pick_caption: CaptionChoice
) -> dict[str, Any] | None:
    if record is None:  # a skipped corrupt sample
        return None
    sample = {"key": record["key"], "image": transform(record["image"]), "captions": record["captions"]}
    if pick_caption == "random":
        sample["caption"] = random.choice(record["captions"])
    elif pick_caption == "first":
        sample["caption"] = record["captions"][0]
    return sample


class CaptionCollator:
    """Stacks images and tokenises one caption per image (training) or keeps all captions (retrieval)."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor] | None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict[str, Any] | None]) -> dict[str, Any]:
        samples = [s for s in samples if s is not None]
        batch: dict[str, Any] = {
            "key": [s["key"] for s in samples],
            "image": torch.stack([s["image"] for s in samples]),
            "captions": [s["captions"] for s in samples],
        }
        if self.tokenizer is not None:
            batch["caption"] = [s["caption"] for s in samples]
            batch["text"] = self.tokenizer(batch["caption"])
        return batch


class ImageCaptionDataModule(LightningDataModule):
    """Image-caption pairs from ShapesWorld (default), webdataset shards or a manifest.

    Batches: ``image`` [B, 3, H, W], ``text`` token ids [B, L], ``caption`` (the sampled caption),
    ``captions`` (all captions of each image) and ``key``. The model's tokenizer and transforms come in
    through :meth:`connect` (``train.py`` calls it); tokenisation happens in the collate function.

    Args:
        source: ``"shapesworld"``, ``"webdataset"`` (``train``/``val``/``test`` are shard URLs, brace
            patterns allowed) or ``"manifest"`` (they are JSON / JSON-lines / CSV manifest paths).
        train, val, test: paths per split (ignored for ShapesWorld).
        batch_size: training batch size per device; also used for evaluation unless ``eval_batch_size``.
        num_workers: dataloader workers (persistent, pinned memory).
        skip_corrupt: skip and count bad samples instead of raising.
        shuffle_buffer: webdataset sample shuffle buffer for training.
        shapesworld: ShapesWorld sizes and rendering.
        benchmark_dir: where the ShapesWorld compositional benchmark is written (default ``data/shapesworld``).
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
        benchmark_dir: str = "data/shapesworld",
    ) -> None:
        super().__init__()
        if source != "shapesworld" and train is None and val is None and test is None:
            raise ValueError(f"source={source!r} needs at least one of train / val / test paths")
        self.save_hyperparameters()
        self.source = source
        self.paths = {"train": train, "val": val, "test": test}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.skip_corrupt = skip_corrupt
        self.shuffle_buffer = shuffle_buffer
        self.shapesworld = shapesworld
        self.benchmark_dir = Path(benchmark_dir)
        self.tokenizer: Callable | None = None
        self.transforms: dict[str, Callable] = {}

    def connect(self, tokenizer: Callable, train_transform: Callable, eval_transform: Callable, **_: Any) -> None:
        """Receive the model's tokenizer and image transforms (the one link between model and data)."""
        self.tokenizer = tokenizer
        self.transforms = {"train": train_transform, "eval": eval_transform}

    # --------------------------------------------------------------------------------- records
    def records(self, split: Split) -> Dataset | IterableDataset:
        """Untransformed records ``{"key", "image": PIL, "captions"}`` of a split."""
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
        return WebDatasetSource(path, shuffle=shuffle, skip_corrupt=self.skip_corrupt)

    def has_split(self, split: Split) -> bool:
        return self.source == "shapesworld" or self.paths[split] is not None

    # ----------------------------------------------------------------------------- dataloaders
    def _loader(self, split: Split, train: bool, tokenize: bool) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError(
                "ImageCaptionDataModule is not connected to a model: call "
                "datamodule.connect(**model.data_transforms()) first (train.py does this)"
            )
        records = self.records(split)
        transform = self.transforms["train" if train else "eval"]
        streaming = isinstance(records, IterableDataset)
        pick_caption = ("random" if train else "first") if tokenize else None
        dataset = (TransformedStream if streaming else Transformed)(records, transform, pick_caption)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and not streaming,
            drop_last=train,  # equal batches on every rank for the gathered contrastive loss
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=CaptionCollator(self.tokenizer if tokenize else None),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True, tokenize=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False, tokenize=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False, tokenize=True)

    def retrieval_dataloader(self, split: Split = "val") -> DataLoader:
        """Held-out images with all their captions (``image``, ``captions``), for retrieval evaluation."""
        return self._loader(split, train=False, tokenize=False)

    def compositional_benchmark(self, n: int = 500) -> Path:
        """Path of the ShapesWorld compositional benchmark JSON (written on first use)."""
        cfg = self.shapesworld
        out = self.benchmark_dir / f"compositional-seed{cfg.seed}-n{n}-px{cfg.image_size}"
        if (out / "compositional.json").is_file():
            return out / "compositional.json"
        return write_compositional_benchmark(out, n=n, split="test", seed=cfg.seed, image_size=cfg.image_size)
