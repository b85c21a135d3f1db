"""The data-module base of vlzoo: exact resume, DDP-safe batches and the model link, written once.

:class:`ZooDataModule` holds what every data module needs and no data module should copy:

* ``connect``: the model's tokenizer and image transforms, the one link between model and data;
* the loader: map-style records go through :class:`~datamodules.samples.Samples` and an
  :class:`~datamodules.samples.EpochIndexSampler` (``(epoch, index)`` pairs, so every per-sample random
  choice is a function of (seed, epoch, index), whatever the number of workers); streams (webdataset)
  through :class:`~datamodules.samples.StreamSamples`;
* exact mid-epoch resume: ``state_dict`` / ``load_state_dict`` record how many batches the epoch trained
  on (map-style: the sampler skips them) and, for streams, how many samples each worker of each rank
  read and which worker gave the last batch (``on_before_batch_transfer`` records it from the batches);
* seeded augmentation (``seeded_augmentation``: :func:`~datamodules.samples.seeded`, for the recipe);
* corrupt samples replaced, never dropped (``skip_corrupt``): every rank keeps the same batch size,
  which the gathered contrastive losses need (see :func:`~datamodules.samples.record_or_substitute`
  and :class:`~datamodules.sources.WebDatasetSource`).

A subclass says what its records are and how they become a batch, through three hooks::

    def records(self, split) -> Dataset | IterableDataset      # untransformed records of a split
    def recipe(self, split, records, train, tokenize) -> Recipe  # record + (seed, epoch, index) -> sample
    def collator(self, split, tokenize) -> Callable[[list[dict]], Batch]

A map-style source returns ``None`` for a record it skipped (``skip_corrupt``); a stream offers
``epoch_records(epoch, skip, role)`` with a ``position`` in each record, as
:class:`~datamodules.sources.WebDatasetSource` does (pass it a ``decode`` for another sample layout).
The subclass calls ``super().__init__(...)`` with the generic arguments, then ``save_hyperparameters()``.

An instruction data module (:class:`~datamodules.instruction.InstructionDataModule`, LLaVA JSON) is the same
three hooks: its records are conversations tokenised with the model's template (up front for map-style
sources, while decoding for streams); its recipe transforms the image; its collator pads ``input_ids``,
``labels`` (-100 outside the answers) and ``attention_mask`` and stacks ``pixel_values``: the :class:`Batch`
fields below. (AnyRes adds ``tiles_per_image`` and ``image_sizes``.)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, Literal, TypedDict

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from datamodules.length_grouped import length_grouped_sampler
from datamodules.samples import EpochIndexSampler, Recipe, Samples, StreamPosition, StreamSamples

Split = Literal["train", "val", "test"]


class ImageInputs(TypedDict, total=False):
    """What an image encoder receives from a batch (one of the two layouts).

    Fixed size, one view per row (CLIP and its variants today)::

        image            float [B, 3, H, W]   the transform's output, H = W = the tower's image size

    Variable tiles per image (LLaVA-NeXT's AnyRes): image ``b`` becomes ``tiles_per_image[b]`` crops of
    the tower's size (a resized base view first, then the grid of the resolution that fits the image
    best), concatenated over the batch in row order, without padding::

        pixel_values     float [N_tiles_total, 3, H, W]   N_tiles_total = tiles_per_image.sum()
        tiles_per_image  int64 [B]                        pixel_values.split(tiles_per_image.tolist())
                                                          gives each image's tiles
        image_sizes      int64 [B, 2]                     (height, width) of each original image, from
                                                          which the model recomputes the grid and
                                                          unpads the features

    (transformers' LLaVA-NeXT takes ``pixel_values`` padded to [B, max_tiles, 3, H, W]; the zoo computes the
    merged features itself from ``pixel_values.split(tiles_per_image.tolist())``.) A row without an image gets a
    black tile-sized image's views, whose placeholders are masked and unsupervised (every batch runs the vision
    path on every rank).
    """

    image: torch.Tensor
    pixel_values: torch.Tensor
    tiles_per_image: torch.Tensor
    image_sizes: torch.Tensor


class Batch(ImageInputs, total=False):
    """What a collator produces: :class:`ImageInputs` plus, per row,

    * ``key`` (list of B str): the sample keys; ``image_id`` int64 [B]: the image's identity (rows of the
      same image are not negatives of each other, NegCLIP's ``mask_same_image``);
    * captions (:class:`~datamodules.samples.CaptionCollator`): ``text`` int64 [B, L] token ids of
      ``caption`` (list of B str), ``captions`` (all captions of each image); with hard negatives
      ``negatives`` int64 [B, K, L], ``negative_mask`` bool [B, K], ``negative_captions``; with hard
      images the B neighbours follow the B originals (2B rows);
    * instructions (a LLaVA collator): ``input_ids`` int64 [B, L], ``labels`` int64 [B, L] (-100 where
      no loss is taken), ``attention_mask`` int64 [B, L];
    * ``stream_position`` ((worker share, samples read) of a stream's last row): taken out by
      :meth:`ZooDataModule.on_before_batch_transfer`, the model never sees it.
    """

    key: list[str]
    image_id: torch.Tensor
    text: torch.Tensor
    caption: list[str]
    captions: list[list[str]]
    negatives: torch.Tensor
    negative_mask: torch.Tensor
    negative_captions: list[list[str | None]]
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    stream_position: tuple[int, int]


class ZooDataModule(LightningDataModule):
    """A data module with exact mid-epoch resume, seeded per-sample randomness and corrupt samples
    replaced; subclasses implement :meth:`records`, :meth:`recipe` and :meth:`collator`.

    Args:
        batch_size: training batch size per device; also used for evaluation unless ``eval_batch_size``.
        num_workers: dataloader workers (persistent, pinned memory).
        skip_corrupt: replace bad samples (each counted, with a warning naming its file) instead of raising.
        seed: seed of every per-sample choice (augmentation, substitutes, and what the recipe draws).
        seeded_augmentation: random augmentation as a function of (seed, epoch, index) in training (the
            recipe applies it with :func:`~datamodules.samples.seeded`).
        group_by_length: train on batches of similar length, one modality per step (LLaVA's
            ``group_by_modality_length``; :mod:`datamodules.length_grouped`), from the training records'
            ``lengths`` (and ``has_image``); off: the plain shuffled order. The k batches of one optimiser step
            (:meth:`batches_per_update`) hold consecutive lengths of one modality.
    """

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        skip_corrupt: bool = False,
        seed: int = 0,
        seeded_augmentation: bool = True,
        group_by_length: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.skip_corrupt = skip_corrupt
        self.seed = seed
        self.seeded_augmentation = seeded_augmentation
        self.group_by_length = group_by_length
        self.tokenizer: Callable | None = None
        self.transforms: dict[str, Callable] = {}
        self._resume: dict[str, Any] | None = None  # the state of a mid-epoch checkpoint
        self._streaming = False  # whether the training records are a stream
        self._stream = StreamPosition(epoch=-1, positions=[], last_share=-1)  # this rank's training stream

    def connect(self, tokenizer: Callable, train_transform: Callable, eval_transform: Callable, **_: Any) -> None:
        """Receive the model's tokenizer and image transforms (the one link between model and data)."""
        self.tokenizer = tokenizer
        self.transforms = {"train": train_transform, "eval": eval_transform}

    def batches_per_update(self) -> int:
        """Batches per optimiser step on a rank: the trainer's ``accumulate_grad_batches`` times the module's own
        micro-batches (``contrastive_accumulation``; LLaVA's ``micro_batches``); 1 without a trainer."""
        trainer = self.trainer
        if trainer is None:
            return 1
        module = getattr(trainer, "lightning_module", None)
        return trainer.accumulate_grad_batches * int(getattr(module, "contrastive_accumulation", 1))

    # ------------------------------------------------------------------------------------ hooks
    def records(self, split: Split) -> Dataset | IterableDataset:
        """Untransformed records of a split: map-style (``None`` for a skipped record) or a stream."""
        raise NotImplementedError

    def recipe(self, split: Split, records: Dataset | IterableDataset, train: bool, tokenize: bool) -> Recipe:
        """How a record of ``records`` becomes a sample (augmentation seeded when ``train`` and
        ``seeded_augmentation``); ``tokenize`` is False for loaders that keep raw text (retrieval)."""
        raise NotImplementedError

    def collator(self, split: Split, tokenize: bool) -> Callable[[list[dict[str, Any]]], Batch]:
        """The collate function: a list of samples (never ``None``) -> a :class:`Batch`."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------- dataloaders
    def loader(self, split: Split, train: bool, tokenize: bool) -> DataLoader:
        """The DataLoader of a split: shuffled, ``drop_last`` and resumable when ``train``."""
        if self.tokenizer is None:
            raise RuntimeError(
                f"{type(self).__name__} is not connected to a model: call "
                "datamodule.connect(**model.data_transforms()) first (train.py does this)"
            )
        records = self.records(split)
        recipe = self.recipe(split, records, train=train, tokenize=tokenize)
        streaming = isinstance(records, IterableDataset)
        dataset = StreamSamples(records, recipe) if streaming else Samples(records, recipe)
        if streaming and train and self.trainer is not None:  # a resumed run continues its epoch count
            dataset.epoch = self.trainer.current_epoch - 1
        # drop_last in training: equal batches on every rank for the gathered contrastive loss
        if train and self.group_by_length:  # batches of similar length, one modality per step
            sampler = length_grouped_sampler(
                type(self).__name__, records, dataset, self.batch_size, self.seed, self.batches_per_update()
            )
        else:
            sampler = None if streaming else EpochIndexSampler(dataset, shuffle=train, seed=self.seed, drop_last=train)
        if train:
            self._streaming = streaming
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
            collate_fn=self.collator(split, tokenize),
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", train=True, tokenize=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", train=False, tokenize=True)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", train=False, tokenize=True)

    # ------------------------------------------------------------------------------------ resume
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record how far each worker's stream has got in the training epoch (streams)."""
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
        if self._streaming:
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
            saved = "no stream positions"
            if streams:
                saved = f"{len(streams)} ranks x {len(streams[0]['positions'])} workers"
            rank_zero_warn(
                f"this checkpoint was saved mid-epoch ({saved}); a webdataset stream resumes exactly only with "
                f"the same number of ranks and workers ({self.trainer.world_size} x {shares} now): the epoch "
                "restarts from its first shard"
            )
            return None
        stream = streams[self.trainer.global_rank]
        return StreamPosition(state["epoch"], stream["positions"], stream["last_share"])
