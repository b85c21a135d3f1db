"""ZooDataModule: a subclass states its records, recipe and collator and inherits (epoch, index) sampling,
exact mid-epoch resume (map-style and streams), seeded augmentation and corrupt-sample substitution. The
toy below is an instruction data module with a variable number of image tiles (AnyRes's layout)."""

import io
import json
from types import SimpleNamespace

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import Dataset

import datamodules.samples
from datamodules import Batch, ImageCaptionDataModule, WebDatasetSource, ZooDataModule
from datamodules.samples import EpochIndexSampler, seeded
from datamodules.sources import open_image

SIZES = [(8, 8), (16, 8), (24, 8), (8, 8), (16, 8), (8, 8), (24, 8), (16, 8)]  # 1, 2 or 3 grid tiles


def _image(i):
    width, height = SIZES[i]
    return Image.frombytes("RGB", (width, height), bytes((7 * i + j) % 256 for j in range(width * height * 3)))


def _conversation(i):
    return [{"from": "human", "value": f"<image> what is {i}?"}, {"from": "gpt", "value": f"it is {i}"}]


class Conversations(Dataset):
    """Map-style records; ``None`` for the corrupt ones (as a source built with skip_corrupt returns)."""

    def __init__(self, broken=()):
        self.broken = set(broken)

    def __len__(self):
        return len(SIZES)

    def __getitem__(self, i):
        return None if i in self.broken else {"key": f"c{i}", "image": _image(i), "conversation": _conversation(i)}


class TileRecipe:
    """AnyRes-like: a base view plus one tile per square of the image, each flipped at random in training."""

    def __init__(self, transform, seed, train, seeded_augmentation):
        self.transform, self.seed, self.train, self.seeded_augmentation = transform, seed, train, seeded_augmentation

    def _tiles(self, image):
        tiles = [image.resize((4, 4))]
        side = image.height
        tiles += [image.crop((x, 0, x + side, side)).resize((4, 4)) for x in range(0, image.width, side)]
        tiles = torch.stack([self.transform(tile) for tile in tiles])
        return torch.where(torch.rand(len(tiles), 1, 1, 1) < 0.5, tiles.flip(-1), tiles) if self.train else tiles

    def build(self, records, record, index, epoch):
        if self.seeded_augmentation:
            tiles = seeded(self._tiles, record["image"], seed=self.seed, epoch=epoch, index=index)
        else:
            tiles = self._tiles(record["image"])
        size = record["image"].size[::-1]  # (height, width)
        return {"key": record["key"], "tiles": tiles, "size": size, "turns": record["conversation"]}


class InstructionCollator:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples) -> Batch:
        ids, labels = [], []
        for sample in samples:
            question, answer = (self.tokenizer(turn["value"]) for turn in sample["turns"])
            ids.append(torch.cat([question, answer]))
            labels.append(torch.cat([torch.full_like(question, -100), answer]))
        length = max(len(i) for i in ids)
        def pad(rows, value):
            return torch.stack([torch.nn.functional.pad(r, (0, length - len(r)), value=value) for r in rows])

        batch: Batch = {
            "key": [s["key"] for s in samples],
            "pixel_values": torch.cat([s["tiles"] for s in samples]),
            "tiles_per_image": torch.tensor([len(s["tiles"]) for s in samples]),
            "image_sizes": torch.tensor([s["size"] for s in samples]),
            "input_ids": pad(ids, 0),
            "labels": pad(labels, -100),
            "attention_mask": pad([torch.ones_like(i) for i in ids], 0),
        }
        if "stream_position" in samples[0]:
            batch["stream_position"] = samples[-1]["stream_position"]
        return batch


class InstructionDataModule(ZooDataModule):
    def __init__(self, broken=(), shards=None, **kwargs):
        super().__init__(**kwargs)
        self.broken, self.shards = broken, shards

    def records(self, split):
        if self.shards is None:
            return Conversations(self.broken)

        def decode(sample):
            image = open_image(sample["png"], sample["__key__"])
            return {"key": sample["__key__"], "image": image, "conversation": json.loads(sample["json"])}

        return WebDatasetSource(self.shards, shuffle=4 if split == "train" else 0, seed=self.seed, decode=decode)

    def recipe(self, split, records, train, tokenize):
        transform = self.transforms["train" if train else "eval"]
        return TileRecipe(transform, self.seed, train, self.seeded_augmentation and train)

    def collator(self, split, tokenize):
        return InstructionCollator(self.tokenizer)


def _connect(dm):
    to_tensor = lambda image: torch.tensor(list(image.getdata()), dtype=torch.float32).T.reshape(3, *image.size)  # noqa: E731
    tokenizer = lambda text: torch.tensor([ord(c) for c in text])  # noqa: E731
    dm.connect(tokenizer=tokenizer, train_transform=to_tensor, eval_transform=to_tensor)
    return dm


