import io
import json
import logging
from types import SimpleNamespace

import pytest
import torch
import webdataset as wds
from PIL import Image

from datamodules import CorruptSampleError, ImageCaptionDataModule, ManifestDataset, ShapesWorldConfig, WebDatasetSource
from datamodules.samples import StreamPosition
from datamodules.shapesworld import generate_sample, write_shards
from tests.conftest import assert_stream_resumes_at_every_stop


def _tokenizer(texts):
    return torch.tensor([[len(t)] for t in texts])


def _connect(dm):
    to_tensor = lambda image: torch.tensor(list(image.getdata()), dtype=torch.float32).T.reshape(3, *image.size)  # noqa: E731
    dm.connect(tokenizer=_tokenizer, train_transform=to_tensor, eval_transform=to_tensor)
    return dm


def _png(color=(255, 0, 0), size=8):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _manifest(tmp_path, rows, name="manifest.json"):
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return path


def test_webdataset_write_read_round_trip(tmp_path):
    write_shards(tmp_path, n=10, split="val", image_size=32, shard_size=4)
    dm = _connect(
        ImageCaptionDataModule(
            source="webdataset", val=str(tmp_path / "shapesworld-val-{000000..000002}.tar"), batch_size=4, num_workers=0
        )
    )
    batches = list(dm.retrieval_dataloader("val"))
    keys = [k for b in batches for k in b["key"]]
    captions = [c for b in batches for c in b["captions"]]
    assert keys == [f"val-{i:08d}" for i in range(10)]
    expected = [generate_sample(i, split="val", image_size=32) for i in range(10)]
    assert captions == [e["captions"] for e in expected]
    first = torch.tensor(list(expected[0]["image"].getdata()), dtype=torch.float32).T.reshape(3, 32, 32)
    assert torch.equal(batches[0]["image"][0], first)


