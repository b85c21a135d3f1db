"""Readers for image-caption data: manifests, webdataset shards, ShapesWorld.

Every reader yields records ``{"key": str, "image": PIL.Image (RGB), "captions": list[str]}``; images
are decoded by PIL, whatever format it reads (the same in manifests and shards), and turned upright by
their EXIF orientation. Bad input never passes silently: a missing or corrupt image, an empty caption
or a malformed manifest raises :class:`CorruptSampleError` naming the file and the sample key, unless
the reader was built with ``skip_corrupt=True``, in which case the sample is skipped, counted and
replaced: by :class:`~datamodules.samples.Samples` for a map-style source (which returns ``None`` in
its place), by :meth:`WebDatasetSource.epoch_records` itself for a stream. A truncated webdataset shard
raises :class:`CorruptSampleError` naming the shard and its last good sample ("truncated shard"), or,
with ``skip_corrupt=True``, the rest of that shard is skipped with a counted warning.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image, ImageOps
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from datamodules.hard_negatives import sample_rng
from datamodules.shards import TruncatedShard, share_samples
from zoo.losses import distributed

log = logging.getLogger(__name__)


def _readable_extensions() -> tuple[str, ...]:
    """Every file extension PIL can open, the common web formats first (the one a shard sample uses wins)."""
    Image.init()
    readable = {ext.lstrip(".").lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    common = ("jpg", "jpeg", "png", "webp")
    return common + tuple(sorted(readable - set(common)))


IMAGE_EXTENSIONS = _readable_extensions()  # webdataset image keys: jpg, png, tif, tiff, bmp, gif, ...


class CorruptSampleError(ValueError):
    """A sample (or manifest) that cannot be used; the message names the file and sample key."""


class SkipCounter:
    """Counts skipped (and replaced) samples and truncated shards in this process and logs a warning for
    each; the last messages are kept for an error that has to name them (``recent``)."""

    def __init__(self) -> None:
        self.count = 0
        self.replaced = 0
        self.truncated = 0
        self.recent: deque[str] = deque(maxlen=8)

    def skip(self, error: Exception) -> None:
        self.count += 1
        self.recent.append(str(error))
        log.warning("skipped corrupt sample (%d skipped so far in this process): %s", self.count, error)

    def skip_shard(self, error: Exception) -> None:
        self.truncated += 1
        self.recent.append(str(error))
        log.warning("skipped the rest of a truncated shard (%d so far in this process): %s", self.truncated, error)

    def replace(self, skipped: str, substitute: str) -> None:
        self.replaced += 1
        count = self.replaced
        log.warning("replaced skipped %s by %s (%d replaced so far in this process)", skipped, substitute, count)


def open_image(data: bytes | str | Path, where: str, upright: bool = True) -> Image.Image:
    """Decode an image fully (so truncated files fail here, not later), turn it by its EXIF orientation
    (``upright``: phone photos are stored sideways with an orientation tag) and convert to RGB."""
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
        if upright:
            image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except Exception as error:  # PIL raises many types: report them all the same way
        raise CorruptSampleError(f"{where}: cannot read image ({type(error).__name__}: {error})") from error


def check_captions(captions: list[str], where: str) -> list[str]:
    """Strip captions; raise if there are none or any is empty."""
    cleaned = [str(c).strip() for c in captions]
    if not cleaned or any(not c for c in cleaned):
        raise CorruptSampleError(f"{where}: empty caption in {captions!r}")
    return cleaned


def read_manifest_rows(path: str | Path) -> list[Any]:
    """The rows of a JSON list / JSON-lines / CSV manifest, as parsed (unchecked but for being a list)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        elif path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            rows = json.loads(path.read_text())
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as error:
        raise CorruptSampleError(f"manifest {path}: cannot parse ({error})") from error
    if not isinstance(rows, list):
        raise CorruptSampleError(f"manifest {path}: expected a list of records, got {type(rows).__name__}")
    return rows


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON list / JSON-lines / CSV manifest of ``image`` + ``caption`` or ``captions``.

    Rows naming the same image are merged into one record with several captions (COCO style).
    Image paths are relative to the manifest's folder unless absolute.
    """
    path = Path(path)
    rows = read_manifest_rows(path)
    records: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows):
        where = f"manifest {path}, record {i}"
        if not isinstance(row, dict) or "image" not in row or not ("caption" in row or "captions" in row):
            raise CorruptSampleError(f"{where}: needs 'image' and 'caption' or 'captions', got {row!r}")
        captions = row["captions"] if "captions" in row else [row["caption"]]
        if not isinstance(captions, list):
            raise CorruptSampleError(f"{where}: 'captions' must be a list, got {captions!r}")
        image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
        key = str(row.get("key", row["image"]))
        record = records.setdefault(str(image), {"key": key, "image": image, "captions": [], "where": where})
        record["captions"].extend(captions)
    return list(records.values())


def read_negclip_tsv(path: str | Path) -> list[dict[str, Any]]:
    """Read NegCLIP's training TSV: columns ``title`` (caption), ``filepath``, ``neg_caption`` (a Python
    list literal of hard-negative captions) and ``neg_image`` (a list literal of row indices: the hard
    images). One record per row, as NegCLIP trains; rows of the same image share an ``image_id``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NegCLIP TSV {path} does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    required = {"title", "filepath", "neg_caption", "neg_image"}
    if not rows or not required <= set(rows[0]):
        raise CorruptSampleError(
            f"NegCLIP TSV {path}: needs columns {sorted(required)}, got {sorted(rows[0]) if rows else 'no rows'}"
        )
    image_ids: dict[str, int] = {}
    records = []
    for i, row in enumerate(rows):
        where = f"NegCLIP TSV {path}, row {i}"
        try:
            negatives, neighbours = ast.literal_eval(row["neg_caption"]), ast.literal_eval(row["neg_image"])
        except (ValueError, SyntaxError) as error:
            raise CorruptSampleError(f"{where}: neg_caption / neg_image are not list literals ({error})") from error
        if not all(isinstance(n, int) and 0 <= n < len(rows) for n in neighbours):
            raise CorruptSampleError(f"{where}: neg_image must list row indices in [0, {len(rows)}), got {neighbours}")
        image = Path(row["filepath"]) if Path(row["filepath"]).is_absolute() else path.parent / row["filepath"]
        records.append(
            {
                "key": f"{path.name}:{i}",
                "image": image,
                "captions": [row["title"]],
                "negative_captions": [str(n) for n in negatives],
                "neighbours": neighbours,
                "image_id": image_ids.setdefault(str(image), len(image_ids)),
                "where": where,
            }
        )
    return records


