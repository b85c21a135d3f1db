"""Length-grouped batches (LLaVA's ``group_by_modality_length``): a permutation of the plain sampler's epoch,
one modality per batch, similar lengths within a batch, a function of (seed, epoch), split over ranks and
resumable mid-epoch as :class:`~datamodules.samples.EpochIndexSampler` is; off by default."""

import random

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset

import datamodules.samples
from datamodules import ZooDataModule
from datamodules.length_grouped import LengthGroupedSampler, grouped_indices
from datamodules.samples import EpochIndexSampler

N, B = 2004, 8  # 250 batches + 4 samples: a partial batch to drop
_rng = random.Random(0)
LENGTHS = [_rng.randint(20, 2000) for _ in range(N)]  # planted: text + visual tokens
HAS_IMAGE = [_rng.random() < 0.8 for _ in range(N)]


def _sampler(epoch=0, seed=0, lengths=LENGTHS, has_image=HAS_IMAGE, drop_last=True):
    sampler = LengthGroupedSampler(list(range(len(lengths))), lengths, B, seed, has_image, drop_last=drop_last)
    sampler.set_epoch(epoch)
    return sampler


def _order(sampler):
    return [index for _, index in sampler]


def _batches(order):  # the full batches a DataLoader with drop_last makes
    return [order[i : i + B] for i in range(0, len(order) - B + 1, B)]


def _mixed(batches, has_image):
    return sum(len({has_image[i] for i in batch}) > 1 for batch in batches)


