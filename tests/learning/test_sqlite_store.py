"""SqliteStore (durable replay-buffer store + verdict ledger) and ReplayBuffer restore over it.

Real SQLite files under tmp_path; the crash case is a real child process that exits without
committing.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest

from edge_runtime import wire
from edge_runtime.core.config import BufferConfig
from edge_runtime.core.sample import Sample
from edge_runtime.learning.buffer import RETENTION, ReplayBuffer, SqliteStore
from edge_runtime.node.ledger import Ledger, LedgerReader

REPO = Path(__file__).resolve().parents[2]


def make(seq: int, label: int, rng: np.random.Generator, device: str = "uav", floats: int | None = None) -> Sample:
    """A small sample with random float32 audio/video; ``floats`` fixes the audio length."""
    t = int(rng.integers(1, 6)) if floats is None else floats
    return Sample({"audio": rng.normal(size=(t, 3)).astype(np.float32),
                   "video": rng.normal(size=(1, 1, 2, 2)).astype(np.float32)},
                  label=label, split="train", device=device, seq=seq, ts=seq / 7)


def committed(path: Path, sql: str) -> list[tuple]:
    """Rows of ``sql`` as a fresh connection sees them (committed data only)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def committed_keys(path: Path) -> set[tuple[str, int]]:
    return {(d, int(s)) for d, s in committed(path, "SELECT device, seq FROM items")}


def assert_same_sample(got: Sample, want: Sample) -> None:
    assert (got.device, got.seq, got.label, got.split, got.ts) == (want.device, want.seq, want.label, want.split, want.ts)
    assert list(got.tensors) == list(want.tensors)
    for name, arr in want.tensors.items():
        g = got.tensors[name]
        assert g.dtype == arr.dtype.newbyteorder("<") and g.shape == arr.shape
        assert g.tobytes() == np.ascontiguousarray(arr, dtype=g.dtype).tobytes()  # bit-exact, NaN-free


def check_buffer(buf: ReplayBuffer, store: SqliteStore) -> None:
    """Bounds, class index and byte count agree with the stored samples themselves."""
    keys = buf.keys()
    assert len(keys) <= buf.max_items and buf.nbytes <= buf.max_bytes
    assert sorted(keys) == sorted(store.keys())
    assert buf.nbytes == sum(store.get(k).nbytes for k in keys)
    labels = [store.get(k).label for k in keys]
    assert buf.class_counts() == {c: labels.count(c) for c in set(labels)}


# --------------------------------------------------------------------------- store


def test_round_trip_is_bit_exact_across_close_and_reopen(tmp_path):
    rng = np.random.default_rng(0)
    samples = [
        Sample({"audio": rng.normal(size=(5, 13)).astype(np.float32),
                "video": rng.integers(0, 255, size=(2, 3, 4, 4)).astype(np.uint8)},
               label=3, split="train", device="uav-1", seq=0, ts=1234.000001),
        Sample({"a": rng.normal(size=(0, 4)).astype(np.float16),  # zero-length tensor
                "b": np.array([-(2**62), 7, 2**62], dtype=np.int64),
                "c": np.arange(6, dtype=np.int16).reshape(2, 3)[:, ::-1]},  # not C-contiguous
               label=0, split="eval", device="uav-1", seq=1, ts=-0.5),
        Sample({"x": np.array([1.5, -2.25], dtype=">f4"),  # big-endian in, little-endian stored
                "y": np.float64(np.pi) * np.ones((1, 1, 1, 1, 1, 1, 1))},  # float64 and 7 dims: outside the default wire limits
               label=None, device="ünïcode-dev", seq=2**40, ts=float(2**-30)),
    ]
    store = SqliteStore(tmp_path / "s.db")
    for i, s in enumerate(samples):
        store.put(s.key, s, score=i * 0.1 + 1e-9)
    for s in samples:
        assert_same_sample(store.get(s.key), s)
    store.commit()
    store.close()

    again = SqliteStore(tmp_path / "s.db")
    assert sorted(again.keys()) == sorted(s.key for s in samples) and len(again) == 3
    for s in samples:
        got = again.get(s.key)
        assert_same_sample(got, s)
        assert all(not t.flags.writeable for t in got.tensors.values())  # read-only views of the stored bytes
    meta = {k: (label, score, nbytes) for k, label, score, nbytes in again.items_meta()}
    assert meta == {s.key: (-1 if s.label is None else s.label, i * 0.1 + 1e-9, s.nbytes) for i, s in enumerate(samples)}
    assert ("uav-1", 0) in again and ("uav-1", 9) not in again and set(again) == set(meta)


