"""Checkpoints (atomic, checksummed, fallback) and the SQLite store + ledger, on disk."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edge_runtime.learning.buffer import ReplayBuffer
from edge_runtime.node.ledger import Ledger
from edge_runtime.learning.buffer.sqlite import SqliteStore
from edge_runtime.learning.checkpoint import MAGIC, CheckpointError, CheckpointManager
from edge_runtime.core.config import BufferConfig
from edge_runtime.core.sample import Sample


def _sample(device: str, seq: int, label: int, rng: np.random.Generator) -> Sample:
    return Sample({"audio": rng.normal(size=(int(rng.integers(3, 9)), 13)).astype(np.float32),
                   "video": rng.normal(size=(2, 1, 8, 8)).astype(np.float32)},
                  label=label, split="train", device=device, seq=seq, ts=float(seq) / 3)


def test_checkpoint_file_is_magic_checksum_payload_and_rotates(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30):
        path = mgr.save({"step": step, "w": np.arange(4.0).tolist()}, step)
    data = path.read_bytes()
    assert data[:8] == MAGIC and data[8:40] == hashlib.sha256(data[40:]).digest()
    assert [p.name for p in mgr.paths()] == ["ckpt-000000000030.pt", "ckpt-000000000020.pt"]
    state, newest = mgr.load_latest()
    assert state["step"] == 30 and newest.name.endswith("30.pt")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, caplog, damage):
    mgr = CheckpointManager(tmp_path, keep=3)
    mgr.save({"step": 1}, 1)
    newest = mgr.save({"step": 2}, 2)
    data = bytearray(newest.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    newest.write_bytes(bytes(data))
    (tmp_path / ".ckpt-000000000003.1.tmp").write_bytes(b"half a checkpoint")  # a crash during save
    with caplog.at_level(logging.WARNING, logger="edge_runtime.checkpoint"):
        state, path = CheckpointManager(tmp_path).load_latest()
    assert state == {"step": 1} and path.name.endswith("1.pt")
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert not list(tmp_path.glob(".ckpt-*.tmp")), "stale temp files are removed on start"


def test_all_checkpoints_damaged_is_a_clear_error(tmp_path):
    mgr = CheckpointManager(tmp_path)
    p = mgr.save({"x": 1}, 5)
    p.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="ckpt-000000000005.pt"):
        mgr.load_latest()
    assert CheckpointManager(tmp_path / "empty").load_latest() is None


def test_store_round_trip_is_bit_exact_across_reopen(tmp_path):
    rng = np.random.default_rng(0)
    store = SqliteStore(tmp_path / "s.db")
    samples = [_sample("uav-1", i, i % 3, rng) for i in range(5)]
    for s in samples:
        store.put(s.key, s, score=0.25 * s.seq)
    store.commit()
    store.close()
    again = SqliteStore(tmp_path / "s.db")
    assert sorted(again.keys()) == sorted(s.key for s in samples)
    for s in samples:
        got = again.get(s.key)
        assert (got.label, got.split, got.ts, got.device, got.seq) == (s.label, s.split, s.ts, s.device, s.seq)
        for name in s.tensors:
            assert got.tensors[name].dtype == s.tensors[name].dtype
            assert np.array_equal(got.tensors[name], s.tensors[name])
    assert {k: (lab, sc) for k, lab, sc, _ in again.items_meta()} == {s.key: (s.seq % 3, 0.25 * s.seq) for s in samples}


@pytest.mark.slow
def test_uncommitted_writes_are_lost_in_a_crash_committed_ones_kept(tmp_path):
    db = tmp_path / "s.db"
    code = textwrap.dedent(f"""
        import os, numpy as np
        from edge_runtime.node.ledger import Ledger
        from edge_runtime.learning.buffer.sqlite import SqliteStore
        from edge_runtime.core.sample import Sample
        s = SqliteStore({str(db)!r})
        def mk(i): return Sample({{"audio": np.ones((2, 13), np.float32), "video": np.ones((1, 1, 4, 4), np.float32)}}, 1, device="d", seq=i)
        s.put(("d", 0), mk(0)); Ledger(s).record_verdicts([("d", 0, "admitted")]); Ledger(s).set_next_seq("d", 1); s.commit()
        s.put(("d", 1), mk(1)); Ledger(s).record_verdicts([("d", 1, "admitted")]); Ledger(s).set_next_seq("d", 2)
        os._exit(0)  # crash before the second commit
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    store = SqliteStore(db)
    assert store.keys() == [("d", 0)]
    assert Ledger(store).verdict("d", 0) == "admitted" and Ledger(store).verdict("d", 1) is None
    assert Ledger(store).next_seqs() == {"d": 1}


def test_ledger_refuses_a_second_verdict_and_reader_sees_only_commits(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    reader = Ledger(store).reader()
    Ledger(store).record_verdicts([("a", 0, "trained"), ("a", 2, "skipped")])
    Ledger(store).set_next_seq("a", 1)
    assert reader.verdict("a", 0) is None  # not committed yet
    store.commit()
    assert reader.verdict("a", 0) == "trained"
    assert Ledger(store).decided_above_next_seq() == [("a", 2)]
    with pytest.raises(sqlite3.IntegrityError):
        Ledger(store).record_verdicts([("a", 0, "admitted")])
    reader.close()


def test_buffer_on_sqlite_restores_from_an_older_checkpoint_by_reconciling(tmp_path):
    rng = np.random.default_rng(1)
    cfg = BufferConfig(max_items=12, max_bytes=10**7, retention="class_balanced")
    store = SqliteStore(tmp_path / "s.db")
    buf = ReplayBuffer(cfg, seed=3, store=store)
    seq = 0
    for _ in range(40):
        buf.offer(_sample("u", seq, seq % 4, rng), 0.0)
        seq += 1
    store.commit()
    old_state = buf.state_dict()
    for _ in range(40):  # admissions and evictions after the checkpoint
        buf.offer(_sample("u", seq, seq % 4, rng), 0.0)
        seq += 1
        assert len(buf) <= 12
    store.commit()
    assert sorted(buf.keys()) == sorted(store.keys())
    store.close()
    fresh_store = SqliteStore(tmp_path / "s.db")
    restored = ReplayBuffer(cfg, seed=3, store=fresh_store)
    restored.load_state_dict(old_state)
    assert sorted(restored.keys()) == sorted(fresh_store.keys()) == sorted(buf.keys())
    assert restored.class_counts() == buf.class_counts()
    assert restored.nbytes == buf.nbytes
    assert len(restored.sample(5)) == 5
    with sqlite3.connect(tmp_path / "s.db") as db:
        evicted = {(d, s) for d, s in db.execute("SELECT device, seq FROM evictions")}
    admitted_ever = {("u", i) for i in range(seq)} & (set(old_state["keys"]) | evicted | set(buf.keys()))
    assert admitted_ever <= set(buf.keys()) | evicted, "every admitted item is stored or logged as evicted"
