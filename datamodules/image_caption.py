"""Image-caption data for contrastive training and retrieval evaluation."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from datamodules.hard_negatives import NegativeCaptions
from datamodules.neighbours import WithNeighbours, read_neighbour_table
from datamodules.samples import CaptionCollator, EpochIndexSampler, SampleRecipe, Samples, StreamPosition, StreamSamples
from datamodules.shapesworld import (
    ShapesWorld,
    write_classification_benchmark,
    write_compositional_benchmark,
    write_retrieval_benchmark,
    write_spatial_benchmark,
)
from datamodules.sources import ManifestDataset, WebDatasetSource

Split = Literal["train", "val", "test"]


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


class ImageCaptionDataModule(LightningDataModule):
    """Image-caption pairs from ShapesWorld (default), webdataset shards or a manifest.

    Batches: ``image`` [B, 3, H, W], ``text`` token ids [B, L], ``caption`` (the sampled caption),
    ``captions`` (all captions of each image), ``image_id`` [B] and ``key``; with hard negatives also
    ``negatives`` [B, K, L] token ids, ``negative_mask`` [B, K] and ``negative_captions``. The model's
    tokenizer and transforms come in through :meth:`connect` (``train.py`` calls it); tokenisation
    happens in the collate function. Caption choice and hard negatives are functions of
    (seed, epoch, sample index): reproducible whatever the number of workers, new every epoch.

    Args:
        source: ``"shapesworld"``, ``"webdataset"`` (``train``/``val``/``test`` are shard URLs, brace
            patterns allowed) or ``"manifest"`` (JSON / JSON-lines / CSV manifest paths, or NegCLIP's
            ``.tsv`` with precomputed negatives and hard images).
        train, val, test: paths per split (ignored for ShapesWorld).
        batch_size: training batch size per device; also used for evaluation unless ``eval_batch_size``.
        num_workers: dataloader workers (persistent, pinned memory).
        skip_corrupt: skip and count bad samples instead of raising.
        shuffle_buffer: webdataset sample shuffle buffer for training.
        shapesworld: ShapesWorld sizes and rendering.
        benchmark_dir: where the ShapesWorld compositional benchmark is written (default ``data/shapesworld``).
        hard_negatives: hard-negative generators for training and validation batches, e.g.
            ``[negclip, replace, bigram_shuffle]`` (rule-based), ShapesWorld's exact types
            (``swap_attribute``, ...) or ``precomputed`` (NegCLIP TSV); one negative per generator.
        hard_images: attach each sample's hard image (NegCLIP: a neighbour with its caption and negatives).
        neighbours: a neighbour table for the training split (``python -m datamodules.neighbours``),
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
        benchmark_dir: str = "data/shapesworld",
        hard_negatives: list[str] | None = None,
        hard_images: bool = False,
        neighbours: str | None = None,
        seed: int = 0,
        warm_text_engine: bool = True,
        seeded_augmentation: bool = True,
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
        self.hard_negatives = list(hard_negatives or [])
        self.hard_images = hard_images
        self.neighbours = neighbours
        self.warm_text_engine = warm_text_engine
        self.seed = seed
        self.seeded_augmentation = seeded_augmentation
        self._negatives: NegativeCaptions | None = None
        self._resume: dict[str, Any] | None = None  # the state of a mid-epoch checkpoint
        self._stream = StreamPosition(epoch=-1, positions=[], last_share=-1)  # this rank's training stream
        self.tokenizer: Callable | None = None
        self.transforms: dict[str, Callable] = {}

    def connect(self, tokenizer: Callable, train_transform: Callable, eval_transform: Callable, **_: Any) -> None:
        """Receive the model's tokenizer and image transforms (the one link between model and data)."""
        self.tokenizer = tokenizer
        self.transforms = {"train": train_transform, "eval": eval_transform}

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

    def has_split(self, split: Split) -> bool:
        return self.source == "shapesworld" or self.paths[split] is not None

    # ----------------------------------------------------------------------------- dataloaders
    def negative_captions(self) -> NegativeCaptions | None:
        """The hard-negative generators (built once, on first use)."""
        if self.hard_negatives and self._negatives is None:
            self._negatives = NegativeCaptions(self.hard_negatives, seed=self.seed)
        return self._negatives

    def _loader(self, split: Split, train: bool, tokenize: bool) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError(
                "ImageCaptionDataModule is not connected to a model: call "
                "datamodule.connect(**model.data_transforms()) first (train.py does this)"
            )
        records = self.records(split)
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
        dataset = StreamSamples(records, recipe) if streaming else Samples(records, recipe)
        if streaming and train and self.trainer is not None:  # a resumed run continues its epoch count
            dataset.epoch = self.trainer.current_epoch - 1
        # drop_last in training: equal batches on every rank for the gathered contrastive loss
        sampler = None if streaming else EpochIndexSampler(dataset, shuffle=train, seed=self.seed, drop_last=train)
        if train and self._resume is not None:
            resume, self._resume = self._resume, None
            if sampler is not None:
                sampler.resume = (resume["epoch"], resume["batches"] * self.batch_size)
            else:
                dataset.resume = self._stream_resume(resume)
                if dataset.resume is not None:  # shares not read again before the next checkpoint keep their place
                    self._stream = dataclasses.replace(dataset.resume, positions=list(dataset.resume.positions))
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=CaptionCollator(self.tokenizer if tokenize else None),
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record how far each worker's stream has got in the training epoch (webdataset)."""
        position = batch.pop("stream_position", None) if isinstance(batch, dict) else None
        if position is not None and self.trainer is not None and self.trainer.training:
            share, read = position
            self._stream = self._stream_position()
            self._stream.positions[share], self._stream.last_share = read, share
        return batch

    def _stream_position(self) -> StreamPosition:
        """This rank's place in the current training epoch's stream (a fresh one at a new epoch)."""
        epoch = self.trainer.current_epoch
        if self._stream.epoch == epoch:
            return self._stream
        return StreamPosition(epoch=epoch, positions=[0] * max(self.num_workers, 1), last_share=-1)

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in its epoch (saved in checkpoints): a resumed run skips the batches
        this epoch already trained on, in the same order. Streaming sources also save, per rank, how
        many samples each worker read and which worker gave the last batch."""
        if self.trainer is None:
            return {}
        # "processed": a checkpoint written in on_train_batch_end has trained on the batch "completed" omits
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        state = {"epoch": self.trainer.current_epoch, "batches": progress.processed}
        if self.source == "webdataset":
            stream = self._stream_position()
            local = torch.tensor([*stream.positions, stream.last_share], device=self.trainer.strategy.root_device)
            gathered = self.trainer.strategy.all_gather(local).view(-1, len(local)).tolist()  # every rank saves
            state["stream"] = [{"positions": row[:-1], "last_share": row[-1]} for row in gathered]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("batches"):
            self._resume = state_dict
            # Lightning looks for resumable DataLoaders only; here the data module resumes the epoch
            warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")

    def _stream_resume(self, state: dict[str, Any]) -> StreamPosition | None:
        """This rank's place in a streaming epoch, if the checkpoint was saved with the same ranks and workers."""
        streams, shares = state.get("stream"), max(self.num_workers, 1)
        if not streams or len(streams) != self.trainer.world_size or len(streams[0]["positions"]) != shares:
            saved = f"{len(streams)} ranks x {len(streams[0]['positions'])} workers" if streams else "no stream positions"
            rank_zero_warn(
                f"this checkpoint was saved mid-epoch ({saved}); a webdataset stream resumes exactly only with "
                f"the same number of ranks and workers ({self.trainer.world_size} x {shares} now): the epoch "
                "restarts from its first shard"
            )
            return None
        stream = streams[self.trainer.global_rank]
        return StreamPosition(state["epoch"], stream["positions"], stream["last_share"])

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

    def retrieval_benchmark(self, n: int = 500) -> Path:
        """Path of a ShapesWorld retrieval set in Karpathy format (written on first use)."""
        cfg = self.shapesworld
        out = self.benchmark_dir / f"retrieval-seed{cfg.seed}-n{n}-px{cfg.image_size}"
        if (out / "dataset_shapesworld.json").is_file():
            return out / "dataset_shapesworld.json"
        return write_retrieval_benchmark(out, n=n, split="test", seed=cfg.seed, image_size=cfg.image_size)

    def classification_benchmark(self, per_class: int = 20) -> Path:
        """Root of a ShapesWorld ImageFolder tree of single-object scenes by shape (written on first use)."""
        cfg = self.shapesworld
        out = self.benchmark_dir / f"classification-seed{cfg.seed}-k{per_class}-px{cfg.image_size}"
        if (out / "DONE").is_file():
            return out
        write_classification_benchmark(out, per_class=per_class, split="test", seed=cfg.seed, image_size=cfg.image_size)
        (out / "DONE").write_text("")
        return out

    def spatial_benchmark(self, n: int = 100) -> Path:
        """Path of the ShapesWorld spatial pairs / sets JSON (written on first use)."""
        cfg = self.shapesworld
        out = self.benchmark_dir / f"spatial-seed{cfg.seed}-n{n}-px{cfg.image_size}"
        if (out / "spatial.json").is_file():
            return out / "spatial.json"
        return write_spatial_benchmark(out, n=n, split="test", seed=cfg.seed, image_size=cfg.image_size)