def _equal(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_a_subclass_batches_a_variable_number_of_tiles_per_image():
    dm = _connect(InstructionDataModule(batch_size=4, num_workers=0))
    batch = next(iter(dm.val_dataloader()))
    assert batch["key"] == ["c0", "c1", "c2", "c3"]
    assert batch["tiles_per_image"].tolist() == [2, 3, 4, 2]  # base view + 1, 2 or 3 grid tiles
    assert batch["pixel_values"].shape == (11, 3, 4, 4)
    first, second = batch["pixel_values"].split(batch["tiles_per_image"].tolist())[:2]
    transform = _connect(InstructionDataModule()).transforms["eval"]
    assert torch.equal(second[1], transform(_image(1).crop((0, 0, 8, 8)).resize((4, 4))))  # eval: no flips
    assert batch["image_sizes"].tolist() == [[8, 8], [8, 16], [8, 24], [8, 8]]  # (height, width)
    answer = len("it is 0")
    assert (batch["labels"][0] != -100).sum() == answer and batch["attention_mask"].shape == batch["input_ids"].shape


def test_a_subclass_inherits_exact_mid_epoch_resume_and_seeded_augmentation():
    dm = _connect(InstructionDataModule(batch_size=2, num_workers=0))
    straight = list(dm.train_dataloader())
    assert len(straight) == 4
    again = list(_connect(InstructionDataModule(batch_size=2, num_workers=2)).train_dataloader())  # any workers
    assert all(_equal(a, b) for a, b in zip(straight, again, strict=True))
    resumed = _connect(InstructionDataModule(batch_size=2, num_workers=0))
    resumed.load_state_dict({"epoch": 0, "batches": 3})  # a checkpoint after 3 batches
    (rest,) = list(resumed.train_dataloader())
    assert _equal(rest, straight[3])


def test_a_subclass_inherits_corrupt_sample_substitution():
    dm = _connect(InstructionDataModule(broken={1, 2}, batch_size=4, num_workers=0, skip_corrupt=True))
    keys = [batch["key"] for batch in dm.val_dataloader()]
    assert [len(k) for k in keys] == [4, 4] and not {"c1", "c2"} & set(sum(keys, []))


def test_a_streaming_subclass_with_its_own_decode_resumes_where_it_stopped(tmp_path):
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"c-{s:06d}.tar")) as sink:
            for i in range(4 * s, 4 * s + 4):
                buffer = io.BytesIO()
                _image(i).save(buffer, format="PNG")
                sink.write({"__key__": f"c{i}", "png": buffer.getvalue(), "json": json.dumps(_conversation(i))})
    trainer = SimpleNamespace(training=True, current_epoch=0, world_size=1, global_rank=0)

    def module():
        shards = str(tmp_path / "c-{000000..000001}.tar")
        dm = _connect(InstructionDataModule(shards=shards, batch_size=2, num_workers=2))
        dm.trainer = trainer
        return dm

    dm = module()
    straight = [dm.on_before_batch_transfer(batch, 0) for batch in dm.train_dataloader()]
    assert len(straight) == 4 and "stream_position" not in straight[0]
    for stop in range(1, 4):
        dm = module()
        for _, batch in zip(range(stop), dm.train_dataloader()):
            dm.on_before_batch_transfer(batch, 0)  # what training records from the batches it trains on
        stream = {"positions": dm._stream.positions, "last_share": dm._stream.last_share}
        resumed = module()
        resumed.load_state_dict({"epoch": 0, "batches": stop, "stream": [stream]})
        rest = [resumed.on_before_batch_transfer(batch, 0) for batch in resumed.train_dataloader()]
        assert len(rest) == 4 - stop and all(_equal(a, b) for a, b in zip(rest, straight[stop:])), stop


def test_image_caption_module_is_a_zoo_data_module_with_unchanged_arguments():
    dm = ImageCaptionDataModule()
    assert isinstance(dm, ZooDataModule) and not hasattr(dm, "has_split")
    assert list(dm.hparams) == [
        "source", "train", "val", "test", "batch_size", "eval_batch_size", "num_workers", "skip_corrupt",
        "shuffle_buffer", "shapesworld", "benchmark_dir", "hard_negatives", "hard_images", "neighbours", "seed",
        "warm_text_engine", "seeded_augmentation",
    ]  # fmt: skip


def test_the_sampler_takes_rank_and_world_from_the_one_distributed_helper(monkeypatch):
    monkeypatch.setattr(datamodules.samples, "world_size", lambda: 2)
    monkeypatch.setattr(datamodules.samples, "rank", lambda: 1)
    sampler = EpochIndexSampler(list(range(8)), shuffle=False, seed=0)
    assert (sampler.num_replicas, sampler.rank) == (2, 1)
    assert [index for _, index in sampler] == [1, 3, 5, 7]
