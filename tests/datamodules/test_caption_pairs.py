import inspect
import io
import json

import pytest
import torch
import torchvision.transforms as T
import webdataset as wds
from PIL import Image

import datamodules.caption_pairs as caption_pairs
from datamodules import CorruptSampleError, ShapesWorldConfig, ShortLongCaptionDataModule
from datamodules.shapesworld import generate_sample

TRANSFORM = T.Compose([T.Resize((32, 32)), T.ToTensor()])


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeSequences:
    """Stands in for the model's sequences(): caption lengths (-1 for None), and every call recorded."""

    def __init__(self):
        self.calls = []

    def __call__(self, shorts, longs):
        self.calls.append((list(shorts), list(longs)))
        length = lambda texts: torch.tensor([-1 if t is None else len(t) for t in texts])  # noqa: E731
        return {"short_length": length(shorts), "long_length": length(longs)}


def _connect(dm, sequences=None):
    dm.connect(tokenizer=lambda texts: None, train_transform=TRANSFORM, eval_transform=TRANSFORM, sequences=sequences)
    return dm


def _png(color=(255, 0, 0)):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _shapesworld(**sizes):
    shapesworld = ShapesWorldConfig(image_size=16, **sizes)
    return ShortLongCaptionDataModule(batch_size=4, num_workers=0, shapesworld=shapesworld)


def _epoch_shorts(dm, epoch):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return {k: s for batch in loader for k, s in zip(batch["key"], batch["short"])}


def test_shapesworld_batches_carry_short_and_long_captions_and_the_model_sequences():
    sequences = FakeSequences()
    dm = _connect(_shapesworld(n_train=8, n_val=4), sequences)
    dm.setup("fit")
    assert dm.routing == {s: {"short_only": 0, "long_only": 0, "both": n} for s, n in (("train", 8), ("val", 4))}
    assert dm.shortcuts == {"train": [], "val": []}

    batch = next(iter(dm.val_dataloader()))
    expected = [generate_sample(i, split="val", image_size=16) for i in range(4)]
    assert {"key", "image", "pixel_values", "captions", "short", "long", "has_short", "has_long", "image_id"} <= set(
        batch
    )
    assert batch["image"].shape == (4, 3, 32, 32) and batch["pixel_values"] is batch["image"]
    assert batch["has_short"].dtype == torch.bool and batch["has_short"].all() and batch["has_long"].all()
    assert batch["short"] == [e["captions"][0] for e in expected]  # evaluation: the first short caption
    assert batch["long"] == [e["long_caption"] for e in expected]
    assert batch["captions"] == [e["captions"] for e in expected]
    assert sequences.calls[-1] == (batch["short"], batch["long"])
    assert batch["short_length"].tolist() == [len(s) for s in batch["short"]]
    assert batch["long_length"].tolist() == [len(t) for t in batch["long"]]

    epochs = [_epoch_shorts(dm, epoch) for epoch in range(3)]
    captions = {s["key"]: s["captions"] for s in (generate_sample(i, split="train", image_size=16) for i in range(8))}
    assert all(short in captions[key] for shorts in epochs for key, short in shorts.items())
    assert any(len({shorts[key] for shorts in epochs}) > 1 for key in captions)  # a new draw each epoch
    assert _epoch_shorts(_connect(_shapesworld(n_train=8), sequences), 1) == epochs[1]  # seeded by (seed, epoch, index)


def test_hyper_parameters_are_this_class_arguments():
    dm = _shapesworld(n_train=8)
    assert set(dm.hparams) == set(inspect.signature(ShortLongCaptionDataModule).parameters)
    assert dm.hparams["shapesworld"]["n_train"] == 8


MIXED_ROWS = [
    {"image": "a.png", "short": "a red square"},
    {"image": "b.png", "long": "A blue circle in the top left corner of the image, next to nothing else at all."},
    {"image": "c.png", "short": ["a green cross", "a cross"], "long": "There is one object: a green cross."},
    {"image": "d.png", "short": "A  Yellow triangle", "long": "a yellow triangle sits in the middle of the image."},
    {"image": "e.png", "key": "nothing"},
    {"image": "a.png", "caption": "a small red square"},  # merges into a.png; 'caption' is a synonym of 'short'
    {"image": "c.png", "long": "A second long caption of c, which the first one wins over when rows merge."},
]


def _manifest(tmp_path, rows=MIXED_ROWS):
    for name, color in zip("abcde", [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0), (9, 9, 9)]):
        (tmp_path / f"{name}.png").write_bytes(_png(color))
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(rows))
    return str(path)


def test_a_manifest_routes_each_image_to_the_losses_its_captions_support(tmp_path, monkeypatch):
    path = _manifest(tmp_path)
    with pytest.raises(CorruptSampleError, match=r"pairs.json, record 4 \(key nothing\): neither a short nor a long"):
        ShortLongCaptionDataModule(source="manifest", train=path, num_workers=0).setup("fit")

    infos = []
    monkeypatch.setattr(caption_pairs, "rank_zero_info", infos.append)
    dm = _connect(
        ShortLongCaptionDataModule(source="manifest", val=path, batch_size=8, num_workers=0, skip_corrupt=True),
        FakeSequences(),
    )
    with pytest.warns(UserWarning, match=r"val: 1 images have a short caption equal to their long .*\['d.png'\]"):
        dm.setup("validate")
    assert dm.routing == {"val": {"short_only": 1, "long_only": 1, "both": 2}}
    assert dm.shortcuts == {"val": ["d.png"]}
    assert infos == [
        "val: 1 images without a long caption go to the contrastive loss only; "
        "1 without a short caption to the next-token loss only; 2 to both"
    ]
    assert dm.records("val").skipped.count == 1
    dm.setup("validate")  # counted and reported once
    assert len(infos) == 1

    (batch,) = list(dm.val_dataloader())
    assert len(batch["key"]) == 5 and "nothing" not in batch["key"]  # the corrupt record is replaced
    columns = batch["key"], batch["short"], batch["long"], batch["has_short"].tolist(), batch["has_long"].tolist()
    rows = {
        key: (short, long is not None, has_short, has_long) for key, short, long, has_short, has_long in zip(*columns)
    }
    assert rows["a.png"] == ("a red square", False, True, False)
    assert rows["b.png"] == (None, True, False, True)
    assert rows["c.png"] == ("a green cross", True, True, True)
    assert batch["long"][batch["key"].index("c.png")] == "There is one object: a green cross."
    assert rows["d.png"] == ("A  Yellow triangle", True, True, True)
    assert batch["captions"][batch["key"].index("a.png")] == ["a red square", "a small red square"]


