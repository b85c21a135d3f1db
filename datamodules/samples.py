"""From records to training / evaluation samples.

Generic (every data module, through :class:`~datamodules.base.ZooDataModule`): :class:`Samples` and
:class:`StreamSamples` (a record + (seed, epoch, index) -> a sample, with corrupt samples replaced),
:class:`EpochIndexSampler`, :class:`StreamPosition` and :func:`seeded`. Image-caption specific:
:class:`SampleRecipe` (transform, caption choice, hard negatives, hard images) and :class:`CaptionCollator`.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, IterableDataset

from datamodules.hard_negatives import NegativeCaptions, sample_rng
from datamodules.sources import CorruptSampleError, SkipCounter, dataloader_worker
from zoo.losses.distributed import rank, world_size

if TYPE_CHECKING:
    from datamodules.sources import WebDatasetSource

T = TypeVar("T")

SUBSTITUTE_TRIES = 16  # substitutes drawn for a corrupt sample before the split is declared unusable
_REPLACED = SkipCounter()  # substitutions made in this process (each dataloader worker counts its own)


class Recipe(Protocol):
    """How a record becomes a sample: a function of (record, seed, epoch, index) only.

    ``records`` is the map-style source the record comes from (``None`` for a stream), for recipes
    that look up other records (hard images)."""

    seed: int

    def build(self, records: Any, record: dict[str, Any], index: int, epoch: int) -> dict[str, Any]: ...


def seeded(fn: Callable[..., T], *args: Any, seed: int, epoch: int, index: int) -> T:
    """``fn(*args)`` with torch's, Python's and NumPy's global RNGs seeded by (seed, epoch, index) and
    restored afterwards: a random augmentation that is the same whatever the worker, the number of
    workers or a resume."""
    value = sample_rng(seed, epoch, index, "augmentation").getrandbits(63)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(value)
        random.seed(value)
        np.random.seed(value % 2**32)
        try:
            return fn(*args)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _skip_counter(records: Any) -> SkipCounter | None:
    """The source's counter of skipped samples, through wrappers (``.records``) such as WithNeighbours."""
    while records is not None and not isinstance(records, (list, tuple)):
        if isinstance(getattr(records, "skipped", None), SkipCounter):
            return records.skipped
        records = getattr(records, "records", None)
    return None


def record_or_substitute(records: Dataset, index: int, epoch: int, seed: int, counter: SkipCounter) -> tuple[int, dict]:
    """``(index, records[index])``, or, when the source skipped that record (``None``: corrupt, with
    ``skip_corrupt``), a substitute: another index of the same split drawn by (seed, epoch, index), up to
    :data:`SUBSTITUTE_TRIES` of them. Every rank keeps the same number of rows, and the substitute is the
    same whatever the worker or a resume. Raises :class:`CorruptSampleError` when every draw is corrupt."""
    record = records[index]
    if record is not None:
        return index, record
    n = len(records)
    draws = sample_rng(seed, epoch, index, "substitute").sample(range(n - 1), min(n - 1, SUBSTITUTE_TRIES))
    tried = [i + (i >= index) for i in draws]  # other indices, without repeats
    for other in tried:
        record = records[other]
        if record is not None:
            counter.replace(f"sample {index} (epoch {epoch})", f"sample {other} (key {record['key']})")
            return other, record
    source = _skip_counter(records)
    recent = "; ".join(source.recent) if source is not None and source.recent else "see the warnings above"
    raise CorruptSampleError(
        f"sample {index} of a split of {n} and its {len(tried)} substitutes {tried} are all corrupt: is every "
        f"sample of this split corrupt? Last skipped: {recent}"
    )


@dataclass
class SampleRecipe:
    """How a record becomes a sample.

    Attributes:
        transform: the image transform.
        caption: ``"random"`` (a fresh caption each epoch, seeded by (seed, epoch, index)),
            ``"first"`` or ``None`` (keep all captions only, for retrieval).
        negatives: hard-negative captions to add, or None.
        hard_images: also attach the record's neighbour (NegCLIP's hard images).
        seed: seed of the per-sample RNGs.
        seeded_augmentation: draw the image transform's randomness (torch, Python, NumPy) from an RNG
            seeded by (seed, epoch, index), so a sample's augmentation is the same whatever the
            worker, the number of workers or a resume; otherwise from the worker's global RNGs.
    """

    transform: Callable
    caption: Literal["random", "first"] | None
    negatives: NegativeCaptions | None = None
    hard_images: bool = False
    seed: int = 0
    seeded_augmentation: bool = True

    def augment(self, image: Any, index: int, epoch: int) -> Any:
        """The transformed image (with ``seeded_augmentation``, as a function of (seed, epoch, index))."""
        if not self.seeded_augmentation:
            return self.transform(image)
        return seeded(self.transform, image, seed=self.seed, epoch=epoch, index=index)

    def build(self, records: Any, record: dict, index: int, epoch: int, neighbour: bool = True) -> dict:
        """The sample of ``record`` (number ``index`` of ``records``; ``records`` is None for a stream) in ``epoch``."""
        sample = {
            "key": record["key"],
            "image": self.augment(record["image"], index, epoch),
            "captions": record["captions"],
            "image_id": record.get("image_id", index),
        }
        if self.caption is None:
            return sample
        if self.caption == "first" or (self.negatives is not None and self.negatives.needs_primary_caption):
            sample["caption"] = record["captions"][0]
        else:
            sample["caption"] = sample_rng(self.seed, epoch, index, "caption").choice(record["captions"])
        if self.negatives is not None:
            sample["negatives"] = self.negatives(record, sample["caption"], index, epoch)
        if self.hard_images and neighbour and records is not None:
            choices = record.get("neighbours")
            if not choices:
                raise ValueError(f"hard_images needs neighbours for every record; {record['key']} has none")
            other = sample_rng(self.seed, epoch, index, "neighbour").choice(choices)
            other, hard = record_or_substitute(records, other, epoch, self.seed, _REPLACED)
            sample["neighbour"] = self.build(records, hard, other, epoch, neighbour=False)
        return sample



