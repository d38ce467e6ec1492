"""CheckpointManager on disk: real learner state round trip, file layout, crash/corruption fallback, rotation."""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.streams import stream
from edge_runtime.learning.buffer.sqlite import SqliteStore
from edge_runtime.learning.checkpoint import MAGIC, CheckpointError, CheckpointManager
from edge_runtime.core.config import Config
from edge_runtime.learning.learner import Learner

HEADER = len(MAGIC) + 32


@dataclass
class NotAllowed:
    """A type ``torch.load(weights_only=True)`` must refuse (it is no tensor / container / primitive)."""

    x: int = 1


def _feed(learner: Learner, samples: list, batch: int = 32) -> list[str]:
    verdicts: list[str] = []
    for i in range(0, len(samples), batch):
        verdicts += learner.observe(samples[i : i + batch])
    return verdicts


def _copy_db(src: Path, dst: Path) -> None:
    """Consistent copy of a committed SQLite (WAL) database, via the backup API."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


def _save_steps(mgr: CheckpointManager, steps: list[int]) -> list[Path]:
    return [mgr.save({"step": s, "w": torch.full((3,), float(s))}, s) for s in steps]


@pytest.mark.slow
def test_real_learner_state_round_trip_gives_identical_verdicts(tmp_path, synthetic):
    """The node's setup (learner over a SQLite store): save, load_latest, load_state_dict, same next verdicts."""
    samples = stream(synthetic, range(320))
    store_a = SqliteStore(tmp_path / "a.db")
    a = Learner(Config(), store=store_a)
    _feed(a, samples[:192])
    store_a.commit()
    assert a.stats.updates > 0 and len(a.buffer) > 0, "the state under test must not be trivial"

    mgr = CheckpointManager(tmp_path / "ckpt")
    path = mgr.save({"learner": a.state_dict(), "node": {"decided": 192}}, step=a.stats.samples_seen)
    _copy_db(tmp_path / "a.db", tmp_path / "b.db")  # the store as it was when the checkpoint was written

    loaded = CheckpointManager(tmp_path / "ckpt").load_latest()
    assert loaded is not None
    state, loaded_path = loaded
    assert loaded_path == path and path.name == "ckpt-000000000192.pt"
    assert state["node"] == {"decided": 192}
    b = Learner(Config(), store=SqliteStore(tmp_path / "b.db"))
    b.load_state_dict(state["learner"])
    assert sorted(b.buffer.keys()) == sorted(a.buffer.keys())

    for i in range(192, 320, 32):
        chunk = samples[i : i + 32]
        assert a.observe(chunk) == b.observe(chunk)
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert a.summary() == b.summary()


@pytest.mark.slow
def test_learner_with_in_memory_buffer_round_trips_through_a_weights_only_checkpoint(tmp_path, synthetic):
    """In-process users (benchmarks) keep samples in memory: those payloads must pass torch.load(weights_only=True)."""
    samples = stream(synthetic, range(256))
    a = Learner(Config())
    _feed(a, samples[:160])
    assert len(a.buffer) > 0
    mgr = CheckpointManager(tmp_path / "ckpt")
    mgr.save({"learner": a.state_dict()}, step=160)
    state, _ = CheckpointManager(tmp_path / "ckpt").load_latest()
    b = Learner(Config())
    b.load_state_dict(state["learner"])
    for key in a.buffer.keys():
        for name, t in a.buffer.store.get(key).tensors.items():
            assert np.array_equal(b.buffer.store.get(key).tensors[name], t), (key, name)
            assert isinstance(b.buffer.store.get(key).tensors[name], np.ndarray)
    for i in range(160, 256, 32):
        chunk = samples[i : i + 32]
        assert a.observe(chunk) == b.observe(chunk)


