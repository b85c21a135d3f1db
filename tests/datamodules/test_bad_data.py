"""Bad data never kills or skews a run: corrupt samples are replaced by deterministic substitutes (batches
keep their size), a split with nothing usable fails naming its files, images are upright (EXIF) and every
format PIL reads loads from manifests and shards alike."""

import io
import json
import logging

import pytest
import torch
import webdataset as wds
from PIL import Image

from datamodules import CorruptSampleError, ImageCaptionDataModule, ManifestDataset, WebDatasetSource
from datamodules.samples import CaptionCollator
from tests.conftest import assert_stream_resumes_at_every_stop

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
COLOURS += [(0, 255, 255), (255, 0, 255), (255, 255, 255), (0, 0, 0)]


def _connect(dm):
    to_tensor = lambda image: torch.tensor(image.getpixel((0, 0)), dtype=torch.float32).view(3, 1, 1)  # noqa: E731
    tokenizer = lambda texts: torch.tensor([[len(t)] for t in texts])  # noqa: E731
    dm.connect(tokenizer=tokenizer, train_transform=to_tensor, eval_transform=to_tensor)
    return dm


def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png(i):
    return _encode(Image.new("RGB", (4, 4), COLOURS[i % len(COLOURS)]), "PNG")


def _manifest_dm(tmp_path, broken, n=8, split="train", **kwargs):
    """A manifest of ``n`` images named ``i.png``; those in ``broken`` are not images."""
    rows = []
    for i in range(n):
        (tmp_path / f"{i}.png").write_bytes(b"broken" if i in broken else _png(i))
        rows.append({"image": f"{i}.png", "caption": f"caption {i}"})
    (tmp_path / "m.json").write_text(json.dumps(rows))
    arguments = {"source": "manifest", split: str(tmp_path / "m.json"), "num_workers": 0, "skip_corrupt": True}
    return _connect(ImageCaptionDataModule(**{**arguments, **kwargs}))


def _keys(loader, epoch=0):
    if loader.sampler is not None:
        loader.sampler.set_epoch(epoch)
    return [batch["key"] for batch in loader]


def test_a_corrupt_sample_is_replaced_by_a_seeded_substitute_and_batches_keep_their_size(tmp_path, caplog):
    dm = _manifest_dm(tmp_path, broken={5}, batch_size=4)
    with caplog.at_level(logging.WARNING):
        batches = {epoch: _keys(dm.train_dataloader(), epoch) for epoch in (0, 1, 2)}
    for keys in batches.values():
        assert [len(k) for k in keys] == [4, 4] and "5.png" not in sum(keys, [])
        assert len(set(sum(keys, []))) == 7  # one good sample twice: the substitute
    assert batches[0] == _keys(_manifest_dm(tmp_path, broken={5}, batch_size=4).train_dataloader(), 0)  # seeded
    assert "5.png (key 5.png): cannot read image" in caplog.text and "1 skipped so far in this process" in caplog.text
    assert "replaced skipped sample 5 (epoch 2) by sample" in caplog.text
    assert "replaced so far in this process" in caplog.text


def test_the_substitute_is_built_as_its_own_sample(tmp_path):
    dm = _manifest_dm(tmp_path, broken={2}, split="val", batch_size=8)
    (batch,) = list(dm.val_dataloader())
    # row 2 holds the substitute of 2.png: the same sample as another row
    (original,) = [i for i, key in enumerate(batch["key"]) if key == batch["key"][2] and i != 2]
    assert "2.png" not in batch["key"]
    for field in ("caption", "captions"):
        assert batch[field][2] == batch[field][original]
    assert torch.equal(batch["image"][2], batch["image"][original])
    assert batch["image_id"][2] == batch["image_id"][original]  # the same image: not a negative of itself


def test_a_batch_of_corrupt_samples_only_is_filled_with_substitutes(tmp_path):
    dm = _manifest_dm(tmp_path, broken={0, 1, 2, 3}, split="val", batch_size=4)
    keys = _keys(dm.val_dataloader())
    assert [len(k) for k in keys] == [4, 4]
    assert set(keys[0]) <= {f"{i}.png" for i in range(4, 8)}


def test_a_split_without_a_usable_sample_fails_naming_its_files(tmp_path):
    dm = _manifest_dm(tmp_path, broken=set(range(3)), n=3, split="val", batch_size=4)
    message = r"sample 0 of a split of 3 and its 2 substitutes \[\d, \d\] are all corrupt"
    with pytest.raises(CorruptSampleError, match=message) as error:
        next(iter(dm.val_dataloader()))
    assert "1.png (key 1.png): cannot read image" in str(error.value) and "2.png" in str(error.value)


def test_a_corrupt_hard_image_is_replaced_too(tmp_path):
    rows = ["title\tfilepath\tneg_caption\tneg_image"]
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(b"broken" if i == 1 else _png(i))
        rows.append(f"caption {i}\t{i}.png\t['not caption {i}']\t[{1 if i != 1 else 0}]")
    (tmp_path / "negclip.tsv").write_text("\n".join(rows) + "\n")
    dm = _connect(
        ImageCaptionDataModule(
            source="manifest", train=str(tmp_path / "negclip.tsv"), batch_size=2, num_workers=0, skip_corrupt=True,
            hard_images=True, hard_negatives=["precomputed"], warm_text_engine=False,
        )
    )
    for keys in _keys(dm.train_dataloader()):
        assert len(keys) == 4 and "negclip.tsv:1" not in keys  # B originals + B neighbours, none corrupt


