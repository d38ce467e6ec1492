"""``edge-node state reset``: changing a node's class count or model on purpose is an explicit command
(issue 23, item 8). The folder is moved aside to ``DIR.bak-YYYYmmdd-HHMMSS``, never deleted, and never
while a node holds its lock.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq

from edge_runtime.node.startup import StartupError
from edge_runtime.node.state_reset import backup_path, reset_state_dir
from tests.support.nodeclient import Device, stream
from tests.support.nodeproc import ROOT, NodeProcess


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _state_folder(path: Path) -> Path:
    (path / "checkpoints").mkdir(parents=True)
    (path / "checkpoints" / "ckpt-000000000100.pt").write_bytes(b"weights")
    (path / "state.db").write_bytes(b"db")
    (path / "history.csv").write_text("time\n1\n")
    return path


def _reset(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "state", "reset", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)


def test_reset_moves_the_folder_to_a_dated_backup_and_deletes_nothing(tmp_path):
    state = _state_folder(tmp_path / "edge-state")
    before = _hashes(state)
    at = time.mktime((2026, 3, 1, 9, 5, 7, 0, 0, -1))
    backup = reset_state_dir(state, now=at)
    assert backup == tmp_path / "edge-state.bak-20260301-090507"
    assert not state.exists(), "the original path is free for a fresh start"
    assert _hashes(backup) == before, "the backup holds every file, unchanged"
    again = reset_state_dir(_state_folder(state), now=at)  # a second reset within the same second
    assert again == tmp_path / "edge-state.bak-20260301-090507-2" and _hashes(backup) == before


def test_reset_refuses_a_missing_folder_and_one_that_is_not_a_state_folder(tmp_path):
    with pytest.raises(StartupError, match="no such folder; nothing to reset"):
        reset_state_dir(tmp_path / "nowhere")
    home_like = tmp_path / "documents"
    (home_like / "notes").mkdir(parents=True)
    with pytest.raises(StartupError, match="does not look like a node's state folder"):
        reset_state_dir(home_like)
    assert (home_like / "notes").is_dir() and not list(tmp_path.glob("documents.bak-*"))
    assert backup_path(home_like, now=0).name.startswith("documents.bak-19700101-")


def test_without_a_terminal_the_command_needs_yes(tmp_path):
    state = _state_folder(tmp_path / "edge-state")
    asked = _reset("--state-dir", str(state))
    assert asked.returncode == 2 and "add --yes" in asked.stderr and len(asked.stderr.splitlines()) == 1
    assert state.is_dir()
    done = _reset("--state-dir", str(state), "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"moved {state} to {tmp_path}/edge-state.bak-") and not state.exists()


@pytest.mark.slow
def test_a_class_count_change_is_refused_then_done_with_reset_never_while_the_node_runs(tmp_path):
    """A real node: its lock refuses the reset; stopped, the refusal of 6 classes points at the reset,
    the reset moves the folder aside (backup intact) and the node starts fresh with 6 classes."""
    node = NodeProcess(tmp_path).start()
    ctx = zmq.Context()
    try:
        dev = Device(ctx, node.endpoint, "uav-1")
        assert dev.hello()["type"] == "welcome"
        assert len(stream(dev, range(40))) == 40  # labels 0..9
        dev.close()
        held = _reset("--state-dir", str(node.state_dir), "--yes")
        assert held.returncode == 2, held.stderr
        assert f"in use by a running edge-node (pid {node.proc.pid}" in held.stderr and "stop it first" in held.stderr
        assert node.state_dir.is_dir() and not list(tmp_path.glob("node-state.bak-*"))
        assert node.stop() == 0, node.log()
    finally:
        node.kill()
        ctx.destroy(linger=0)
    assert (node.state_dir / "state.db").is_file(), "the refused reset moved nothing"

    refused = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "run", "--config", str(node.config_path),
                              "--set", "model.num_classes=6"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert refused.returncode == 2
    assert f"edge-node state reset --state-dir {node.state_dir}" in refused.stderr, refused.stderr[-2000:]

    kept = _hashes(node.state_dir)
    done = _reset("--state-dir", str(node.state_dir), "--yes")
    assert done.returncode == 0, done.stderr
    (backup,) = tmp_path.glob("node-state.bak-*")
    assert not node.state_dir.exists() and _hashes(backup) == kept
    assert list((backup / "checkpoints").glob("ckpt-*.pt")) and (backup / "state.db").is_file()

    fresh = NodeProcess(tmp_path, {"model": {"num_classes": 6}}).start()  # the same folder path, now fresh
    try:
        assert fresh.stop() == 0, fresh.log()
    finally:
        fresh.kill()
    assert fresh.summary()["samples_seen"] == 0