def test_cached_sample_owns_its_bytes_and_ignores_later_changes_to_the_original(tmp_path):
    rng = np.random.default_rng(1)
    s = make(0, 1, rng)
    want = {n: t.copy() for n, t in s.tensors.items()}
    store = SqliteStore(tmp_path / "s.db")
    store.put(s.key, s)
    s.tensors["audio"][:] = 99.0  # the caller reuses its array
    del s
    got = store.get(("uav", 0))
    assert all(np.array_equal(got.tensors[n], want[n]) for n in want)
    with pytest.raises(ValueError):
        got.tensors["audio"][0, 0] = 1.0


def test_put_refuses_what_could_not_be_read_back_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(2)
    store = SqliteStore(tmp_path / "s.db")
    bad = make(0, 1, rng)
    bad.tensors["audio"][0, 0] = np.nan
    with pytest.raises(ValueError, match="invalid:nan_inf"):
        store.put(bad.key, bad)
    good = make(1, 1, rng)
    with pytest.raises(ValueError, match="key"):
        store.put(("uav", 2), good)
    assert len(store) == 0 and not store.conn.in_transaction


def test_a_stored_row_is_the_wire_sample_message(tmp_path):
    """Rows keep wire v1's sample message: header frame, then the tensor frames concatenated."""
    rng = np.random.default_rng(9)
    s = make(4, 2, rng, device="uav-9")
    s.tensors["audio"] = s.tensors["audio"].astype(">f4")
    s.tensors["n"] = np.array([[1, -2], [3, 4]], np.int64).T  # not C-contiguous
    store = SqliteStore(tmp_path / "s.db")
    store.put(s.key, s)
    store.commit()
    (header, payload, nbytes), = committed(tmp_path / "s.db", "SELECT header, payload, nbytes FROM items")
    frames = [bytes(f) for f in wire.encode_sample(s)]
    assert header == frames[0] and payload == b"".join(frames[1:]) and nbytes == len(payload)
    store.close()


def insert_row(path: Path, device: str, seq: int, header: bytes, payload: bytes, label: int = 1) -> None:
    """Write an items row directly, as an earlier version of the store (or a damaged disk) left it."""
    SqliteStore(path).close()  # creates the tables
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (device, seq, label, 0.5, len(payload), header, payload))
    conn.close()


def test_rows_written_from_wire_frames_are_read_back(tmp_path):
    s = Sample({"a": np.array([[1.5, -2.0]], np.float32), "m": np.array([True, False]),
                "e": np.zeros((0, 3), np.float16), "x": np.pi * np.ones((1,) * 7)},
               label=None, split="eval", device="d", seq=2**40, ts=0.25)
    frames = [bytes(f) for f in wire.encode_sample(s)]
    insert_row(tmp_path / "s.db", "d", 2**40, frames[0], b"".join(frames[1:]), label=-1)
    store = SqliteStore(tmp_path / "s.db")
    assert store.keys() == [("d", 2**40)]
    assert_same_sample(store.get(("d", 2**40)), s)


def _header(**over) -> bytes:
    h = {"v": 1, "type": "sample", "seq": 0, "ts": 0.0, "label": 1, "split": "train",
         "tensors": [{"name": "audio", "dtype": "float32", "shape": [2]}]}
    h.update(over)
    return msgpack.packb(h, use_bin_type=True)