def test_the_collator_refuses_a_missing_sample():
    sample = {"key": "a", "image": torch.zeros(3, 1, 1), "captions": ["a"], "image_id": 0}
    with pytest.raises(ValueError, match="1 missing: a skipped corrupt sample must be replaced"):
        CaptionCollator(None)([sample, None])


# ------------------------------------------------------------------------------------ streams
def _shard(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


def _stream_samples(n, broken):
    return [
        {"__key__": f"s{i:02d}", "png": b"broken" if i in broken else _png(i), "txt": f"caption {i}"} for i in range(n)
    ]


def test_a_stream_replaces_corrupt_samples_by_the_next_good_one_or_at_its_end_the_first(tmp_path, caplog):
    shard = _shard(tmp_path / "s-000000.tar", _stream_samples(8, broken={0, 1, 4, 7}))
    with caplog.at_level(logging.WARNING):
        records = list(WebDatasetSource(shard, skip_corrupt=True).epoch_records(0))
    assert [r["key"] for r in records] == ["s02", "s02", "s02", "s03", "s05", "s05", "s06", "s02"]
    assert [r["position"] for r in records] == list(range(1, 9))  # a substitute keeps the place of the one it replaces
    assert "(key s04): cannot read image" in caplog.text and "4 skipped so far in this process" in caplog.text
    assert "replaced skipped sample " in caplog.text and "(key s07) by s02" in caplog.text
    resumed = list(WebDatasetSource(shard, skip_corrupt=True).epoch_records(0, skip=4))  # the same tail
    assert [(r["key"], r["position"]) for r in resumed] == [(r["key"], r["position"]) for r in records[4:]]


def test_a_stream_with_corrupt_samples_resumes_exactly_at_every_point(tmp_path):
    for s in range(2):
        _shard(tmp_path / f"s-{s:06d}.tar", _stream_samples(10, broken={3 * s, 9}))
    dm = _connect(
        ImageCaptionDataModule(
            source="webdataset", train=str(tmp_path / "s-{000000..000001}.tar"), batch_size=3, num_workers=2,
            shuffle_buffer=4, skip_corrupt=True,
        )
    )
    whole = [(batch["key"], batch["stream_position"]) for batch in dm.train_dataloader()]
    assert len(whole) == 6 and all(len(keys) == 3 for keys, _ in whole)  # 2 x 10 samples, 2 x 9 good ones
    assert_stream_resumes_at_every_stop(dm, whole)


def test_a_stream_without_a_usable_sample_fails_naming_its_shards(tmp_path):
    shard = _shard(tmp_path / "s-000000.tar", _stream_samples(3, broken={0, 1, 2}))
    with pytest.raises(CorruptSampleError, match=r"every sample of shards \[.*s-000000.tar'\] is corrupt"):
        list(WebDatasetSource(shard, skip_corrupt=True))


# ------------------------------------------------------------------------------ images
def _sideways():
    """An 8 x 4 image, red left and blue right, tagged EXIF orientation 6 (shown turned 90 degrees clockwise)."""
    image = Image.new("RGB", (8, 4), (255, 0, 0))
    image.paste((0, 0, 255), (4, 0, 8, 4))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(image, "JPEG", exif=exif, quality=95)


def _is_upright(image):
    red, blue = image.getpixel((2, 1)), image.getpixel((2, 6))
    return image.size == (4, 8) and red[0] > 200 > red[2] and blue[2] > 200 > blue[0]  # red on top


def test_exif_orientation_is_applied_in_manifests_and_shards(tmp_path):
    (tmp_path / "phone.jpg").write_bytes(_sideways())
    (tmp_path / "m.json").write_text(json.dumps([{"image": "phone.jpg", "caption": "a photo"}]))
    assert _is_upright(ManifestDataset(tmp_path / "m.json")[0]["image"])
    shard = _shard(tmp_path / "s.tar", [{"__key__": "phone", "jpg": _sideways(), "txt": "a photo"}])
    assert _is_upright(next(iter(WebDatasetSource(shard)))["image"])


def test_every_format_pil_reads_loads_from_shards_and_manifests(tmp_path):
    formats = {"bmp": "BMP", "tif": "TIFF", "tiff": "TIFF", "gif": "GIF", "jpeg": "JPEG", "webp": "WEBP"}
    images = {ext: _encode(Image.new("RGB", (4, 4), COLOURS[i]), fmt) for i, (ext, fmt) in enumerate(formats.items())}
    shard = _shard(tmp_path / "s.tar", [{"__key__": ext, ext: data, "txt": ext} for ext, data in images.items()])
    records = list(WebDatasetSource(shard))
    assert [r["key"] for r in records] == list(formats)
    rows = []
    for ext, data in images.items():
        (tmp_path / f"image.{ext}").write_bytes(data)
        rows.append({"image": f"image.{ext}", "caption": ext})
    (tmp_path / "m.json").write_text(json.dumps(rows))
    manifest = ManifestDataset(tmp_path / "m.json")
    for i, record in enumerate(records):
        expected = COLOURS[i]
        for image in (record["image"], manifest[i]["image"]):
            assert all(abs(a - b) <= 8 for a, b in zip(image.getpixel((1, 1)), expected)), (record["key"], expected)