class ManifestDataset(Dataset):
    """Map-style records from a manifest (JSON / JSON-lines / CSV, or NegCLIP's ``.tsv``); images are read lazily."""

    def __init__(self, path: str | Path, skip_corrupt: bool = False) -> None:
        self.path = Path(path)
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter()
        self.records = []
        for record in read_negclip_tsv(path) if self.path.suffix == ".tsv" else read_manifest(path):
            try:
                record["captions"] = check_captions(record["captions"], f"{record['where']} (key {record['key']})")
            except CorruptSampleError as error:
                if not skip_corrupt:
                    raise
                self.skipped.skip(error)
                record = None  # keep positions: NegCLIP's neg_image refers to rows by index
            self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        if record is None:
            return None
        try:
            image = open_image(record["image"], f"{record['image']} (key {record['key']})")
        except CorruptSampleError as error:
            if not self.skip_corrupt:
                raise
            self.skipped.skip(error)
            return None
        return {**{k: v for k, v in record.items() if k != "where"}, "image": image}


def decode_webdataset_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode one raw webdataset sample (image bytes + ``txt`` or ``json`` captions)."""
    where = f"{sample.get('__url__', '?')} (key {sample.get('__key__', '?')})"
    image_key = next((ext for ext in IMAGE_EXTENSIONS if ext in sample), None)  # any format PIL reads
    if image_key is None:
        raise CorruptSampleError(f"{where}: no image among {sorted(k for k in sample if not k.startswith('__'))}")
    if "json" in sample:
        meta = json.loads(sample["json"])
        captions = meta.get("captions") or ([meta["caption"]] if "caption" in meta else None)
    elif "txt" in sample:
        captions = [sample["txt"].decode("utf-8")]
    else:
        captions = None
    if captions is None:
        raise CorruptSampleError(f"{where}: no caption ('txt', or 'json' with 'caption'/'captions')")
    return {
        "key": sample["__key__"],
        "image": open_image(sample[image_key], where),
        "captions": check_captions(captions, where),
    }


def dataloader_worker() -> tuple[int, int]:
    """(this dataloader worker's id, number of workers); (0, 1) in the main process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class WebDatasetSource(IterableDataset):
    """Records from webdataset tar shards (brace patterns allowed), split across ranks and workers.

    A pass is a function of (seed, epoch, rank, worker): the shard list is shuffled by (seed, epoch),
    split as ``shards[rank::world_size][worker::num_workers]`` (webdataset's node and worker
    splitters), read sequentially and shuffled in a buffer of ``shuffle`` samples seeded by
    (seed, epoch, rank, worker). Every record carries its ``position``: how many samples of the pass
    were read up to it, so :meth:`epoch_records` can continue a pass where a checkpoint left it.

    With ``skip_corrupt``, a corrupt sample is replaced in the stream (a stream has no index to draw a
    substitute from): by the next good sample of the same worker's share, or, for corrupt samples at
    the end of the share, by its first good sample. Every rank and worker thus yields as many records as
    its shards hold samples (equal batches, and as many, on every rank), and the substitute is the same
    whether the pass ran straight through or resumed mid-way.

    A truncated shard (its tar data ends before the end-of-archive marker: an interrupted download or
    copy) raises :class:`CorruptSampleError` naming the shard and its last good sample; with
    ``skip_corrupt`` the rest of that shard is skipped with a counted warning and the share goes on with
    its next shard. The samples lost are unknown in number, so that share yields fewer records (see
    :meth:`epoch_records` for how positions count them).

    Args:
        urls: shard paths or URLs, or a brace pattern (``shards-{000000..000099}.tar``).
        shuffle: sample shuffle buffer (0: shards and samples in order).
        skip_corrupt: skip, count and replace bad samples instead of raising.
        seed: seed of the shard and sample shuffles.
        decode: a raw webdataset sample (``__key__``, ``__url__``, extension -> bytes) -> a record with a
            ``key``; raises :class:`CorruptSampleError` for a bad sample (default: image + caption(s)).
    """

    def __init__(
        self,
        urls: str | list[str],
        shuffle: int = 0,
        skip_corrupt: bool = False,
        seed: int = 0,
        decode: Callable[[dict[str, Any]], dict[str, Any]] = decode_webdataset_sample,
    ) -> None:
        self.urls = urls
        self.shuffle = shuffle
        self.skip_corrupt = skip_corrupt
        self.seed = seed
        self.decode = decode
        self.skipped = SkipCounter()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.epoch_records(epoch=0)

    def _share(self, epoch: int, role: int, quiet: bool = False) -> tuple[list[str], Iterator[dict[str, Any]]]:
        """The shard URLs of this rank's share ``role`` in pass ``epoch``, and its raw samples in order
        (``quiet``: a truncated shard is skipped without a word, for a share read a second time)."""
        rank, world_size, num_workers = distributed.rank(), distributed.world_size(), dataloader_worker()[1]
        patterns = [self.urls] if isinstance(self.urls, str) else list(self.urls)
        urls = [url for pattern in patterns for url in wds.shardlists.expand_urls(pattern)]
        if len(urls) % world_size:
            raise ValueError(
                f"{len(urls)} shards cannot be split evenly across {world_size} ranks: ranks would train on "
                "different numbers of batches and wait for each other at the end of the epoch; write a "
                "multiple of the number of ranks of equal-size shards"
            )
        if self.shuffle:
            sample_rng(self.seed, epoch, "shards", "shuffle").shuffle(urls)
        urls = urls[rank::world_size][role::num_workers]
        samples = share_samples(urls, (lambda _: None) if quiet else self._truncated)
        if self.shuffle:
            rng = sample_rng(self.seed, epoch, f"rank{rank}/share{role}", "shuffle")
            samples = wds.shuffle(self.shuffle, rng=rng)(samples)
        return urls, samples

    def epoch_records(self, epoch: int, skip: int = 0, role: int | None = None) -> Iterator[dict[str, Any]]:
        """The records of pass ``epoch``, after the first ``skip`` samples (read, not decoded).

        ``role`` is the worker whose share this worker reads (default: its own id); a resumed epoch
        rotates the shares so the DataLoader's round robin continues where it stopped. A replaced corrupt
        sample keeps its own ``position`` (a resume skips it like any other).

        Samples lost to a truncated shard (those after its last good one, which were never read) take no
        position: positions count the samples the share's shards actually yield, so the next shard's
        first sample follows the last good one. A resume reads the truncated shard's head again without
        decoding it, meets the cut at the same sample and goes on with the next shard: no lost sample is
        read, counted or skipped twice.
        """
        role = dataloader_worker()[0] if role is None else role
        urls, samples = self._share(epoch, role)
        pending: list[tuple[int, str]] = []  # (position, where) of corrupt samples waiting for the next good one
        for position, sample in enumerate(samples, start=1):
            if position <= skip:
                continue
            try:
                record = self.decode(sample)
            except CorruptSampleError as error:
                if not self.skip_corrupt:
                    raise
                self.skipped.skip(error)
                pending.append((position, f"{sample.get('__url__', '?')} (key {sample.get('__key__', '?')})"))
                continue
            yield from self._replace(pending, record)
            pending = []
            yield {**record, "position": position}
        if pending:  # corrupt samples at the end of the share: its first good sample stands in
            share = self._share(epoch, role, quiet=True)[1]
            record = next((r for r in map(self._decode_quietly, share) if r is not None), None)
            if record is None:
                raise CorruptSampleError(
                    f"every sample of shards {urls} is corrupt (skip_corrupt): nothing to replace them with; "
                    f"last skipped: {'; '.join(self.skipped.recent)}"
                )
            yield from self._replace(pending, record)

    def _truncated(self, error: TruncatedShard) -> None:
        if not self.skip_corrupt:
            raise CorruptSampleError(str(error)) from error
        self.skipped.skip_shard(error)

    def _replace(self, pending: list[tuple[int, str]], record: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for position, where in pending:
            self.skipped.replace(f"sample {where}", f"{record['key']}, a good sample of the same stream")
            yield {**record, "position": position}

    def _decode_quietly(self, sample: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return self.decode(sample)
        except CorruptSampleError:
            return None
