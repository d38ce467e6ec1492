"""Durable replay-buffer store in one SQLite file (WAL), shared with the node's verdict ledger (``edge_runtime.node.ledger``).

The node's learner thread writes a micro-batch's admissions, evictions and verdicts in one
transaction and commits it before any ack leaves the node, so an ``admitted`` verdict always
refers to a committed item, and a crash loses only what was never acknowledged.

Samples are stored in their wire form (the msgpack header of wire v1's ``sample`` message and the
concatenated raw tensor bytes), framed and read back with :mod:`edge_runtime.core.codec`; nothing
is pickled. ``Sample.meta`` is not on the wire and is not stored. A write-through in-memory cache
serves ``get`` without touching the disk (the buffer is bounded, so the cache is too); it holds
exactly what a reopened store would read: read-only arrays over the stored bytes.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterator

from edge_runtime.core import codec, validation
from edge_runtime.core.codec import is_int, short
from edge_runtime.core.names import LOGGER_BUFFER
from edge_runtime.core.sample import SEQ_MAX, Sample, sample_header

log = logging.getLogger(LOGGER_BUFFER)

Key = tuple[str, int]
SCHEMA_VERSION = 1
#: The header's ``v``: rows keep a sample as wire protocol v1's ``sample`` message.
_FORMAT_VERSION = 1
_MISSING = object()

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS items (device TEXT, seq INTEGER, label INTEGER, score REAL, nbytes INTEGER,
                                  header BLOB, payload BLOB, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS evictions (id INTEGER PRIMARY KEY, device TEXT, seq INTEGER, label INTEGER, ts REAL);
"""


def _encode(sample: Sample) -> tuple[bytes, bytes]:
    """(msgpack header, concatenated little-endian tensor bytes): the frames of ``sample``'s wire v1
    ``sample`` message (``edge_runtime.wire.encode_sample`` sends the same bytes)."""
    header = sample_header(sample, _FORMAT_VERSION, purpose="be stored")
    frames = codec.pack(header, sample.tensors, key="tensors", kinds="biuf")
    return bytes(frames[0]), b"".join(frames[1:])


def _decode(device: str, header: bytes, payload: bytes) -> Sample:
    """The sample of a stored (header, payload); its tensors are read-only views of ``payload``.

    The payload is split by the header's dtypes and shapes (:mod:`edge_runtime.core.codec`), then
    the content is checked as the node checks a sample (:mod:`edge_runtime.core.validation`: no
    NaN/Inf, a known split, a label >= 0). Any fault raises ``ValueError``.
    """
    head = codec.unpack_header(header)
    if not (is_int(head.get("v")) and head["v"] == _FORMAT_VERSION and head.get("type") == "sample"):
        raise ValueError(f"stored header is not a v{_FORMAT_VERSION} sample (v={short(head.get('v'))}, "
                         f"type={short(head.get('type'))})")
    seq, ts, label, split = head.get("seq"), head.get("ts"), head.get("label", _MISSING), head.get("split")
    if not (is_int(seq) and 0 <= seq <= SEQ_MAX and (is_int(ts) or isinstance(ts, float))
            and (label is None or is_int(label)) and isinstance(split, str)):
        raise ValueError(f"stored header fields are malformed (seq={short(seq)}, ts={short(ts)}, "
                         f"label={short(head.get('label', 'missing'))}, split={short(split)})")
    specs = codec.read_specs(head.get("tensors"), key="tensors")
    tensors = codec.to_arrays(specs, codec.split_payload(payload, specs))
    problem = validation.check_finite(tensors) or validation.check_label_split(label, split, None)
    if problem is not None:
        raise ValueError(f"{problem.message} ({problem.verdict})")
    return Sample(tensors=tensors, label=label, split=split, device=device, seq=seq, ts=float(ts))


class SqliteStore:
    """Replay-buffer payload store (the ``MemoryStore`` interface); ``Ledger(store)`` adds the node's verdicts.

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
        self._unreadable: list[tuple[str, int, int]] = []
        for device, seq, label, score, nbytes, header, payload in self.conn.execute(
                "SELECT device, seq, label, score, nbytes, header, payload FROM items"):
            key = (device, int(seq))
            try:
                sample = _decode(device, header, payload)
            except Exception as err:  # a damaged row: evict it (logged) rather than refuse to start
                log.warning("stored sample %s/%s cannot be read back (%s); evicted", device, seq, err,
                            extra={"event": "store_unreadable", "device": device, "seq": int(seq)})
                self._unreadable.append((device, int(seq), int(label)))
                continue
            self._cache[key] = sample
            self._meta[key] = (int(label), float(score), int(nbytes))
        for device, seq, label in self._unreadable:
            self._log_delete((device, seq), label)
        self.commit()

    # ------------------------------------------------------------------ transactions
    def write(self, sql: str, args: tuple) -> None:
        """Execute one write in the open transaction (opening it with ``BEGIN IMMEDIATE`` when none is)."""
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

        Raises ``ValueError`` before writing anything when the sample could not be read back (e.g.
        NaN/Inf: the message ends with the reason, ``(invalid:nan_inf)``).
        """
        key = (key[0], int(key[1]))
        if key != sample.key:
            raise ValueError(f"key {key} differs from the sample's own key {sample.key}")
        header, payload = _encode(sample)
        stored = _decode(key[0], header, payload)
        label = -1 if sample.label is None else int(sample.label)
        self.write("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key[0], key[1], label, float(score), len(payload), header, payload))
        self._cache[key] = stored
        self._meta[key] = (label, float(score), len(payload))

    def get(self, key: Key) -> Sample:
        """The stored sample (from the cache; ``KeyError`` when absent)."""
        return self._cache[key]

    def delete(self, key: Key) -> None:
        """Remove ``key`` and log the eviction (``KeyError`` when it is not stored)."""
        self._log_delete(key, self._meta[key][0])
        del self._cache[key]
        del self._meta[key]

    def _log_delete(self, key: Key, label: int) -> None:
        self.write("DELETE FROM items WHERE device = ? AND seq = ?", (key[0], int(key[1])))
        self.write("INSERT INTO evictions (device, seq, label, ts) VALUES (?, ?, ?, ?)",
                   (key[0], int(key[1]), label, time.time()))

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

    def evict_unfit(self, reason_of: Callable[[Sample], str | None]) -> list[tuple[Key, str]]:
        """Delete (and log as evicted) every stored sample for which ``reason_of`` names a reason; commits.

        The node calls it at start-up with its input contract, so that a sample stored under other
        rules (another frame size, an empty clip) never reaches a replay batch.
        """
        dropped = [(key, reason) for key in list(self._cache) if (reason := reason_of(self._cache[key])) is not None]
        for key, reason in dropped:
            log.warning("stored sample %s/%s does not fit this node (%s); evicted", key[0], key[1], reason,
                        extra={"event": "store_unfit", "device": key[0], "seq": key[1], "reason": reason})
            self.delete(key)
        self.commit()
        return dropped

    def trim_evictions(self, keep: int) -> None:
        """Keep only the newest ``keep`` rows of the evictions log (it would otherwise grow forever)."""
        self.write("DELETE FROM evictions WHERE id <= (SELECT MAX(id) FROM evictions) - ?", (int(keep),))

    def evictions_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM evictions").fetchone()[0])