def test_a_csv_manifest_leaves_a_missing_kind_blank(tmp_path):
    _manifest(tmp_path)
    (tmp_path / "pairs.csv").write_text("image,short,long\na.png,a red square,\nb.png,,A blue circle.\n")
    dm = ShortLongCaptionDataModule(source="manifest", train=str(tmp_path / "pairs.csv"), num_workers=0)
    dm.setup("fit")
    assert dm.routing == {"train": {"short_only": 1, "long_only": 1, "both": 0}}


def test_webdataset_shards_carry_short_and_long_captions(tmp_path):
    shard = str(tmp_path / "pairs-000000.tar")
    with wds.TarWriter(shard) as sink:
        sink.write({"__key__": "s0", "png": _png(), "json": {"short": ["one", "uno"], "long": "The long one."}})
        sink.write({"__key__": "s1", "png": _png(), "json": {"long": "Only a long caption here."}})
        sink.write({"__key__": "s2", "png": _png(), "txt": "a short caption"})
        sink.write({"__key__": "s3", "png": _png(), "json": {"short": [], "long": "  "}})
    dm = _connect(ShortLongCaptionDataModule(source="webdataset", val=shard, num_workers=0), FakeSequences())
    with pytest.raises(CorruptSampleError, match=r"pairs-000000.tar \(key s3\): neither a short nor a long caption"):
        list(dm.val_dataloader())

    dm = _connect(
        ShortLongCaptionDataModule(source="webdataset", val=shard, batch_size=4, num_workers=0, skip_corrupt=True),
        FakeSequences(),
    )
    dm.setup("validate")
    assert dm.routing == {}  # streams are not counted
    (batch,) = list(dm.val_dataloader())
    assert batch["key"] == ["s0", "s1", "s2", "s0"]  # s3 replaced by the stream's first good sample
    assert batch["short"] == ["one", None, "a short caption", "one"]
    assert batch["long"] == ["The long one.", "Only a long caption here.", None, "The long one."]
    assert batch["has_short"].tolist() == [True, False, True, True]
    assert batch["has_long"].tolist() == [True, True, False, True]
    assert batch["captions"][0] == ["one", "uno"] and batch["long_length"].tolist() == [13, 25, -1, 13]
    assert "stream_position" in batch  # for the data module's stream resume


def test_tokenising_loaders_need_the_model_sequences():
    dm = _connect(_shapesworld(n_train=8, n_val=4))
    for loader in (dm.train_dataloader, dm.val_dataloader):
        with pytest.raises(RuntimeError, match=r"the model must provide it to datamodule.connect\(..., sequences="):
            loader()


def test_retrieval_batches_are_images_and_short_captions(tmp_path):
    dm = _connect(_shapesworld(n_val=4))  # retrieval needs no sequences
    (batch,) = list(dm.retrieval_dataloader("val"))
    assert set(batch) == {"key", "image", "captions", "image_id"}
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["captions"] == [generate_sample(i, split="val", image_size=16)["captions"] for i in range(4)]

    rows = [{"image": "a.png", "short": "a red square"}, {"image": "b.png", "key": "long-only", "long": "A long one."}]
    dm = _connect(ShortLongCaptionDataModule(source="manifest", val=_manifest(tmp_path, rows), num_workers=0))
    with pytest.raises(ValueError, match="long-only has no short caption: retrieval evaluation needs short captions"):
        list(dm.retrieval_dataloader("val"))


def test_llava_style_records_give_short_answers_as_captions_and_a_long_answer_as_the_long_caption(tmp_path):
    long = "There are two objects in the image. " + "A red square is in the top left corner of the picture. " * 3
    rows = [
        {"id": "1", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe it briefly."}, {"from": "gpt", "value": "a red square"},
            {"from": "human", "value": "Describe the image in detail."}, {"from": "gpt", "value": long},
        ]},
        {"id": "2", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "two shapes"},
        ]},
        {"id": "3", "image": "b.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe it in detail."}, {"from": "gpt", "value": long},
        ]},
    ]  # fmt: skip
    (tmp_path / "llava.json").write_text(json.dumps(rows))
    records = {r["key"]: r for r in caption_pairs.read_pair_manifest(tmp_path / "llava.json")}
    assert records["a.png"]["captions"] == ["a red square", "two shapes"]  # the same image's records merge
    assert records["a.png"]["long_caption"] == long.strip()
    assert records["b.png"]["captions"] == [] and records["b.png"]["long_caption"] == long.strip()
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "c.png", "conversations": "hello"}]))
    with pytest.raises(CorruptSampleError, match="bad.json, record 0: 'conversations' must be a list"):
        caption_pairs.read_pair_manifest(tmp_path / "bad.json")
