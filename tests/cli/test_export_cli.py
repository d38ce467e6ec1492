"""``edge-node export`` says which checkpoint it used and what it is doing (issue 23, item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "export", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_describe_checkpoint_names_path_step_and_age(tmp_path):
    from edge_runtime.cli.export import describe_checkpoint

    path = tmp_path / "ckpt-000000007045.pt"
    path.write_bytes(b"x")
    os.utime(path, (1000.0, 1000.0))
    assert describe_checkpoint(path, now=1012.4) == f"{path} (step 7,045, written 12 s ago)"
    assert describe_checkpoint(path, now=1000.0 + 600) == f"{path} (step 7,045, written 10 min ago)"


@pytest.mark.slow
def test_export_names_its_checkpoint_and_prints_each_step(tmp_path):
    from edge_runtime.core.config import load_config
    from edge_runtime.learning.checkpoint import CheckpointManager
    from edge_runtime.learning.learner import Learner

    state = tmp_path / "edge-state"
    CheckpointManager(state / "checkpoints").save({"learner": Learner(load_config()).state_dict()}, 1234)
    r = _export("--state-dir", str(state), "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"loading checkpoint from {state} ..."
    assert lines[1].startswith(f"checkpoint: {state / 'checkpoints' / 'ckpt-000000001234.pt'} (step 1,234, written ")
    assert [line.split(" ")[0] for line in lines[2:5]] == ["tracing", "checking", "comparing"]
    assert lines[5].startswith(f"wrote {tmp_path / 'm.onnx'} (") and "from ckpt-000000001234.pt" in lines[5]
    assert len(lines) == 6 and (tmp_path / "m.onnx").stat().st_size > 0