def test_the_grouped_order_is_a_permutation_of_the_plain_samplers_epoch():
    order, plain = _order(_sampler()), EpochIndexSampler(list(range(N)), shuffle=True, seed=0, drop_last=True)
    assert len(order) == len(plain) == N and sorted(order) == list(range(N))  # same count, each once
    assert len(_batches(order)) == len(_batches(_order(plain))) == N // B
    lengths = LENGTHS[:497]  # 497 samples over 2 ranks: drop_last keeps 496, as DistributedSampler does
    ranks = grouped_indices(lengths, B, 2, len(lengths) // 2, torch.Generator().manual_seed(0))
    assert len(set(ranks[0] + ranks[1])) == len(ranks[0] + ranks[1]) == 496
    padded = grouped_indices(lengths, B, 2, 249, torch.Generator().manual_seed(0))  # no drop_last: padded to 498
    assert sorted(set(padded[0] + padded[1])) == list(range(497)) and len(padded[0]) == len(padded[1]) == 249


def test_the_order_is_a_function_of_seed_and_epoch():
    assert _order(_sampler()) == _order(_sampler())
    assert _order(_sampler(epoch=1)) != _order(_sampler())
    assert _order(_sampler(seed=1)) != _order(_sampler())


def test_each_batch_holds_one_modality():
    assert _mixed(_batches(_order(_sampler())), HAS_IMAGE) == 0
    signed = [n if image else -n for n, image in zip(LENGTHS, HAS_IMAGE)]  # LLaVA's modality_lengths
    assert _order(_sampler(lengths=signed, has_image=None)) == _order(_sampler())
    for trial in range(20):  # a mixed batch only when the counts force it (both remainders fill one): at most one
        rng = random.Random(trial)
        n = rng.randint(10, 60)
        lengths, has_image = [rng.randint(1, 99) for _ in range(n)], [rng.random() < 0.6 for _ in range(n)]
        images = sum(has_image)
        forced = images % B + (n - images) % B >= B
        assert _mixed(_batches(_order(_sampler(lengths=lengths, has_image=has_image))), has_image) == forced


def test_batches_hold_similar_lengths():
    def spread(order):  # (padding / padded tokens, mean max / min length of a batch)
        rows = [[LENGTHS[i] for i in batch] for batch in _batches(order)]
        padded = sum(len(r) * max(r) for r in rows)
        return 1 - sum(map(sum, rows)) / padded, sum(max(r) / min(r) for r in rows) / len(rows)

    grouped = spread(_order(_sampler()))
    shuffled = spread(_order(EpochIndexSampler(list(range(N)), shuffle=True, seed=0, drop_last=True)))
    assert grouped[0] < 0.06 and shuffled[0] > 0.35, (grouped, shuffled)  # 3% of padding, 43% shuffled
    assert grouped[1] < 1.5 and shuffled[1] > 10, (grouped, shuffled)  # ratios 1.25 and 17
    first = _batches(_order(_sampler()))[0]
    assert max(LENGTHS) in [LENGTHS[i] for i in first]  # the longest step first: an out-of-memory shows at once


def test_two_ranks_share_the_epoch_once_in_steps_of_one_modality(monkeypatch):
    """Every batch holds one modality; every step too, but the one made of both modalities' leftovers."""
    monkeypatch.setattr(datamodules.samples, "world_size", lambda: 2)
    ranks = []
    for r in range(2):
        monkeypatch.setattr(datamodules.samples, "rank", lambda r=r: r)
        ranks.append(_order(_sampler()))
    assert len(ranks[0]) == len(ranks[1]) == N // 2 and sorted(ranks[0] + ranks[1]) == list(range(N))
    steps = [a + b for a, b in zip(_batches(ranks[0]), _batches(ranks[1]))]  # what the ranks train on together
    assert _mixed(sum(map(_batches, ranks), []), HAS_IMAGE) == 0 and _mixed(steps, HAS_IMAGE) <= 1
    assert _mixed(steps[:-1], HAS_IMAGE) == 0  # the leftovers' step is the last (unless it holds the longest)
    totals = [(sum(LENGTHS[i] for i in a), sum(LENGTHS[i] for i in b)) for a, b in zip(*map(_batches, ranks))]
    assert sum(abs(a - b) / max(a, b) for a, b in totals) / len(totals) < 0.05  # LLaVA's even split over ranks


def test_a_mid_epoch_resume_gives_exactly_the_remaining_batches():
    for epoch in range(2):
        whole = _order(_sampler(epoch=epoch))
        for done in (1, 17, N // B - 1):
            sampler = _sampler(epoch=epoch)
            sampler.resume = (epoch, done * B)  # what ZooDataModule sets from a checkpoint after `done` batches
            assert _order(sampler) == whole[done * B :]
            assert _order(sampler) == whole  # once


class Records(Dataset):
    """Map-style records offering ``lengths`` and ``has_image`` (as the instruction records do)."""

    def __init__(self, lengths=LENGTHS, has_image=HAS_IMAGE):
        self.lengths, self.has_image = lengths, has_image

    def __len__(self):
        return N

    def __getitem__(self, index):
        return {"key": index}


class Wrapped(Dataset):  # a wrapper (as WithNeighbours): the lengths are its inner records'
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]


class Keys:
    seed = 0

    def build(self, records, record, index, epoch):
        return {"key": record["key"]}


class Stream(IterableDataset):
    def __iter__(self):
        return iter([])


class Toy(ZooDataModule):
    def __init__(self, source=None, **kwargs):
        super().__init__(batch_size=B, num_workers=0, **kwargs)
        self.source = Records() if source is None else source

    def records(self, split):
        return self.source

    def recipe(self, split, records, train, tokenize):
        return Keys()

    def collator(self, split, tokenize):
        return lambda samples: {"key": [s["key"] for s in samples]}


def _connect(dm):
    dm.connect(tokenizer=str, train_transform=None, eval_transform=None)
    return dm


def _keys(dm):
    return [batch["key"] for batch in _connect(dm).train_dataloader()]


def test_the_data_module_groups_and_resumes_only_when_asked():
    plain = _keys(Toy())
    assert plain == _batches(_plain_order())  # off by default: the plain shuffled order, unchanged
    assert type(_connect(Toy()).train_dataloader().sampler) is EpochIndexSampler
    grouped = _keys(Toy(group_by_length=True))
    assert grouped == _batches(_order(_sampler())) and grouped != plain
    assert _keys(Toy(Wrapped(Records()), group_by_length=True)) == grouped
    resumed = Toy(group_by_length=True)
    resumed.load_state_dict({"epoch": 0, "batches": 3})  # a checkpoint after 3 batches
    assert _keys(resumed) == grouped[3:]


def _plain_order():  # DistributedSampler's shuffle, seeded by seed + epoch: what the default trains on
    generator = torch.Generator()
    generator.manual_seed(0)
    return torch.randperm(N, generator=generator).tolist()


def test_group_by_length_without_lengths_names_the_module_and_the_records():
    class Plain(Dataset):
        __len__, __getitem__ = Records.__len__, Records.__getitem__

    with pytest.raises(ValueError, match="Toy: group_by_length needs .* `lengths`.*Plain has none"):
        _keys(Toy(Plain(), group_by_length=True))
    with pytest.raises(ValueError, match="Toy: group_by_length needs map-style .* Stream is a stream"):
        _keys(Toy(Stream(), group_by_length=True))
    _keys(Toy(Plain()))  # off: nothing asked of the records


@pytest.mark.parametrize("world", [1, 2])
def test_the_batches_of_one_optimiser_step_are_one_modality_and_move_together(world):
    k, num_samples = 4, N // world
    ranks = grouped_indices(LENGTHS, B, world, num_samples, torch.Generator().manual_seed(0), HAS_IMAGE, accumulation=k)
    plain = grouped_indices(LENGTHS, B, world, num_samples, torch.Generator().manual_seed(0), HAS_IMAGE)
    assert sorted(i for r in ranks for i in r) == sorted(i for r in plain for i in r)  # the same samples
    updates = [[b for r in ranks for b in _batches(r)[u * k : (u + 1) * k]] for u in range(num_samples // B // k)]
    mixed = sum(len({HAS_IMAGE[i] for b in update for i in b}) > 1 for update in updates)
    assert mixed <= 1  # at most the one step of set-aside remainders
    spread = [max(LENGTHS[i] for b in u for i in b) - min(LENGTHS[i] for b in u for i in b) for u in updates]
    shuffled, size = list(range(N)), k * B * world
    random.Random(1).shuffle(shuffled)
    chunks = [[LENGTHS[i] for i in shuffled[s : s + size]] for s in range(0, N - size, size)]
    random_spread = [max(c) - min(c) for c in chunks]
    assert sorted(spread)[len(spread) // 2] < sorted(random_spread)[len(random_spread) // 2] / 3
    longest = [max(LENGTHS[i] for b in u for i in b) for u in updates]
    assert longest[0] == max(longest)  # the optimiser step holding the longest sample first, whole
    with pytest.raises(ValueError, match="accumulation"):
        grouped_indices(LENGTHS, B, 1, N, torch.Generator(), HAS_IMAGE, accumulation=0)


def test_the_data_module_groups_by_the_trainers_and_the_modules_accumulation():
    class Trainer:
        accumulate_grad_batches = 2
        lightning_module = type("Module", (), {"contrastive_accumulation": 3})()

    module = ZooDataModule()
    assert module.batches_per_update() == 1
    module.trainer = Trainer()
    assert module.batches_per_update() == 6
