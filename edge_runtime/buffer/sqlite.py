"""Durable replay-buffer store and verdict ledger in one SQLite file (WAL).

The node's learner thread writes a micro-batch's admissions, evictions and verdicts in one
transaction and commits it before any ack leaves the node, so an ``admitted`` verdict always
refers to a committed item, and a crash loses only what was never acknowledged.

Samples are stored in their wire form (the msgpack header of :func:`edge_runtime.wire.encode_sample`
and the concatenated raw tensor bytes) and read back with :func:`edge_runtime.wire.decode`; nothing
is pickled. ``Sample.meta`` is not on the wire and is not stored. A write-through in-memory cache
serves ``get`` without touching the disk (the buffer is bounded, so the cache is too); it holds
exactly what a reopened store would read: read-only arrays over the stored bytes.
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
    """(msgpack header, concatenated little-endian tensor bytes) of ``sample``'s wire form."""
    frames = wire.encode_sample(sample)
    return bytes(frames[0]), b"".join(frames[1:])


def _decode(device: str, header: bytes, payload: bytes) -> Sample:
    """The sample of a stored (header, payload); its tensors are read-only views of ``payload``.

    The payload is split by the header's dtypes and shapes, then checked by :func:`wire.decode`
    under limits fitted to this very message (the node's own limits may differ from the defaults).
    """
    entries = msgpack.unpackb(header, raw=False)["tensors"]
    frames: list[bytes | memoryview] = [header]
    view, at = memoryview(payload), 0
    for ent in entries:
        n = np.dtype(ent["dtype"]).itemsize * int(np.prod(ent["shape"], dtype=np.int64))
        frames.append(view[at : at + n])
        at += n
    if at != len(payload):
        raise ValueError(f"stored sample {device!r} has {len(payload)} payload bytes, its header describes {at}")
    limits = wire.Limits(max_header_bytes=len(header), max_tensors=len(entries),
                         max_dims=max((len(e["shape"]) for e in entries), default=0),
                         max_message_bytes=len(header) + len(payload),
                         allowed_dtypes=frozenset(e["dtype"] for e in entries))
    return wire.decode(frames, device=device, limits=limits)  # type: ignore[return-value]


def _verdict(conn: sqlite3.Connection, device: str, seq: int) -> str | None:
    row = conn.execute("SELECT verdict FROM verdicts WHERE device = ? AND seq = ?", (device, int(seq))).fetchone()
    return None if row is None else row[0]


