"""Retrieved pairs written as webdataset shards: each hit's original image bytes and captions."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import webdataset as wds

from datamodules.retrieval.corpus import CorpusShard, raw_tar_samples, read_manifest
from datamodules.retrieval.index import LoadedIndex
from datamodules.retrieval.queries import Hit
from datamodules.sources import IMAGE_EXTENSIONS, open_image


def _source_images(shard: CorpusShard, keys: set[str]) -> dict[str, tuple[str, bytes]]:
    """``key -> (extension, original image bytes)`` for ``keys`` of one shard, reading it once."""
    found: dict[str, tuple[str, bytes]] = {}
    if shard.rows is None:
        for raw in raw_tar_samples(shard.source):
            if raw["__key__"] in keys:
                ext = next(e for e in IMAGE_EXTENSIONS if e in raw)
                found[raw["__key__"]] = (ext, raw[ext])
    else:
        for record in read_manifest(shard.source, True).records[slice(*shard.rows)]:
            if record is not None and record["key"] in keys:
                path = Path(record["image"])
                ext = path.suffix.lower().lstrip(".")
                if ext in IMAGE_EXTENSIONS:
                    found[record["key"]] = (ext, path.read_bytes())
                else:
                    buffer = io.BytesIO()
                    open_image(path, f"{path} (key {record['key']})").save(buffer, format="PNG")
                    found[record["key"]] = ("png", buffer.getvalue())
    lost = keys - found.keys()
    if lost:
        raise FileNotFoundError(f"{shard.source} no longer holds {len(lost)} indexed samples, e.g. {sorted(lost)[:3]}")
    return found


def write_retrieved(
    index: LoadedIndex, hits: list[list[Hit]], classnames: Sequence[str], out_dir: str | Path, shard_size: int = 10_000
) -> dict[str, int]:
    """Write every hit as a webdataset sample (original image bytes, ``txt`` = first caption, ``cls``,
    ``json`` = captions, class, class_index, score, query, source_shard, source_key) to
    ``out_dir/retrieved-%06d.tar``, reading each source shard once. Returns unique pairs per class."""
    if len(hits) != len(classnames):
        raise ValueError(f"{len(hits)} hit lists for {len(classnames)} classes")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("retrieved-*.tar")):
        raise FileExistsError(f"{out} already holds retrieved-*.tar shards: choose an empty output directory")
    by_shard: dict[str, list[tuple[int, Hit]]] = {}
    for c, class_hits in enumerate(hits):
        for hit in class_hits:
            by_shard.setdefault(index.metadata[hit.row]["shard"], []).append((c, hit))
    pattern = str(out).replace("%", "%%") + "/retrieved-%06d.tar"
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0, encoder=False, mtime=0.0) as sink:
        for name in [n for n in index.shards if n in by_shard]:
            wanted = sorted(by_shard[name], key=lambda ch: (ch[1].row, ch[0]))
            images = _source_images(index.shards[name], {index.metadata[h.row]["key"] for _, h in wanted})
            for c, hit in wanted:
                row = index.metadata[hit.row]
                ext, data = images[row["key"]]
                meta = {
                    "captions": row["captions"],
                    "class": classnames[c],
                    "class_index": c,
                    "score": hit.score,
                    "query": hit.query,
                    "source_shard": name,
                    "source_key": row["key"],
                }
                sink.write(
                    {
                        "__key__": f"c{c:05d}_r{hit.row:010d}",
                        ext: data,
                        "txt": row["captions"][0].encode("utf-8"),
                        "cls": str(c).encode(),
                        "json": json.dumps(meta).encode("utf-8"),
                    }
                )
    return {name: len(class_hits) for name, class_hits in zip(classnames, hits)}