DAMAGED = {  # name: (header, payload)
    "truncated payload": (_header(), b"\0" * 7),
    "longer payload": (_header(), b"\0" * 9),
    "garbage header": (b"\xc1\x00", b"\0" * 8),
    "header not a map": (msgpack.packb([1, 2]), b"\0" * 8),
    "other version": (_header(v=2), b"\0" * 8),
    "other type": (_header(type="ping"), b"\0" * 8),
    "no seq": (_header(seq=None), b"\0" * 8),
    "bad split": (_header(split="test"), b"\0" * 8),
    "negative label": (_header(label=-3), b"\0" * 8),
    "nan": (_header(), np.array([np.nan, 1], np.float32).tobytes()),
    "object dtype": (_header(tensors=[{"name": "audio", "dtype": "object", "shape": [1]}]), b"\0" * 8),
    "negative dim": (_header(tensors=[{"name": "audio", "dtype": "uint8", "shape": [-8]}]), b"\0" * 8),
    "huge empty shape": (_header(tensors=[{"name": "audio", "dtype": "float32", "shape": [2**63, 0]}]), b""),
    "overflowing shape": (_header(tensors=[{"name": "audio", "dtype": "float32", "shape": [2**62, 2**62]}]), b"\0" * 8),
    "non-int dim": (_header(tensors=[{"name": "audio", "dtype": "float32", "shape": ["2"]}]), b"\0" * 8),
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_row_is_evicted_with_a_warning_and_the_rest_is_kept(tmp_path, caplog, damage):
    path = tmp_path / "s.db"
    good = make(1, 1, np.random.default_rng(10), device="d")
    store = SqliteStore(path)
    store.put(good.key, good)
    store.close()
    header, payload = DAMAGED[damage]
    insert_row(path, "d", 0, header, payload)
    with caplog.at_level(logging.WARNING, logger="edge_runtime.buffer"):
        again = SqliteStore(path)
    assert again.keys() == [("d", 1)]
    assert_same_sample(again.get(("d", 1)), good)
    warned = [r for r in caplog.records if getattr(r, "event", None) == "store_unreadable"]
    assert [(r.device, r.seq) for r in warned] == [("d", 0)]
    assert committed_keys(path) == {("d", 1)}
    assert committed(path, "SELECT device, seq, label FROM evictions") == [("d", 0, 1)]
    again.close()


def test_wal_mode_synchronous_setting_and_schema_version(tmp_path):
    for mode, code in (("NORMAL", 1), ("FULL", 2), ("full", 2)):
        store = SqliteStore(tmp_path / f"{mode}.db", synchronous=mode)
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == code
        store.close()
    assert committed(tmp_path / "FULL.db", "SELECT value FROM meta WHERE key = 'schema_version'") == [(1,)]
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore(tmp_path / "x.db", synchronous="OFF")


def test_writes_are_invisible_to_another_connection_until_commit(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    Ledger(store)  # creates the ledger's tables (committed: no transaction is open)
    store.commit()  # nothing open: a no-op
    store.put(("uav", 0), make(0, 1, rng), score=0.5)
    Ledger(store).record_verdicts([("uav", 0, "admitted")])
    Ledger(store).set_next_seq("uav", 1)
    assert store.conn.in_transaction
    assert committed_keys(path) == set()
    assert committed(path, "SELECT COUNT(*) FROM verdicts") == [(0,)]
    assert committed(path, "SELECT * FROM devices") == []
    assert Ledger(store).verdict("uav", 0) == "admitted" and Ledger(store).next_seqs() == {"uav": 1}  # its own view has them
    store.commit()
    assert not store.conn.in_transaction
    assert committed_keys(path) == {("uav", 0)}
    assert committed(path, "SELECT device, seq, verdict FROM verdicts") == [("uav", 0, "admitted")]
    assert committed(path, "SELECT * FROM devices") == [("uav", 1)]
    store.delete(("uav", 0))
    assert committed_keys(path) == {("uav", 0)}  # the delete is not committed yet
    store.commit()
    assert committed_keys(path) == set()
    store.close()


@pytest.mark.slow
def test_a_crash_loses_exactly_the_uncommitted_writes(tmp_path):
    path = tmp_path / "s.db"
    child = textwrap.dedent(f"""
        import os
        import numpy as np
        from edge_runtime.node.ledger import Ledger
        from edge_runtime.learning.buffer.sqlite import SqliteStore
        from edge_runtime.core.sample import Sample
        def mk(i):
            return Sample({{"audio": np.full((2, 3), i, np.float32)}}, label=i % 2, device="d", seq=i)
        s = SqliteStore({str(path)!r}, synchronous="FULL")
        for i in range(3):
            s.put(("d", i), mk(i), score=float(i))
        Ledger(s).record_verdicts([("d", 0, "admitted"), ("d", 1, "admitted"), ("d", 2, "admitted")])
        Ledger(s).set_next_seq("d", 3)
        s.commit()
        s.put(("d", 3), mk(3))
        s.delete(("d", 0))
        Ledger(s).record_verdicts([("d", 3, "admitted")])
        Ledger(s).set_next_seq("d", 4)
        Ledger(s).set_next_seq("e", 9)
        os._exit(0)  # die holding the open transaction: no commit, no close
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    store = SqliteStore(path)
    assert sorted(store.keys()) == [("d", 0), ("d", 1), ("d", 2)]
    assert np.array_equal(store.get(("d", 2)).tensors["audio"], np.full((2, 3), 2, np.float32))
    assert Ledger(store).verdict("d", 2) == "admitted" and Ledger(store).verdict("d", 3) is None
    assert Ledger(store).next_seqs() == {"d": 3} and Ledger(store).verdict_count() == 3
    assert committed(path, "SELECT COUNT(*) FROM evictions") == [(0,)]
    store.close()


def test_a_second_verdict_for_a_sample_raises_and_records_none_of_its_batch(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    Ledger(store).record_verdicts([("a", 0, "trained"), ("a", 1, "skipped")])
    with pytest.raises(sqlite3.IntegrityError):
        Ledger(store).record_verdicts([("a", 2, "admitted"), ("a", 0, "admitted")])  # uncommitted first verdict
    assert Ledger(store).verdict("a", 2) is None and Ledger(store).verdict("a", 0) == "trained"
    store.commit()
    with pytest.raises(sqlite3.IntegrityError):
        Ledger(store).record_verdicts([("b", 5, "eval"), ("b", 5, "eval")])  # twice in one batch
    store.close()
    again = SqliteStore(tmp_path / "s.db")
    with pytest.raises(sqlite3.IntegrityError):
        Ledger(again).record_verdicts([("a", 1, "admitted")])  # committed in an earlier run
    assert Ledger(again).verdict_count() == 2 and Ledger(again).verdict("a", 1) == "skipped"
    Ledger(again).record_verdicts([("a", 2, "invalid:nan_inf")])
    assert Ledger(again).verdict_count() == 3


def test_next_seqs_survive_reopen(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    for n in range(1, 6):
        Ledger(store).set_next_seq("uav-1", n)
        store.commit()
    Ledger(store).set_next_seq("uav-2", 40)
    store.close()  # close commits what is pending
    again = SqliteStore(tmp_path / "s.db")
    assert Ledger(again).next_seqs() == {"uav-1": 5, "uav-2": 40}
    Ledger(again).set_next_seq("uav-2", 41)
    assert Ledger(again).next_seqs() == {"uav-1": 5, "uav-2": 41}


def test_reader_in_another_thread_sees_committed_verdicts_only(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    Ledger(store).record_verdicts([("a", 0, "trained")])
    answers: list = []

    def look(reader: LedgerReader | None = None) -> None:
        own = reader is None
        reader = reader or Ledger(store).reader()  # created in this thread
        answers.append((reader.verdict("a", 0), reader.verdict("a", 1)))
        if own:
            reader.close()

    def in_thread(**kw) -> None:
        t = threading.Thread(target=look, kwargs=kw)
        t.start()
        t.join(timeout=30)
        assert not t.is_alive()

    in_thread()
    store.commit()
    Ledger(store).record_verdicts([("a", 1, "admitted")])
    shared = Ledger(store).reader()  # created here, used by the other thread only
    in_thread(reader=shared)
    store.commit()
    in_thread(reader=shared)
    shared.close()
    assert answers == [(None, None), ("trained", None), ("trained", "admitted")]
    with pytest.raises(sqlite3.OperationalError):
        Ledger(store).reader().conn.execute("DELETE FROM verdicts")  # read-only


def test_every_delete_logs_one_eviction_row(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "s.db"
    store = SqliteStore(path)
    for i in range(6):
        store.put(("uav", i), make(i, i % 3, rng))
    store.commit()
    store.delete(("uav", 4))
    store.delete(("uav", 1))
    with pytest.raises(KeyError):
        store.delete(("uav", 1))
    store.commit()
    rows = committed(path, "SELECT id, device, seq, label, ts FROM evictions ORDER BY id")
    assert [(d, s, lab) for _, d, s, lab, _ in rows] == [("uav", 4, 1), ("uav", 1, 1)]
    assert all(isinstance(ts, float) and ts > 0 for *_, ts in rows)
    store.clear()
    store.commit()
    assert len(store) == 0 and committed_keys(path) == set()
    assert sorted(s for _, _, s, _, _ in committed(path, "SELECT * FROM evictions")) == list(range(6))


# --------------------------------------------------------------------------- ReplayBuffer over the store


def offer_stream(buf: ReplayBuffer, store: SqliteStore, seqs: range, rng: np.random.Generator,
                 commit_every: int = 7) -> set[tuple[str, int]]:
    """Offer a random imbalanced stream, committing every few offers; returns the admitted keys."""
    admitted = set()
    for seq in seqs:
        label = int(rng.choice(4, p=[0.55, 0.25, 0.15, 0.05]))
        s = make(seq, label, rng, device=f"uav-{seq % 3}")
        if buf.offer(s, float(rng.random())).admitted:
            admitted.add(s.key)
        assert len(buf) <= buf.max_items and buf.nbytes <= buf.max_bytes
        if seq % commit_every == commit_every - 1:
            store.commit()
            assert set(buf.keys()) == set(store.keys()) == committed_keys(store.path)
    return admitted


@pytest.mark.parametrize("policy", sorted(RETENTION))
def test_buffer_on_sqlite_stays_in_bounds_and_matches_the_committed_store(tmp_path, policy):
    rng = np.random.default_rng(5)
    cfg = BufferConfig(max_items=20, max_bytes=20 * 4 * 3 * 4, retention=policy)  # both bounds bite
    store = SqliteStore(tmp_path / "s.db")
    buf = ReplayBuffer(cfg, seed=1, store=store)
    admitted = offer_stream(buf, store, range(1200), rng)
    store.commit()
    check_buffer(buf, store)
    assert buf.state_dict()["samples"] is None  # payloads live in the store, not in checkpoints
    evicted = [(d, s) for d, s in committed(store.path, "SELECT device, seq FROM evictions")]
    # every admitted sample is stored, or was evicted exactly once later (and logged)
    assert len(evicted) == len(set(evicted)) and set(evicted) == admitted - set(buf.keys())
    assert len(admitted) > 2 * cfg.max_items
    store.close()


@pytest.mark.parametrize("policy", sorted(RETENTION))
def test_restore_from_an_older_checkpoint_reconciles_with_the_store(tmp_path, policy, caplog):
    rng = np.random.default_rng(6)
    cfg = BufferConfig(max_items=15, max_bytes=10**6, retention=policy)
    store = SqliteStore(tmp_path / "s.db")
    buf = ReplayBuffer(cfg, seed=2, store=store)
    offer_stream(buf, store, range(100), rng)
    store.commit()
    old = buf.state_dict()
    offer_stream(buf, store, range(100, 180), rng)  # admissions and evictions after the checkpoint
    store.commit()
    live_committed = committed_keys(store.path)
    store.close()

    fresh_store = SqliteStore(tmp_path / "s.db")
    restored = ReplayBuffer(cfg, seed=77, store=fresh_store)
    with caplog.at_level(logging.INFO, logger="edge_runtime.buffer"):
        restored.load_state_dict(old)
    assert sorted(restored.keys()) == sorted(fresh_store.keys()) and set(restored.keys()) == live_committed
    check_buffer(restored, fresh_store)
    dropped, added = len(set(old["keys"]) - live_committed), len(live_committed - set(old["keys"]))
    assert dropped > 0 and added > 0
    rec = next(r for r in caplog.records if getattr(r, "event", None) == "buffer_reconciled")
    assert (rec.evicted_after_checkpoint, rec.admitted_after_checkpoint) == (dropped, added)
    assert restored.offered == old["offered"] and restored.offered_per_class == old["offered_per_class"]
    assert {restored.score(k) for k in restored.keys()} == {sc for k, _, sc, _ in fresh_store.items_meta()}
    got = restored.sample(6)
    assert len({s.key for s in got}) == 6 and all(s.key in restored for s in got)
    offer_stream(restored, fresh_store, range(1000, 1100), rng)  # keeps working afterwards
    fresh_store.commit()
    check_buffer(restored, fresh_store)


def test_restore_from_store_alone_after_a_crash_before_any_checkpoint(tmp_path):
    rng = np.random.default_rng(7)
    cfg = BufferConfig(max_items=12, max_bytes=10**6, retention="class_balanced")
    store = SqliteStore(tmp_path / "s.db")
    buf = ReplayBuffer(cfg, seed=3, store=store)
    offer_stream(buf, store, range(60), rng)
    store.commit()
    fresh_store = SqliteStore(tmp_path / "s.db")
    restored = ReplayBuffer(cfg, seed=3, store=fresh_store)
    restored.restore_from_store()
    check_buffer(restored, fresh_store)
    assert sorted(restored.keys()) == sorted(buf.keys())
    assert restored.offered == len(restored) and sum(restored.offered_per_class.values()) == len(restored)
    assert len(restored.sample(12)) == 12


@pytest.mark.parametrize("how", ["checkpoint", "store_only"])
def test_a_store_over_the_bounds_is_trimmed_by_the_retention_policy_and_logged(tmp_path, how):
    rng = np.random.default_rng(8)
    store = SqliteStore(tmp_path / "s.db")
    big = ReplayBuffer(BufferConfig(max_items=30, max_bytes=10**6, retention="mbs"), store=store)
    scores = rng.permutation(30).astype(float)
    for seq in range(30):
        assert big.offer(make(seq, 0, rng, floats=2), scores[seq]).admitted
    store.commit()
    state = big.state_dict()
    store.close()

    small_store = SqliteStore(tmp_path / "s.db")
    small = ReplayBuffer(BufferConfig(max_items=8, max_bytes=10**6, retention="mbs"), store=small_store)
    if how == "checkpoint":
        small.load_state_dict(state)
    else:
        small.restore_from_store()
    small_store.commit()
    check_buffer(small, small_store)
    # MBS keeps the lowest deviation scores of the (single) class: the 8 smallest.
    assert sorted(small.score(k) for k in small.keys()) == list(range(8))
    assert committed(small_store.path, "SELECT COUNT(*) FROM evictions") == [(22,)]
    assert committed_keys(small_store.path) == set(small.keys())
