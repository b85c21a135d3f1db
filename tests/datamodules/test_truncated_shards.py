"""A truncated webdataset shard (an interrupted download or copy) never passes silently: it raises a
CorruptSampleError naming the shard and its last good sample, or, with skip_corrupt, the rest of that shard
is skipped with a counted warning, the next shard is read, batches keep their size and a resumed epoch
yields exactly the rest of the uninterrupted one. Shards are cut where webdataset raises a raw
``tarfile.ReadError`` (inside a member's data or a header) and at a member boundary, where it reads a
shorter shard without a word."""

import io
import logging
import tarfile

import pytest
import torch
import webdataset as wds
from PIL import Image

from datamodules import CorruptSampleError, ImageCaptionDataModule, WebDatasetSource
from tests.conftest import assert_stream_resumes_at_every_stop

PER_SHARD = 6
CUTS = ["mid-member", "mid-header", "member-boundary"]


def _png(i):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (40 * (i % 6), 255 - 40 * (i % 6), 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def _shard(path, prefix, broken=()):
    with wds.TarWriter(str(path)) as sink:
        for i in range(PER_SHARD):
            sink.write(
                {"__key__": f"{prefix}{i}", "png": b"broken" if i in broken else _png(i), "txt": f"{prefix} {i}"}
            )
    return str(path)


def _truncate(path, key, cut, member="txt"):
    """Cut the shard at ``path`` inside sample ``key``'s ``member`` (its second, by default): in its data, in its
    (PAX) header, or just before its header (a member boundary)."""
    with tarfile.open(path) as tar:
        (found,) = [m for m in tar.getmembers() if m.name == f"{key}.{member}"]
    at = {"mid-member": found.offset_data + 4, "mid-header": found.offset + 700, "member-boundary": found.offset}[cut]
    with open(path, "r+b") as f:
        f.truncate(at)


def _shards(tmp_path, truncated_at=("b3", "mid-member"), broken=None, n=3):
    """Shards ``a``, ``b``, ``c``, ... of PER_SHARD samples (``a0``..``a5``); the one of ``truncated_at`` is cut."""
    prefixes = "abcdefgh"[:n]
    for s, prefix in enumerate(prefixes):
        _shard(tmp_path / f"s-{s:06d}.tar", prefix, (broken or {}).get(prefix, ()))
    if truncated_at is not None:
        key, cut = truncated_at
        _truncate(tmp_path / f"s-{prefixes.index(key[0]):06d}.tar", key, cut)
    return str(tmp_path / f"s-{{000000..{n - 1:06d}}}.tar")


def _connect(dm):
    to_tensor = lambda image: torch.tensor(image.getpixel((0, 0)), dtype=torch.float32).view(3, 1, 1)  # noqa: E731
    dm.connect(
        tokenizer=lambda texts: torch.tensor([[len(t)] for t in texts]),
        train_transform=to_tensor,
        eval_transform=to_tensor,
    )
    return dm


@pytest.mark.parametrize("cut", CUTS)
def test_a_truncated_shard_raises_naming_the_shard_and_its_last_good_sample(tmp_path, cut):
    pattern = _shards(tmp_path, truncated_at=("b3", cut))
    message = r"truncated shard .*s-000001\.tar: its data ends after sample b2 \("
    with pytest.raises(CorruptSampleError, match=message):
        list(WebDatasetSource(pattern).epoch_records(0))
    _truncate(tmp_path / "s-000000.tar", "a0", cut)  # cut inside the first sample of the first shard
    with pytest.raises(CorruptSampleError, match=r"truncated shard .*s-000000\.tar: its data ends before its first"):
        list(WebDatasetSource(pattern).epoch_records(0))


def test_the_sample_read_when_the_data_ends_is_lost_even_if_its_files_came_through(tmp_path):
    pattern = _shards(tmp_path, truncated_at=None)
    _truncate(tmp_path / "s-000001.tar", "b3", "member-boundary", member="png")  # b2 whole, b3 not begun
    # nothing tells whether more files of b2 followed (a json caption): b2 is not a good sample
    with pytest.raises(CorruptSampleError, match=r"s-000001\.tar: its data ends after sample b1 \(no end-of-archive"):
        list(WebDatasetSource(pattern).epoch_records(0))


def test_the_error_reaches_the_training_loop_through_dataloader_workers(tmp_path):
    pattern = _shards(tmp_path, truncated_at=("b3", "mid-member"), n=2)
    dm = _connect(ImageCaptionDataModule(source="webdataset", train=pattern, batch_size=2, num_workers=2))
    with pytest.raises(CorruptSampleError, match=r"truncated shard .*s-000001\.tar: its data ends after sample b2"):
        list(dm.train_dataloader())


@pytest.mark.parametrize("cut", CUTS)
def test_skip_corrupt_skips_the_rest_of_the_shard_with_a_counted_warning_and_reads_the_next(tmp_path, caplog, cut):
    pattern = _shards(tmp_path, truncated_at=("b3", cut))
    source = WebDatasetSource(pattern, skip_corrupt=True)
    with caplog.at_level(logging.WARNING):
        records = list(source.epoch_records(0))
    expected = [f"a{i}" for i in range(6)] + ["b0", "b1", "b2"] + [f"c{i}" for i in range(6)]
    assert [r["key"] for r in records] == expected
    assert [r["position"] for r in records] == list(range(1, 16))  # lost samples take no position
    assert source.skipped.truncated == 1 and source.skipped.count == 0
    assert "skipped the rest of a truncated shard (1 so far in this process): truncated shard" in caplog.text
    assert "s-000001.tar: its data ends after sample b2" in caplog.text


def test_corrupt_samples_around_a_truncation_are_still_replaced_and_the_stream_resumes_at_every_sample(tmp_path):
    # a is cut before its first sample; b2, the last sample read before b's cut, and c5, the last of the share,
    # are corrupt: c5's substitute, the share's first good sample, is found by reading the share again
    pattern = _shards(tmp_path, truncated_at=("b3", "mid-member"), broken={"b": {2}, "c": {5}})
    _truncate(tmp_path / "s-000000.tar", "a0", "mid-header")
    source = WebDatasetSource(pattern, skip_corrupt=True)
    records = [(r["key"], r["position"]) for r in source.epoch_records(0)]
    keys = ["b0", "b1", "c0"] + [f"c{i}" for i in range(5)] + ["b0"]
    assert records == list(zip(keys, range(1, 10)))  # b2 by the next good one (next shard), c5 by the first
    assert source.skipped.truncated == 2 and source.skipped.count == 2  # the share read again is quiet
    for skip in range(len(records) + 1):
        resumed = [
            (r["key"], r["position"]) for r in WebDatasetSource(pattern, skip_corrupt=True).epoch_records(0, skip)
        ]
        assert resumed == records[skip:], skip


@pytest.mark.parametrize("cut", ["mid-member", "member-boundary"])
def test_training_batches_keep_their_size_and_resume_exactly_at_every_stop(tmp_path, cut):
    pattern = _shards(tmp_path, truncated_at=("c2", cut), broken={"b": {1}}, n=4)
    dm = _connect(
        ImageCaptionDataModule(
            source="webdataset", train=pattern, batch_size=4, num_workers=2, shuffle_buffer=4, skip_corrupt=True
        )
    )
    whole = [(batch["key"], batch["stream_position"]) for batch in dm.train_dataloader()]
    keys = sum((k for k, _ in whole), [])
    assert [len(k) for k, _ in whole] == [4] * 5  # 4 x 6 samples, 4 lost (c2..c5): 12 + 8 per worker
    good = {f"{prefix}{i}" for prefix in "abd" for i in range(6)} - {"b1"} | {"c0", "c1"}
    assert set(keys) == good and len(keys) == 20  # b1 replaced by a good sample, c2..c5 never read
    assert_stream_resumes_at_every_stop(dm, whole)