def test_file_is_magic_then_sha256_then_torch_payload(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": 7, "names": ["a", "b"]}
    path = CheckpointManager(tmp_path).save(state, 42)
    data = path.read_bytes()
    assert path.name == "ckpt-000000000042.pt"
    assert data[:8] == b"EDGECKP1"
    assert data[8:40] == hashlib.sha256(data[40:]).digest()
    payload = torch.load(io.BytesIO(data[40:]), weights_only=True)
    assert torch.equal(payload["w"], state["w"]) and payload["n"] == 7 and payload["names"] == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temp file is left behind"


DAMAGES = {
    "flip_payload_byte": lambda d: d[:-7] + bytes([d[-7] ^ 0x01]) + d[-6:],
    "flip_checksum_byte": lambda d: d[:9] + bytes([d[9] ^ 0x80]) + d[10:],
    "truncated_payload": lambda d: d[: (len(d) + HEADER) // 2],
    "truncated_header": lambda d: d[:20],
    "empty": lambda d: b"",
    "bad_magic": lambda d: b"EDGECKP0" + d[8:],
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_falls_back_to_previous_with_a_warning(tmp_path, caplog, damage):
    mgr = CheckpointManager(tmp_path, keep=3)
    older, newest = _save_steps(mgr, [100, 200])
    newest.write_bytes(DAMAGES[damage](newest.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="edge_runtime.checkpoint"):
        state, path = mgr.load_latest()
    assert path == older and state["step"] == 100 and torch.equal(state["w"], torch.full((3,), 100.0))
    warnings = [r for r in caplog.records if r.name == "edge_runtime.checkpoint" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert newest.name in message
    reason = "magic" if damage in ("truncated_header", "empty", "bad_magic") else "checksum"
    assert reason in message, message


def test_crash_during_save_leaves_a_temp_file_that_is_ignored_and_removed(tmp_path, caplog):
    mgr = CheckpointManager(tmp_path)
    (good,) = _save_steps(mgr, [7])
    # A save killed mid-write: the payload of a newer checkpoint, half written to the hidden temp name.
    full = io.BytesIO()
    torch.save({"step": 8}, full)
    partial = tmp_path / ".ckpt-000000000008.4242.tmp"
    partial.write_bytes(MAGIC + hashlib.sha256(full.getvalue()).digest() + full.getvalue()[:50])
    assert mgr.paths() == [good], "a temp file is never listed as a checkpoint"
    with caplog.at_level(logging.WARNING, logger="edge_runtime.checkpoint"):
        state, path = mgr.load_latest()
    assert path == good and state["step"] == 7
    assert not caplog.records, "an unfinished save is not a damaged checkpoint"
    restarted = CheckpointManager(tmp_path)  # a restart clears what the crash left
    assert not partial.exists()
    assert restarted.load_latest()[1] == good


def test_checksum_valid_file_with_a_disallowed_type_is_refused(tmp_path, caplog):
    """weights_only=True: a payload that would need arbitrary unpickling is not loaded."""
    mgr = CheckpointManager(tmp_path)
    (older,) = _save_steps(mgr, [1])
    mgr.save({"obj": NotAllowed()}, 2)
    with caplog.at_level(logging.WARNING, logger="edge_runtime.checkpoint"):
        state, path = mgr.load_latest()
    assert path == older and state["step"] == 1
    assert "cannot be loaded" in caplog.records[0].getMessage()


def test_all_damaged_raises_naming_every_file_and_the_way_out(tmp_path):
    mgr = CheckpointManager(tmp_path)
    p1, p2 = _save_steps(mgr, [1, 2])
    p1.write_bytes(p1.read_bytes()[:-1])
    p2.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError) as info:
        mgr.load_latest()
    text = str(info.value)
    assert f"{p1.name}: checksum" in text and f"{p2.name}: not an edge-runtime checkpoint" in text
    assert "aside" in text and str(tmp_path) in text


def test_no_checkpoint_at_all_is_none(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint name")
    (tmp_path / ".ckpt-000000000001.1.tmp").write_bytes(b"x")
    mgr = CheckpointManager(tmp_path / "sub" / "dir")
    assert (tmp_path / "sub" / "dir").is_dir() and mgr.load_latest() is None
    assert CheckpointManager(tmp_path).load_latest() is None


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_rotation_keeps_exactly_keep_newest_by_step(tmp_path, keep):
    mgr = CheckpointManager(tmp_path, keep=keep)
    steps = [5, 40, 10, 30, 20, 50]  # not in order: "newest" means highest step
    for n, step in enumerate(steps, start=1):
        _save_steps(mgr, [step])
        expected = sorted(steps[:n], reverse=True)[:keep]
        assert [int(p.name[5:17]) for p in mgr.paths()] == expected
        assert len(list(tmp_path.iterdir())) == min(n, keep), "only the kept checkpoints are on disk"
    state, path = mgr.load_latest()
    assert state["step"] == 50 and path == mgr.paths()[0]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    mgr = CheckpointManager(tmp_path, keep=3)
    mgr.save({"v": 1}, 3)
    mgr.save({"v": 2}, 3)
    assert [p.name for p in mgr.paths()] == ["ckpt-000000000003.pt"]
    assert mgr.load_latest()[0] == {"v": 2}


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, keep=0)
