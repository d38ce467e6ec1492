"""Issue 23, item 1: a start refused for a configuration that does not fit the stored state changes nothing.

Before: ``edge-node run --set model.num_classes=6`` on a folder learned with 10 classes evicted the
stored samples of classes 6-9 (200 -> 120 items), moved history.csv aside, and only then exited 2 on
the checkpoint with a multi-line PyTorch error. Now each mismatch is one line naming the setting and
the stored value, exit 2, and every file of the folder is byte-for-byte what it was.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import zmq

from tests.support.nodeclient import Device, stream
from tests.support.nodeproc import ROOT, NodeProcess


SQLITE_FILES = {"state.db", "state.db-wal", "state.db-shm"}


def _folder_hashes(folder) -> dict[str, str]:
    """Every file under ``folder`` and its SHA-256, and the SQL dump of state.db.

    Not byte-compared: the lock file (it records who holds the folder) and SQLite's own files,
    whose bytes change when a connection opens and closes (the WAL is folded into the database and
    removed): for those the database's whole content is compared instead.
    """
    out = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock" and p.name not in SQLITE_FILES}
    db = sqlite3.connect(f"file:{folder / 'state.db'}?mode=ro", uri=True)
    try:
        out["state.db (SQL dump)"] = hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
    finally:
        db.close()
    return out


def _run(node: NodeProcess, *sets: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "edge_runtime.cli.main", "run", "--config", str(node.config_path)]
    for item in sets:
        argv += ["--set", item]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=str(ROOT),
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_a_start_that_does_not_fit_the_stored_state_is_one_line_and_changes_nothing(tmp_path):
    node = NodeProcess(tmp_path, {"node": {"frame_size": [16, 16], "history_every_s": 0.2}}).start()
    ctx = zmq.Context()
    try:
        dev = Device(ctx, node.endpoint, "uav-1")
        assert dev.hello()["type"] == "welcome"
        verdicts = stream(dev, range(60), audio=np.full((5, 13), 0.5, "<f4"))
        assert len(verdicts) == 60
        dev.close()
        assert node.stop() == 0, node.log()
    finally:
        node.kill()
        ctx.destroy(linger=0)
    with sqlite3.connect(node.state_dir / "state.db") as db:
        stored = db.execute("SELECT COUNT(*), MAX(label) FROM items").fetchone()
    assert stored[0] > 0 and stored[1] >= 6, stored  # classes 6..9 are stored: the case that used to be evicted
    before = _folder_hashes(node.state_dir)
    assert "history.csv" in before and any(name.startswith("checkpoints/") for name in before)

    cases = [
        (("model.num_classes=6",), "model.num_classes is 6 but"),
        (("model.audio_features=20",), "model.audio_features is 20 but"),
        (("node.frame_size=[32, 32]", "node.max_frame_size=32"), "node.frame_size is [32, 32] but"),
        (("model.embed_dim=32",), "was written for another model"),
    ]
    for sets, message in cases:
        refused = _run(node, *sets)
        assert refused.returncode == 2, (sets, refused.stderr[-2000:])
        lines = [line for line in refused.stderr.splitlines() if line.startswith("edge-node:")]
        assert len(lines) == 1 and message in lines[0], (sets, refused.stderr[-2000:])
        assert "Traceback" not in refused.stderr and "give a new node.state_dir" in lines[0]
        assert _folder_hashes(node.state_dir) == before, f"{sets} changed the state folder"

    node.start()  # the configuration it was written with still works, with everything it had
    try:
        assert node.stop() == 0, node.log()
    finally:
        node.kill()
    with sqlite3.connect(node.state_dir / "state.db") as db:
        assert db.execute("SELECT COUNT(*), MAX(label) FROM items").fetchone() == stored
