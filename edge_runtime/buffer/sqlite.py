"""Durable replay-buffer store and verdict ledger in one SQLite file (WAL).

The node's learner thread writes a micro-batch's admissions, evictions and verdicts in one
transaction and commits it before any ack leaves the node, so an ``admitted`` verdict always
refers to a committed item, and a crash loses only what was never acknowledged.

Samples are stored in their wire form (the msgpack header and the raw tensor bytes of
:func:`edge_runtime.wire.encode_sample`), never pickled. A write-through in-memory cache serves
``get`` (the buffer is bounded, so the cache is too).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable, Iterator

import msgpack
import numpy as np

from edge_runtime import wire
from edge_runtime.wire import Sample

Key = tuple[str, int]
SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS items (device TEXT, seq INTEGER, label INTEGER, score REAL, nbytes INTEGER,
                                  header BLOB, payload BLOB, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS evictions (id INTEGER PRIMARY KEY, device TEXT, seq INTEGER, label INTEGER, ts REAL);
CREATE TABLE IF NOT EXISTS verdicts (device TEXT, seq INTEGER, verdict TEXT, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, next_seq INTEGER);
"""


def _encode(sample: Sample) -> tuple[bytes, bytes]:
    frames = wire.encode_sample(sample)
    return bytes(frames[0]), b"".join(bytes(f) for f in frames[1:])


def _decode(device: str, header: bytes, payload: bytes) -> Sample:
    entries = msgpack.unpackb(header, raw=False)["tensors"]
    frames: list[bytes | memoryview] = [header]
    view, at = memoryview(payload), 0
    for ent in entries:
        n = np.dtype(ent["dtype"]).itemsize * int(np.prod(ent["shape"], dtype=np.int64))
        frames.append(view[at : at + n])
        at += n
    limits = wire.Limits(max_message_bytes=max(len(header) + len(payload), 1))
    return wire.decode(frames, device=device, limits=limits)  # type: ignore[return-value]


def _verdict(conn: sqlite3.Connection, device: str, seq: int) -> str | None:
    row = conn.execute("SELECT verdict FROM verdicts WHERE device = ? AND seq = ?", (device, int(seq))).fetchone()
    return None if row is None else row[0]


class SqliteStore:
    """Replay-buffer payload store (the ``MemoryStore`` interface) plus the node's verdict ledger."""

    durable = True

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.executescript(_DDL)
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        (version,) = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(version) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has store schema {version}, this edge-runtime reads {SCHEMA_VERSION}")
        self._in_tx = False
        self._cache: dict[Key, Sample] = {}
        self._meta: dict[Key, tuple[int, float, int]] = {}
        for device, seq, label, score, nbytes, header, payload in self.conn.execute(
                "SELECT device, seq, label, score, nbytes, header, payload FROM items"):
            key = (device, int(seq))
            self._cache[key] = _decode(device, header, payload)
            self._meta[key] = (int(label), float(score), int(nbytes))

    # ------------------------------------------------------------------ transactions
    def _write(self, sql: str, args: tuple | Iterable[tuple], many: bool = False) -> None:
        if not self._in_tx:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_tx = True
        if many:
            self.conn.executemany(sql, args)  # type: ignore[arg-type]
        else:
            self.conn.execute(sql, args)  # type: ignore[arg-type]

    def commit(self) -> None:
        """Make every write since the last commit durable (a no-op when there is none)."""
        if self._in_tx:
            self.conn.execute("COMMIT")
            self._in_tx = False

    def close(self) -> None:
        """Commit what is pending and close the connection."""
        self.commit()
        self.conn.close()

    # ------------------------------------------------------------------ store interface
    def put(self, key: Key, sample: Sample, score: float = 0.0) -> None:
        header, payload = _encode(sample)
        label = -1 if sample.label is None else int(sample.label)
        self._write("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key[0], int(key[1]), label, float(score), sample.nbytes, header, payload))
        self._cache[key] = sample
        self._meta[key] = (label, float(score), sample.nbytes)

    def get(self, key: Key) -> Sample:
        return self._cache[key]

    def delete(self, key: Key) -> None:
        """Remove ``key`` and log the eviction (``KeyError`` when it is not stored)."""
        label = self._meta[key][0]
        self._write("DELETE FROM items WHERE device = ? AND seq = ?", (key[0], int(key[1])))
        self._write("INSERT INTO evictions (device, seq, label, ts) VALUES (?, ?, ?, ?)", (key[0], int(key[1]), label, time.time()))
        del self._cache[key]
        del self._meta[key]

    def clear(self) -> None:
        for key in list(self._cache):
            self.delete(key)

    def keys(self) -> list[Key]:
        return list(self._cache)

    def items_meta(self) -> list[tuple[Key, int, float, int]]:
        """``(key, label, score, nbytes)`` of every stored item."""
        return [(k, *m) for k, m in self._meta.items()]

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._cache))

    # ------------------------------------------------------------------ ledger
    def record_verdicts(self, rows: Iterable[tuple[str, int, str]]) -> None:
        """One verdict per (device, seq); a second verdict for the same sample raises ``sqlite3.IntegrityError``."""
        self._write("INSERT INTO verdicts VALUES (?, ?, ?)", [(d, int(s), v) for d, s, v in rows], many=True)

    def set_next_seq(self, device: str, next_seq: int) -> None:
        self._write("INSERT INTO devices VALUES (?, ?) ON CONFLICT(device) DO UPDATE SET next_seq = excluded.next_seq",
                    (device, int(next_seq)))

    def next_seqs(self) -> dict[str, int]:
        """First undecided seq per device, as last committed."""
        return {d: int(n) for d, n in self.conn.execute("SELECT device, next_seq FROM devices")}

    def decided_above_next_seq(self) -> list[tuple[str, int]]:
        """Decided seqs past their device's ``next_seq`` (decided out of order, e.g. after a ``busy`` retry)."""
        rows = self.conn.execute("SELECT v.device, v.seq FROM verdicts v LEFT JOIN devices d ON v.device = d.device "
                                 "WHERE v.seq >= COALESCE(d.next_seq, 0)")
        return [(d, int(s)) for d, s in rows]

    def verdict(self, device: str, seq: int) -> str | None:
        return _verdict(self.conn, device, seq)

    def verdict_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def reader(self) -> "LedgerReader":
        """A read-only connection for another thread; it sees committed verdicts only."""
        return LedgerReader(self.path)


class LedgerReader:
    """Looks up first verdicts from the IO thread while the learner thread writes (WAL readers never block)."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)

    def verdict(self, device: str, seq: int) -> str | None:
        return _verdict(self.conn, device, seq)

    def close(self) -> None:
        self.conn.close()