def test_manifest_groups_captions_and_tokenises(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    (tmp_path / "b.png").write_bytes(_png((0, 0, 255)))
    rows = [
        {"image": "a.png", "caption": "red"},
        {"image": "b.png", "captions": ["blue", "a blue square"]},
        {"image": "a.png", "caption": "a red square"},
    ]
    dataset = ManifestDataset(_manifest(tmp_path, rows))
    assert [r["captions"] for r in dataset.records] == [["red", "a red square"], ["blue", "a blue square"]]
    dm = _connect(
        ImageCaptionDataModule(source="manifest", train=str(tmp_path / "manifest.json"), batch_size=2, num_workers=0)
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 8, 8)
    assert [c in caps for c, caps in zip(batch["caption"], batch["captions"])] == [True, True]
    assert batch["text"].squeeze(1).tolist() == [len(c) for c in batch["caption"]]


def test_csv_manifest(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    (tmp_path / "m.csv").write_text("image,caption\na.png,one\na.png,two\n")
    assert ManifestDataset(tmp_path / "m.csv").records[0]["captions"] == ["one", "two"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ({"image": "a.png"}, "expected a list"),
        ([{"caption": "no image"}], "record 0: needs 'image'"),
        (
            [{"image": "a.png", "caption": "ok"}, {"image": "b.png", "caption": "   "}],
            "record 1 (key b.png): empty caption",
        ),
        ([{"image": "a.png", "captions": "not a list"}], "'captions' must be a list"),
    ],
)
def test_bad_manifest_names_file_and_record(tmp_path, rows, message):
    path = _manifest(tmp_path, rows)
    with pytest.raises(CorruptSampleError, match="manifest .*manifest.json") as error:
        ManifestDataset(path)
    assert message in str(error.value)


def test_unparseable_manifest(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CorruptSampleError, match="m.json: cannot parse"):
        ManifestDataset(tmp_path / "m.json")


def test_corrupt_and_missing_images_raise_with_path_and_key(tmp_path):
    (tmp_path / "bad.png").write_bytes(_png()[:30])  # truncated
    path = _manifest(
        tmp_path, [{"image": "bad.png", "caption": "x", "key": "k1"}, {"image": "gone.png", "caption": "y"}]
    )
    dataset = ManifestDataset(path)
    with pytest.raises(CorruptSampleError, match=r"bad.png \(key k1\): cannot read image"):
        dataset[0]
    with pytest.raises(CorruptSampleError, match=r"gone.png \(key gone.png\): cannot read image"):
        dataset[1]


def test_skip_corrupt_skips_counts_and_replaces(tmp_path, caplog):
    (tmp_path / "ok.png").write_bytes(_png())
    (tmp_path / "bad.png").write_bytes(b"not an image")
    rows = [
        {"image": "ok.png", "caption": "fine"},
        {"image": "bad.png", "caption": "broken"},
        {"image": "ok2.png", "caption": ""},
    ]
    dm = _connect(
        ImageCaptionDataModule(
            source="manifest", val=str(_manifest(tmp_path, rows)), batch_size=4, num_workers=0, skip_corrupt=True
        )
    )
    with caplog.at_level(logging.WARNING):
        batches = list(dm.val_dataloader())
    assert [b["key"] for b in batches] == [["ok.png"] * 3]  # the one good sample stands in for both bad ones
    assert "empty caption" in caplog.text and "bad.png" in caplog.text
    assert "2 skipped so far" in caplog.text
    assert "replaced skipped sample 1 (epoch 0) by sample 0 (key ok.png)" in caplog.text


def test_corrupt_webdataset_sample_names_shard_and_key(tmp_path):
    shard = str(tmp_path / "bad-000000.tar")
    with wds.TarWriter(shard) as sink:
        sink.write({"__key__": "good", "png": _png(), "txt": "a red square"})
        sink.write({"__key__": "broken", "png": b"garbage", "txt": "oops"})
        sink.write({"__key__": "nocap", "png": _png()})
    with pytest.raises(CorruptSampleError, match=r"bad-000000.tar \(key broken\): cannot read image"):
        list(WebDatasetSource(shard))
    source = WebDatasetSource(shard, skip_corrupt=True)
    assert [r["key"] for r in source] == ["good"] * 3  # replaced: as many records as samples
    assert source.skipped.count == 2 and source.skipped.replaced == 2


def test_unconnected_datamodule_says_what_to_do():
    dm = ImageCaptionDataModule(shapesworld=ShapesWorldConfig(n_train=4))
    with pytest.raises(RuntimeError, match="connect"):
        dm.train_dataloader()


def test_shapesworld_batches_are_reproducible():
    def first_batch():
        dm = _connect(
            ImageCaptionDataModule(batch_size=4, num_workers=0, shapesworld=ShapesWorldConfig(n_val=8, image_size=16))
        )
        return next(iter(dm.val_dataloader()))

    a, b = first_batch(), first_batch()
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    assert a["caption"] == [generate_sample(i, split="val", image_size=16)["captions"][0] for i in range(4)]


def test_seeded_augmentation_is_a_function_of_seed_epoch_and_index():
    import random

    import torchvision.transforms as T
    from PIL import Image

    from datamodules.samples import SampleRecipe

    transform = T.Compose([T.RandomResizedCrop(16, scale=(0.2, 1.0)), T.ToTensor()])
    recipe = SampleRecipe(transform, None, seeded_augmentation=True)
    image = Image.frombytes("RGB", (32, 32), bytes(range(256)) * 12)
    first = recipe.augment(image, index=5, epoch=1)
    torch.manual_seed(123)
    random.seed(9)
    state = torch.get_rng_state()
    assert torch.equal(recipe.augment(image, index=5, epoch=1), first)  # whatever the global RNG state
    assert torch.equal(torch.get_rng_state(), state)  # which it leaves untouched
    assert not torch.equal(recipe.augment(image, index=5, epoch=2), first)
    assert not torch.equal(recipe.augment(image, index=6, epoch=1), first)


def test_streaming_training_resumes_its_epoch_count(tmp_path):
    from types import SimpleNamespace

    write_shards(tmp_path, n=8, split="train", image_size=32, shard_size=4)
    dm = _connect(
        ImageCaptionDataModule(
            source="webdataset",
            train=str(tmp_path / "shapesworld-train-{000000..000001}.tar"),
            batch_size=4,
            num_workers=0,
            hard_negatives=["negclip"],
        )
    )
    assert next(iter(dm.train_dataloader()))["negatives"].shape[:2] == (4, 1)
    dm.trainer = SimpleNamespace(current_epoch=3, fast_dev_run=False)  # restored from a checkpoint
    loader = dm.train_dataloader()
    assert loader.dataset.epoch == 2
    next(iter(loader))
    assert loader.dataset.epoch == 3  # the samples of epoch 3, not a second epoch 0


def _stream_batches(loader):
    return [(batch["key"], batch["stream_position"]) for batch in loader]


def test_webdataset_epoch_continues_where_a_mid_epoch_checkpoint_left_it(tmp_path):
    """Every interruption point, the tail where one worker has run out of shards included."""
    write_shards(tmp_path, n=40, image_size=16, shard_size=8)  # 5 shards: 3 for one worker, 2 for the other
    pattern = str(tmp_path / "shapesworld-train-{000000..000004}.tar")
    dm = _connect(
        ImageCaptionDataModule(source="webdataset", train=pattern, batch_size=3, num_workers=2, shuffle_buffer=8)
    )
    whole = _stream_batches(dm.train_dataloader())
    keys = [key for batch, _ in whole for key in batch]
    assert len(keys) == len(set(keys)) and len(whole) >= 8
    assert _stream_batches(dm.train_dataloader()) == whole  # a pass is a function of (seed, epoch)
    shares = [share for _, (share, _) in whole]
    assert shares[:4] == [0, 1, 0, 1] and shares[-2] == shares[-1]  # round robin, then one worker's tail
    assert_stream_resumes_at_every_stop(dm, whole)


def test_webdataset_passes_differ_by_epoch_and_seed(tmp_path):
    write_shards(tmp_path, n=20, image_size=16, shard_size=5)
    pattern = str(tmp_path / "shapesworld-train-{000000..000003}.tar")
    def keys(seed, epoch):
        return [r["key"] for r in WebDatasetSource(pattern, shuffle=8, seed=seed).epoch_records(epoch)]
    assert keys(0, 0) == keys(0, 0) and sorted(keys(0, 0)) == sorted(keys(0, 1))
    assert keys(0, 0) != keys(0, 1) and keys(0, 0) != keys(1, 0)
    assert [r["key"] for r in WebDatasetSource(pattern).epoch_records(0)] == sorted(keys(0, 0))  # no shuffle: in order
    positions = [r["position"] for r in WebDatasetSource(pattern, shuffle=8).epoch_records(0, skip=7)]
    assert positions == list(range(8, 21))


def test_webdataset_resume_with_other_workers_warns_and_restarts_the_epoch(tmp_path):
    write_shards(tmp_path, n=8, image_size=16, shard_size=4)
    pattern = str(tmp_path / "shapesworld-train-{000000..000001}.tar")
    dm = _connect(ImageCaptionDataModule(source="webdataset", train=pattern, batch_size=2, num_workers=2))
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)
    saved = {"epoch": 0, "batches": 2, "stream": [{"positions": [2, 2], "last_share": 1}]}
    assert dm._stream_resume(saved) == StreamPosition(epoch=0, positions=[2, 2], last_share=1)
    dm.num_workers = 4
    with pytest.warns(UserWarning, match=r"1 ranks x 2 workers.*\(1 x 4 now\): the epoch restarts"):
        assert dm._stream_resume(saved) is None


def test_webdataset_shards_must_split_evenly_across_ranks(tmp_path, monkeypatch):
    write_shards(tmp_path, n=12, image_size=16, shard_size=4)  # 3 shards
    monkeypatch.setattr("zoo.losses.distributed.world_size", lambda: 2)  # the zoo's one rank / world reader
    with pytest.raises(ValueError, match="3 shards cannot be split evenly across 2 ranks"):
        next(iter(WebDatasetSource(str(tmp_path / "shapesworld-train-{000000..000002}.tar"))))
