"""WebDatasetSource splits its shards across ranks, tested in one process: rank r of a world of 2 is
simulated by every signal a rank reader may use (``RANK`` / ``WORLD_SIZE``, which webdataset's
``pytorch_worker_info`` reads first, and ``torch.distributed``, which ``zoo.losses.distributed`` reads)."""

import io

import pytest
import torch.distributed as dist
import webdataset as wds
from PIL import Image

from datamodules.sources import WebDatasetSource

SHARDS, PER_SHARD = 4, 3


def _write_shards(root) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="PNG")
    for shard in range(SHARDS):
        with wds.TarWriter(str(root / f"part-{shard:06d}.tar")) as sink:
            for i in range(PER_SHARD):
                sink.write({"__key__": f"s{shard}-{i}", "png": buffer.getvalue(), "txt": f"caption {shard} {i}"})
    return str(root / f"part-{{000000..{SHARDS - 1:06d}}}.tar")


def _keys(pattern: str, monkeypatch, rank: int, world_size: int, shuffle: int) -> list[str]:
    with monkeypatch.context() as m:
        m.setenv("RANK", str(rank))
        m.setenv("WORLD_SIZE", str(world_size))
        m.delenv("WORKER", raising=False)
        m.delenv("NUM_WORKERS", raising=False)
        m.setattr(dist, "is_available", lambda: True)
        m.setattr(dist, "is_initialized", lambda: True)
        m.setattr(dist, "get_rank", lambda group=None: rank)
        m.setattr(dist, "get_world_size", lambda group=None: world_size)
        return [record["key"] for record in WebDatasetSource(pattern, shuffle=shuffle, seed=5).epoch_records(epoch=1)]


@pytest.mark.parametrize("shuffle", [0, 4])
def test_ranks_read_disjoint_equal_halves_of_the_shards(tmp_path, monkeypatch, shuffle):
    pattern = _write_shards(tmp_path)
    everything = {f"s{shard}-{i}" for shard in range(SHARDS) for i in range(PER_SHARD)}
    assert set(_keys(pattern, monkeypatch, 0, 1, shuffle)) == everything  # one rank reads it all
    rank0, rank1 = (_keys(pattern, monkeypatch, rank, 2, shuffle) for rank in (0, 1))
    assert len(rank0) == len(rank1) == len(everything) // 2
    assert not set(rank0) & set(rank1)
    assert set(rank0) | set(rank1) == everything
    # whole shards per rank: no shard is split between ranks
    shards0, shards1 = ({key.split("-")[0] for key in keys} for keys in (rank0, rank1))
    assert len(shards0) == len(shards1) == SHARDS // 2 and not shards0 & shards1
