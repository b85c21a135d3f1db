"""Optional on-disk cache of caption analyses: one sqlite file (stdlib), keyed by a caption hash.

Values are ``marshal``-encoded tuples of strings and ints (no pickle: loading runs no code). The
table name carries a schema version and the spaCy model's name and version, so a model upgrade
starts a fresh table instead of reading stale parses. Each process opens its own connection
(dataloader workers included); concurrent writers are serialised by sqlite (WAL mode), and a write
that still fails is skipped: the cache is only an accelerator.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sqlite3
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .analysis import Analysis

SCHEMA_VERSION = 1


def caption_key(caption: str) -> bytes:
    """16-byte BLAKE2b digest of the caption (UTF-8)."""
    return hashlib.blake2b(caption.encode("utf-8"), digest_size=16).digest()


def _table_name() -> str:
    from .resources import load_spacy

    meta = load_spacy().meta
    tag = f"{SCHEMA_VERSION}|{meta.get('lang')}_{meta.get('name')}|{meta.get('version')}"
    return "analyses_" + hashlib.blake2b(tag.encode(), digest_size=6).hexdigest()


class AnalysisDiskCache:
    """sqlite-backed ``caption -> Analysis`` store at ``path`` (created on first use)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._table = ""

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # never share a connection across fork
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._table = _table_name()
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self._table} (key BLOB PRIMARY KEY, value BLOB NOT NULL)")
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def get(self, caption: str) -> Analysis | None:
        from .analysis import Analysis

        conn = self._connection()
        row = conn.execute(f"SELECT value FROM {self._table} WHERE key = ?", (caption_key(caption),)).fetchone()
        if row is None:
            return None
        values = marshal.loads(row[0])
        return Analysis.from_tuple(values) if values[0] == caption else None  # guard against hash collisions

    def put_many(self, items: Iterable[tuple[str, Analysis]]) -> None:
        rows = [(caption_key(caption), marshal.dumps(analysis.to_tuple())) for caption, analysis in items]
        if not rows:
            return
        conn = self._connection()
        try:
            conn.execute("BEGIN")
            conn.executemany(f"INSERT OR IGNORE INTO {self._table} (key, value) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
        except sqlite3.OperationalError:  # locked for longer than the timeout: skip, it is only a cache
            if conn.in_transaction:
                conn.execute("ROLLBACK")

    def __len__(self) -> int:
        conn = self._connection()
        return conn.execute(f"SELECT COUNT(*) FROM {self._table}").fetchone()[0]

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
