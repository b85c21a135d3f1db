"""Writing ShapesWorld samples as webdataset tar shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from .generate import generate_sample, sample_metadata
from .render import png_bytes


def write_shards(
    out_dir: str | os.PathLike,
    n: int,
    split: str = "train",
    seed: int = 0,
    image_size: int = 64,
    shard_size: int = 1000,
    max_objects: int = 4,
) -> list[str]:
    """Write samples 0..n-1 to ``out_dir/shapesworld-{split}-{shard:06d}.tar``; return the shard paths.

    Each sample holds "png" (image bytes), "txt" (primary caption) and "json" (captions, long_caption,
    negatives, qa, scene). Tar member times are fixed, so identical arguments give identical shards.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pattern = str(out).replace("%", "%%") + f"/shapesworld-{split}-%06d.tar"
    shards: list[str] = []
    with wds.ShardWriter(pattern, maxcount=shard_size, post=shards.append, verbose=0, encoder=False, mtime=0.0) as sink:
        for index in tqdm(range(n), desc=f"shapesworld {split} shards", unit="sample", disable=None):
            sample = generate_sample(index, split, seed, image_size, max_objects)
            sink.write(
                {
                    "__key__": sample["key"],
                    "png": png_bytes(sample["image"]),
                    "txt": sample["captions"][0].encode("utf-8"),
                    "json": json.dumps(sample_metadata(sample)).encode("utf-8"),
                }
            )
    return shards
