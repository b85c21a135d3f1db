"""Length-grouped training batches (LLaVA's ``group_by_modality_length``), deterministic and resumable.

:class:`LengthGroupedSampler` is an :class:`~datamodules.samples.EpochIndexSampler` whose epoch order puts
samples of similar length (text tokens + visual tokens) in the same step, one modality per step (image or
text-only) when the records say which is which: less padding, and no step pays for its longest row many times.
The order is a function of (seed, epoch) alone and is the same on every rank; each rank keeps its own batches,
so a mid-epoch resume skips ``batches x batch_size`` indices exactly as the plain sampler does.

The epoch (:func:`grouped_indices`), with ``W`` ranks and ``B`` samples per batch (a step is ``W x B`` samples):

1. shuffle the epoch's indices (``torch.randperm`` seeded by seed + epoch, as DistributedSampler), then pad or
   trim them to ``W x num_samples`` as DistributedSampler does (``drop_last``);
2. split them by modality; set aside a random ``n mod (W x B)`` of each group (its last ones in the shuffle);
3. cut the rest of each group into mega-batches of ``mega_steps`` steps (fewer for a small group: at least 4
   mega-batches, as transformers' sampler), sort each by length (descending) and cut it into steps: a step
   holds consecutive lengths of one modality;
4. split each step into ``W`` batches whose token totals are close (LLaVA's ``split_to_even_chunks``);
5. shuffle the steps, then append the step made of the set-aside samples when they fill one (sorted by length
   within each modality, whole batches of one modality first: its batches may differ in modality, and one
   batch mixes both only when the counts force it, at most once per epoch); move the step holding the longest
   sample to the front, so an out-of-memory shows on the first step;
6. what is left (fewer than ``B`` per rank) ends each rank's share: the partial batch ``drop_last`` drops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, IterableDataset

from datamodules.samples import EpochIndexSampler

MEGA_STEPS = 50  # steps sorted together, at most (transformers' mega_batch_mult)


def modalities(lengths: Sequence[int], has_image: Sequence[bool] | None = None) -> tuple[list[int], list[bool] | None]:
    """``(lengths, has_image)`` from either layout: lengths and a flag per sample, or LLaVA's signed lengths
    (``modality_lengths``: negative for a text-only sample). ``has_image`` is None when there is one modality."""
    if has_image is not None:
        if len(has_image) != len(lengths):
            raise ValueError(f"{len(lengths)} lengths but {len(has_image)} has_image flags")
        return [abs(int(n)) for n in lengths], [bool(h) for h in has_image]
    if any(n < 0 for n in lengths):
        return [abs(int(n)) for n in lengths], [n > 0 for n in lengths]
    return [int(n) for n in lengths], None


def even_batches(step: list[int], lengths: Sequence[int], world: int) -> list[list[int]]:
    """A step (sorted by length, descending) as ``world`` batches of one size with close token totals: each
    sample joins the batch with the fewest tokens that is not full (LLaVA's ``split_to_even_chunks``)."""
    size = len(step) // world
    batches: list[list[int]] = [[] for _ in range(world)]
    totals = [0.0] * world
    for index in step:
        rank = totals.index(min(totals))
        batches[rank].append(index)
        totals[rank] = math.inf if len(batches[rank]) == size else totals[rank] + lengths[index]
    return batches


def grouped_indices(
    lengths: Sequence[int],
    batch_size: int,
    world: int,
    num_samples: int,
    generator: torch.Generator,
    has_image: Sequence[bool] | None = None,
    mega_steps: int = MEGA_STEPS,
    accumulation: int = 1,
) -> list[list[int]]:
    """Each rank's ``num_samples`` indices for an epoch: rank ``r``'s batch ``b`` is ``[b * B, (b + 1) * B)``
    of its list, and the ``W`` batches ``b`` of the ranks form a step (see the module's docstring). With
    ``accumulation`` k batches per optimiser step, a "step" above is k consecutive steps of ``W`` batches: the k
    micro-steps of one optimiser step hold consecutive lengths of one modality and move together (LLaVA's
    mega-batch of world x batch x gradient accumulation)."""
    if accumulation < 1:
        raise ValueError(f"accumulation must be at least 1, got {accumulation}")
    length = lengths.__getitem__
    n, step = len(lengths), batch_size * world * accumulation
    micro = batch_size * world
    total = num_samples * world
    order = torch.randperm(n, generator=generator).tolist() if n else []
    order = (order * math.ceil(total / max(n, 1)))[:total]  # DistributedSampler's padding / drop_last
    groups = (
        [order] if has_image is None else [[i for i in order if has_image[i]], [i for i in order if not has_image[i]]]
    )
    steps, set_aside = [], []
    for group in groups:
        cut = len(group) - len(group) % step
        set_aside.append(sorted(group[cut:], key=length, reverse=True))
        mega = step * max(1, min(cut // (4 * step), mega_steps))
        for start in range(0, cut, mega):
            ordered = sorted(group[start : min(start + mega, cut)], key=length, reverse=True)
            steps += [
                [even_batches(ordered[m : m + micro], lengths, world) for m in range(s, s + step, micro)]
                for s in range(0, len(ordered), step)
            ]
    steps = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
    steps = [micro_step for update in steps for micro_step in update]  # optimiser steps -> their micro-steps
    pure, mixed = [], []
    for rest in set_aside:  # whole batches of one modality, then the remainders of both together
        whole = len(rest) - len(rest) % batch_size
        pure += rest[:whole]
        mixed += rest[whole:]
    rest = pure + sorted(mixed, key=length, reverse=True)
    full = len(rest) // micro  # set-aside micro-steps: a few per epoch, at the end
    for s in range(0, full * micro, micro):
        steps.append([rest[s + r * batch_size : s + (r + 1) * batch_size] for r in range(world)])
    whole = len(steps) - len(steps) % accumulation  # micro-steps of whole optimiser steps
    if whole:  # the (whole) optimiser step holding the longest sample first
        longest = max(range(whole), key=lambda s: max(length(i) for batch in steps[s] for i in batch))
        first = longest - longest % accumulation
        steps[:0] = [steps.pop(first) for _ in range(accumulation)]
    tail, share = rest[full * micro :], num_samples - len(steps) * batch_size
    return [[i for s in steps for i in s[r]] + tail[r * share : (r + 1) * share] for r in range(world)]


class LengthGroupedSampler(EpochIndexSampler):
    """An :class:`~datamodules.samples.EpochIndexSampler` (``(epoch, index)`` pairs, ranks, ``set_epoch``,
    ``resume``) whose order is :func:`grouped_indices`: batches of ``batch_size`` of similar length, one
    modality per step when ``has_image`` (or signed ``lengths``) says which samples have an image."""

    def __init__(
        self,
        dataset: Dataset,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        has_image: Sequence[bool] | None = None,
        drop_last: bool = True,
        mega_steps: int = MEGA_STEPS,
        accumulation: int = 1,
    ) -> None:
        super().__init__(dataset, shuffle=True, seed=seed, drop_last=drop_last)
        self.lengths, self.has_image = modalities(lengths, has_image)
        if len(self.lengths) != len(dataset):
            raise ValueError(f"{len(self.lengths)} lengths for a dataset of {len(dataset)} samples")
        self.batch_size, self.mega_steps, self.accumulation = batch_size, mega_steps, accumulation

    def rank_indices(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        ranks = grouped_indices(
            self.lengths, self.batch_size, self.num_replicas, self.num_samples, generator, self.has_image,
            self.mega_steps, self.accumulation,
        )  # fmt: skip
        return iter(ranks[self.rank])


def length_grouped_sampler(
    module: str, records: Any, dataset: Dataset, batch_size: int, seed: int, accumulation: int = 1
) -> LengthGroupedSampler:
    """The training sampler of ``group_by_length``: ``lengths`` (and ``has_image``, when offered) come from the
    records or a wrapper's inner ``records``; ``module`` (the data module's name) appears in the errors;
    ``accumulation``: batches per optimiser step on a rank."""
    if isinstance(records, IterableDataset):
        raise ValueError(
            f"{module}: group_by_length needs map-style training records; {type(records).__name__} is a stream"
        )
    source = records
    while source is not None and getattr(source, "lengths", None) is None:
        source = getattr(source, "records", None)
    if source is None:
        raise ValueError(
            f"{module}: group_by_length needs training records with `lengths` (a token count per record, "
            f"optionally `has_image`); {type(records).__name__} has none"
        )
    if len(source.lengths) != len(dataset):
        raise ValueError(
            f"{module}: {type(source).__name__} offers {len(source.lengths)} lengths for {len(dataset)} samples"
        )
    has_image = getattr(source, "has_image", None)
    return LengthGroupedSampler(dataset, source.lengths, batch_size, seed, has_image, accumulation=accumulation)