class SqliteStore:
    """Replay-buffer payload store (the ``MemoryStore`` interface) plus the node's verdict ledger.

    Every write joins the open transaction (the first write after a commit opens it with
    ``BEGIN IMMEDIATE``); nothing is durable, nor visible to other connections, before
    :meth:`commit`. The connection may be used from another thread than the one that opened it,
    by one thread at a time.
    """

    durable = True

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        synchronous = str(synchronous).upper()
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        (mode,) = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); put the state on a local file system")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.executescript(_DDL)
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        (version,) = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if int(version) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has store schema {version}, this edge-runtime reads {SCHEMA_VERSION}")
        self._cache: dict[Key, Sample] = {}
        self._meta: dict[Key, tuple[int, float, int]] = {}
        for device, seq, label, score, nbytes, header, payload in self.conn.execute(
                "SELECT device, seq, label, score, nbytes, header, payload FROM items"):
            key = (device, int(seq))
            self._cache[key] = _decode(device, header, payload)
            self._meta[key] = (int(label), float(score), int(nbytes))

    # ------------------------------------------------------------------ transactions
    def _write(self, sql: str, args: tuple) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(sql, args)

    def commit(self) -> None:
        """Make every write since the last commit durable and visible (a no-op when there is none)."""
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        """Commit what is pending and close the connection."""
        self.commit()
        self.conn.close()

    # ------------------------------------------------------------------ store interface
    def put(self, key: Key, sample: Sample, score: float = 0.0) -> None:
        """Store ``sample`` (whose key must be ``key``) with its retention score.

        Raises ``ValueError`` (a :class:`~edge_runtime.wire.WireError` where the wire would refuse
        it, e.g. NaN/Inf) before writing anything when the sample could not be read back.
        """
        key = (key[0], int(key[1]))
        if key != sample.key:
            raise ValueError(f"key {key} differs from the sample's own key {sample.key}")
        header, payload = _encode(sample)
        stored = _decode(key[0], header, payload)
        label = -1 if sample.label is None else int(sample.label)
        self._write("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key[0], key[1], label, float(score), len(payload), header, payload))
        self._cache[key] = stored
        self._meta[key] = (label, float(score), len(payload))

    def get(self, key: Key) -> Sample:
        """The stored sample (from the cache; ``KeyError`` when absent)."""
        return self._cache[key]

    def delete(self, key: Key) -> None:
        """Remove ``key`` and log the eviction (``KeyError`` when it is not stored)."""
        label = self._meta[key][0]
        self._write("DELETE FROM items WHERE device = ? AND seq = ?", (key[0], int(key[1])))
        self._write("INSERT INTO evictions (device, seq, label, ts) VALUES (?, ?, ?, ?)",
                    (key[0], int(key[1]), label, time.time()))
        del self._cache[key]
        del self._meta[key]

    def clear(self) -> None:
        """Delete every item (each deletion is logged)."""
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
        """One verdict per (device, seq), all rows or none.

        A second verdict for a decided sample is a bug: ``sqlite3.IntegrityError``, and none of
        ``rows`` is recorded (the rest of the open transaction stays as it was).
        """
        rows = [(d, int(s), str(v)) for d, s, v in rows]
        self._write("SAVEPOINT record_verdicts", ())
        try:
            self.conn.executemany("INSERT INTO verdicts VALUES (?, ?, ?)", rows)
        except BaseException:
            self.conn.execute("ROLLBACK TO record_verdicts")
            raise
        finally:
            self.conn.execute("RELEASE record_verdicts")

    def set_next_seq(self, device: str, next_seq: int) -> None:
        """Record the first undecided seq of ``device``."""
        self._write("INSERT INTO devices VALUES (?, ?) ON CONFLICT(device) DO UPDATE SET next_seq = excluded.next_seq",
                    (device, int(next_seq)))

    def next_seqs(self) -> dict[str, int]:
        """First undecided seq per device (this connection's view: pending writes included)."""
        return {d: int(n) for d, n in self.conn.execute("SELECT device, next_seq FROM devices")}

    def decided_above_next_seq(self) -> list[tuple[str, int]]:
        """Decided seqs past their device's ``next_seq`` (decided out of order, e.g. after a ``busy`` retry)."""
        rows = self.conn.execute("SELECT v.device, v.seq FROM verdicts v LEFT JOIN devices d ON v.device = d.device "
                                 "WHERE v.seq >= COALESCE(d.next_seq, 0)")
        return [(d, int(s)) for d, s in rows]

    def verdict(self, device: str, seq: int) -> str | None:
        """The verdict of (device, seq), pending writes included; None when undecided."""
        return _verdict(self.conn, device, seq)

    def verdict_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def reader(self) -> "LedgerReader":
        """A read-only connection for another thread; it sees committed verdicts only."""
        return LedgerReader(self.path)


class LedgerReader:
    """Looks up first verdicts from the IO thread while the learner thread writes (WAL readers never block).

    Opened with ``check_same_thread=False``: create it anywhere, use it from one thread.
    """

    def __init__(self, path: str | Path) -> None:
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    def verdict(self, device: str, seq: int) -> str | None:
        """The committed verdict of (device, seq); None when none is committed."""
        return _verdict(self.conn, device, seq)

    def close(self) -> None:
        self.conn.close()
