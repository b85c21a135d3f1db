"""Webdataset tar shards read sample by sample, a truncated shard told apart from a complete one.

webdataset's own reader (``tarfile_to_samples``) lets a raw ``tarfile.ReadError`` through when a shard
breaks off inside a member or a (PAX) header, and reads a shard cut at a header boundary as a shorter,
complete one whose last sample may lack files (an image without its caption). :func:`shard_samples`
groups a shard's members into samples as webdataset does (``__key__``, ``__url__``, lower-case
extension -> bytes) and raises :class:`TruncatedShard` when the data ends anywhere but at tar's
end-of-archive marker. The sample being read when the data ends is dropped even if all its files came
through: nothing tells whether more of it followed. :func:`share_samples` chains the shards of a share.
"""

from __future__ import annotations

import contextlib
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import webdataset as wds
from webdataset.tariterators import base_plus_ext

_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (skipped, as webdataset does)


class TruncatedShard(Exception):
    """A shard whose tar data ends before its end-of-archive marker: names the shard and its last good sample."""

    def __init__(self, url: str, last_key: str | None, cause: str) -> None:
        after = f"after sample {last_key}" if last_key is not None else "before its first sample"
        super().__init__(f"truncated shard {url}: its data ends {after} ({cause}); the rest of the shard is lost")
        self.url, self.last_key = url, last_key


class _Header(tarfile.TarInfo):
    """A tar header that records on its archive why reading stopped: an ``EOFHeaderError`` is the
    end-of-archive marker; an empty, short or invalid header is data that breaks off (tarfile stops
    silently at all of them)."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as error:
            tar.vlzoo_stopped_by = error
            raise


def shard_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in order; raises :class:`TruncatedShard` (after its last whole sample)
    if the shard breaks off. Opening errors (a missing file) are not caught."""
    stream = wds.gopen(url)
    sample: dict[str, Any] | None = None
    last_key = None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*", tarinfo=_Header)
        for member in tar:
            key, extension = base_plus_ext(member.name)
            if not member.isreg() or _META.match(member.name) or key is None:
                continue
            data = tar.extractfile(member).read()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    yield sample
                    last_key = sample["__key__"]
                sample = {"__key__": key, "__url__": url}
            if extension.lower() in sample:
                raise ValueError(f"{url}: duplicate file {member.name} in sample {key}")
            sample[extension.lower()] = data
        stopped = getattr(tar, "vlzoo_stopped_by", None)
        if not isinstance(stopped, tarfile.EOFHeaderError):
            raise TruncatedShard(url, last_key, f"no end-of-archive marker: {stopped or 'the data ends'}")
    except (tarfile.TarError, EOFError, zlib.error) as error:  # ReadError: unexpected end of data, empty header, ...
        raise TruncatedShard(url, last_key, f"{type(error).__name__}: {error}") from error
    finally:
        with contextlib.suppress(OSError):  # a pipe (curl) that stopped early exits with an error status
            stream.close()
    if sample is not None:
        yield sample


def share_samples(urls: list[str], on_truncated: Callable[[TruncatedShard], None]) -> Iterator[dict[str, Any]]:
    """The samples of ``urls``, shard after shard; a truncated shard calls ``on_truncated`` (which raises to
    stop, or returns to go on with the next shard)."""
    for url in urls:
        try:
            yield from shard_samples(url)
        except TruncatedShard as error:
            on_truncated(error)