class Samples(Dataset):
    """Map-style samples; indices may be ``(epoch, index)`` pairs from :class:`EpochIndexSampler`.

    A record the source skipped (``None``: corrupt, with ``skip_corrupt``) is replaced by the sample of
    another index drawn by (seed, epoch, index) (:func:`record_or_substitute`), built exactly as that
    index's own sample: batches keep their size on every rank, and never hold a ``None``."""

    def __init__(self, records: Dataset, recipe: Recipe) -> None:
        self.records, self.recipe = records, recipe

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index, record = record_or_substitute(self.records, index, epoch, self.recipe.seed, _REPLACED)
        return self.recipe.build(self.records, record, index, epoch)


@dataclass
class StreamPosition:
    """Where a streaming epoch stands: samples read per worker share and the share that gave the last batch."""

    epoch: int
    positions: list[int]
    last_share: int


class StreamSamples(IterableDataset):
    """Streaming samples (a :class:`~datamodules.sources.WebDatasetSource`): the sample key stands in
    for the index; each pass is an epoch (``epoch`` is the one before the next pass: the data module
    sets it from the trainer on resume). Each sample carries ``stream_position`` = (worker share, samples
    of that share read), which the data module records from the batches it trains on.

    ``resume = StreamPosition(...)`` continues a pass where a mid-epoch checkpoint left it, once.
    Corrupt samples are replaced in the stream itself (see :meth:`WebDatasetSource.epoch_records`).
    """

    def __init__(self, records: WebDatasetSource, recipe: Recipe) -> None:
        self.records, self.recipe = records, recipe
        self.epoch = -1
        self.resume: StreamPosition | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.epoch += 1
        worker, num_workers = dataloader_worker()
        role, skip = worker, 0
        if self.resume is not None and self.resume.epoch == self.epoch:  # a run resumed mid-epoch: once
            # the new loader's round robin starts at worker 0: give it the share that was due next
            role = (worker + self.resume.last_share + 1) % num_workers
            skip, self.resume = self.resume.positions[role], None
        for record in self.records.epoch_records(self.epoch, skip=skip, role=role):
            index = zlib.crc32(record["key"].encode())
            sample = self.recipe.build(None, record, index, self.epoch)
            yield {**sample, "stream_position": (role, record["position"])}


class EpochIndexSampler(DistributedSampler):
    """A DistributedSampler that yields ``(epoch, index)``: the workers learn the epoch with every
    index, so per-sample randomness (caption choice, hard negatives) is a function of
    (seed, epoch, index) alone, whatever the number of workers. Lightning calls ``set_epoch``;
    ``resume = (epoch, n)`` skips the first ``n`` indices of that epoch once (a mid-epoch resume)."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, drop_last: bool = False) -> None:
        super().__init__(
            dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed, drop_last=drop_last
        )

        self.resume: tuple[int, int] | None = None  # (epoch, samples of this rank already seen)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, 0
        if self.resume is not None and self.resume[0] == epoch:  # a run resumed mid-epoch: once
            skip, self.resume = self.resume[1], None
        return ((epoch, index) for index in islice(self.rank_indices(), skip, None))

    def rank_indices(self) -> Iterator[int]:
        """This rank's indices for the epoch: DistributedSampler's (a subclass may order them otherwise)."""
        return super().__iter__()


def stack_images(images: list[Any]) -> Any:
    """``[B, 3, H, W]``; images that batch themselves (``type(image).collate``: a high-res model's views) do."""
    collate = getattr(type(images[0]), "collate", None)
    return collate(images) if collate is not None else torch.stack(images)


class CaptionCollator:
    """Stacks images; tokenises the chosen captions and hard negatives (``[B, K, L]`` + ``[B, K]`` mask).

    With hard images, the neighbours follow the B originals: 2B images, captions and negatives.
    Samples are never ``None``: :class:`Samples` and :class:`StreamSamples` replace corrupt ones.
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor] | None) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        if not samples or any(s is None for s in samples):
            raise ValueError(
                f"a batch of {len(samples)} samples with {sum(s is None for s in samples)} missing: a skipped corrupt"
                " sample must be replaced (datamodules.samples.Samples does), or ranks train on different batch sizes"
            )
        samples = samples + [s["neighbour"] for s in samples if s.get("neighbour") is not None]
        batch: dict[str, Any] = {
            "key": [s["key"] for s in samples],
            "image": stack_images([s["image"] for s in samples]),
            "captions": [s["captions"] for s in samples],
            "image_id": torch.tensor([s["image_id"] for s in samples]),
        }
        if "stream_position" in samples[0]:  # every sample of a batch comes from one worker, in order
            batch["stream_position"] = samples[-1]["stream_position"]
        if self.tokenizer is None:
            return batch
        batch["caption"] = [s["caption"] for s in samples]
        batch["text"] = self.tokenizer(batch["caption"])
        if "negatives" in samples[0]:
            negatives = [s["negatives"] for s in samples]
            batch["negative_captions"] = negatives
            batch["negative_mask"] = torch.tensor([[n is not None for n in row] for row in negatives])
            tokens = self.tokenizer([n or "" for row in negatives for n in row])
            batch["negatives"] = tokens.view(len(samples), len(negatives[0]), -1)
        return batch
