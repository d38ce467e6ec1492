"""The node's verdict ledger, in the replay store's SQLite file and transaction.

Three tables beside the store's ``items`` and ``evictions``:

* ``verdicts (device, seq, verdict)``: the first verdict of every decided sample still kept;
* ``devices (device, next_seq)``: the first undecided seq per device (the resume point of a welcome);
* ``device_keys (device, key)``: with CURVE, the public key (Z85) that first registered each device id.

The rows of a device that never delivered a valid sample (every verdict ``invalid:*``) are deleted
when the IO thread frees its state (:meth:`Ledger.bind_key` with ``key=None``), so ids that only
ever sent junk leave nothing on disk and free their key's share of ``node.curve.max_ids_per_key``.

Compaction keeps the ledger's disk bounded: rows of a device below ``next_seq - retention`` are
deleted in the learner's transaction. Every seq below ``next_seq`` is decided, so a resend of a
compacted seq is still known to be decided (answered :data:`DECIDED`) and never learned twice.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from edge_runtime.learning.buffer.sqlite import SqliteStore

#: The ack status of a seq decided so long ago that its verdict row was compacted away.
DECIDED = "decided"

_DDL = """
CREATE TABLE IF NOT EXISTS verdicts (device TEXT, seq INTEGER, verdict TEXT, PRIMARY KEY (device, seq));
CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY, next_seq INTEGER);
CREATE TABLE IF NOT EXISTS device_keys (device TEXT PRIMARY KEY, key TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS device_keys_by_key ON device_keys (key);
"""


def _verdict(conn: sqlite3.Connection, device: str, seq: int) -> str | None:
    row = conn.execute("SELECT verdict FROM verdicts WHERE device = ? AND seq = ?", (device, int(seq))).fetchone()
    return None if row is None else row[0]


def _next_seq(conn: sqlite3.Connection, device: str) -> int:
    row = conn.execute("SELECT next_seq FROM devices WHERE device = ?", (device,)).fetchone()
    return 0 if row is None else int(row[0])


# One statement, so one snapshot: the resume point and the rows above it agree even while the learner commits.
# A range search on the verdicts primary key; a device with nothing decided out of order reads no verdict row.
_RESUME = """
SELECT d.next_seq, v.seq
FROM (SELECT COALESCE(MAX(next_seq), 0) AS next_seq FROM devices WHERE device = :device) AS d
LEFT JOIN verdicts AS v ON v.device = :device AND v.seq >= d.next_seq AND v.seq < d.next_seq + :window
"""


def _resume(conn: sqlite3.Connection, device: str, window: int) -> tuple[int, list[int]]:
    rows = conn.execute(_RESUME, {"device": device, "window": int(window)}).fetchall()
    return int(rows[0][0]), [int(s) for _, s in rows if s is not None]


def _device_key(conn: sqlite3.Connection, device: str) -> str | None:
    row = conn.execute("SELECT key FROM device_keys WHERE device = ?", (device,)).fetchone()
    return None if row is None else str(row[0])


# Whether a device ever delivered a valid sample: a verdict other than invalid:*, or rows compacted away
# (compaction deletes from seq 0 up, so next_seq > 0 without a row for seq 0 means some were).
_DELIVERED = """
SELECT EXISTS (SELECT 1 FROM verdicts WHERE device = :device AND verdict NOT LIKE 'invalid:%'),
       EXISTS (SELECT 1 FROM verdicts WHERE device = :device AND seq = 0),
       (SELECT next_seq FROM devices WHERE device = :device)
"""


class Ledger:
    """Verdicts, resume points and key bindings; every write joins the store's open transaction."""

    def __init__(self, store: "SqliteStore") -> None:
        self.store = store
        self.conn = store.conn
        for statement in filter(str.strip, _DDL.split(";")):
            self.conn.execute(statement)  # not executescript: that would commit an open transaction

    def record_verdicts(self, rows: Iterable[tuple[str, int, str]]) -> None:
        """One verdict per (device, seq), all rows or none.

        A second verdict for a decided sample is a bug: ``sqlite3.IntegrityError``, and none of
        ``rows`` is recorded (the rest of the open transaction stays as it was).
        """
        rows = [(d, int(s), str(v)) for d, s, v in rows]
        self.store.write("SAVEPOINT record_verdicts", ())
        try:
            self.conn.executemany("INSERT INTO verdicts VALUES (?, ?, ?)", rows)
        except BaseException:
            self.conn.execute("ROLLBACK TO record_verdicts")
            raise
        finally:
            self.conn.execute("RELEASE record_verdicts")

    def set_next_seq(self, device: str, next_seq: int) -> None:
        """Record the first undecided seq of ``device``."""
        self.store.write("INSERT INTO devices VALUES (?, ?) ON CONFLICT(device) DO UPDATE SET next_seq = excluded.next_seq",
                         (device, int(next_seq)))

    def compact(self, device: str, below: int) -> None:
        """Delete the verdict rows of ``device`` with seq < ``below`` (all of them decided)."""
        if below > 0:
            self.store.write("DELETE FROM verdicts WHERE device = ? AND seq < ?", (device, int(below)))

    def next_seq(self, device: str) -> int:
        """First undecided seq of ``device`` (0 for a device never seen)."""
        return _next_seq(self.conn, device)

    def next_seqs(self) -> dict[str, int]:
        """First undecided seq per device (this connection's view: pending writes included)."""
        return {d: int(n) for d, n in self.conn.execute("SELECT device, next_seq FROM devices")}

    def decided_above(self, device: str) -> list[int]:
        """Decided seqs of ``device`` at or past its ``next_seq`` (decided out of order, e.g. after a ``busy`` retry)."""
        rows = self.conn.execute("SELECT seq FROM verdicts WHERE device = ? AND seq >= ?", (device, _next_seq(self.conn, device)))
        return [int(s) for (s,) in rows]

    def decided_above_next_seq(self) -> list[tuple[str, int]]:
        """Every device's decided seqs past its ``next_seq``."""
        rows = self.conn.execute("SELECT v.device, v.seq FROM verdicts v LEFT JOIN devices d ON v.device = d.device "
                                 "WHERE v.seq >= COALESCE(d.next_seq, 0)")
        return [(d, int(s)) for d, s in rows]

    def verdict(self, device: str, seq: int) -> str | None:
        """The verdict of (device, seq), pending writes included; None when undecided or compacted."""
        return _verdict(self.conn, device, seq)

    def verdict_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def bind_key(self, device: str, key: str | None) -> None:
        """Bind ``device`` to the CURVE public ``key`` (Z85) that first registered it; a first binding is kept.

        ``key=None`` (the IO thread freed the device's state): :meth:`release` it.
        """
        if key is None:
            self.release(device)
        else:
            self.store.write("INSERT OR IGNORE INTO device_keys VALUES (?, ?)", (device, key))

    def release(self, device: str) -> bool:
        """Delete every row of ``device`` (verdicts, resume point, key binding) when it never delivered a
        valid sample; True when it did so. A device with any other verdict, or compacted rows, is kept."""
        valid, has_first, next_seq = self.conn.execute(_DELIVERED, {"device": device}).fetchone()
        if valid or (next_seq and not has_first):
            return False
        for table in ("verdicts", "devices", "device_keys"):
            self.store.write(f"DELETE FROM {table} WHERE device = ?", (device,))
        return True

    def device_key(self, device: str) -> str | None:
        return _device_key(self.conn, device)

    def reader(self) -> "LedgerReader":
        """A read-only connection for another thread; it sees committed rows only."""
        return LedgerReader(self.store.path)


class LedgerReader:
    """Looks up first verdicts from the IO thread while the learner thread writes (WAL readers never block).

    Opened with ``check_same_thread=False``: create it anywhere, use it from one thread.
    """

    def __init__(self, path: str | Path) -> None:
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    def verdict(self, device: str, seq: int) -> str | None:
        """The committed verdict of (device, seq); None when none is committed (or it was compacted)."""
        return _verdict(self.conn, device, seq)

    def next_seq(self, device: str) -> int:
        """The committed first undecided seq of ``device`` (0 when never seen)."""
        return _next_seq(self.conn, device)

    def resume(self, device: str, window: int) -> tuple[int, list[int]]:
        """The committed ``next_seq`` of ``device`` and its decided seqs in ``[next_seq, next_seq + window)``.

        The seqs decided out of order above the resume point, read in the same snapshot; at most
        ``window`` of them (the IO thread passes ``node.max_seq_gap``, the bound of its seq set).
        """
        return _resume(self.conn, device, window)

    def device_key(self, device: str) -> str | None:
        """The committed CURVE key binding of ``device``."""
        return _device_key(self.conn, device)

    def ids_of_key(self, key: str) -> int:
        """Committed device ids bound to the CURVE ``key``."""
        return int(self.conn.execute("SELECT COUNT(*) FROM device_keys WHERE key = ?", (key,)).fetchone()[0])

    def close(self) -> None:
        self.conn.close()
