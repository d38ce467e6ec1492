"""``device-sim run --dataset cremad|ave --root DIR`` streams fixture folders end to end to a real node,
as features and as raw media (the node computes the same features)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sqlite3
import warnings
from pathlib import Path

import pytest

from device_sim.datasets import registry
from device_sim.datasets.media import MissingFilesWarning
from tests.support.media_fixtures import CREMAD_TRAIN_ROWS, build_ave_raw, build_cremad_preprocessed, build_cremad_raw
from tests.support.nodeproc import ROOT, NodeProcess


def _sim(endpoint: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "device_sim.cli", "run", "--endpoint", endpoint, "--no-progress", "--summary", str(out),
           "--devices", "2", "--scenario", "iid", *args]
    return subprocess.run(cmd, capture_output=True, env=env, cwd=str(ROOT), timeout=180)


def _ledger(state_dir: Path) -> list[str]:
    with sqlite3.connect(state_dir / "state.db") as db:
        return [v for (v,) in db.execute("SELECT verdict FROM verdicts")]


@pytest.mark.slow
@pytest.mark.parametrize("dataset,build,send", [
    ("cremad", build_cremad_preprocessed, "features"),
    ("cremad", build_cremad_raw, "raw"),
    ("ave", build_ave_raw, "raw"),
])
def test_real_layout_streams_end_to_end(tmp_path, dataset, build, send):
    root = build(tmp_path / dataset)
    node = NodeProcess(tmp_path, {"buffer": {"max_items": 4}}).start()
    try:
        out = tmp_path / "fleet.json"
        r = _sim(node.endpoint, out, "--dataset", dataset, "--root", str(root), "--send", send)
        assert r.returncode == 0, r.stderr.decode()
        assert node.stop() == 0
    finally:
        node.kill()
    totals = json.loads(out.read_text())["totals"]
    assert totals["complete"] and totals["decided"] == totals["samples"] > 0
    with warnings.catch_warnings():  # the fixtures list a clip with missing files (reported, tested elsewhere)
        warnings.simplefilter("ignore", MissingFilesWarning)
        expected = len(registry.build(dataset, root=str(root), split="train"))
    assert totals["samples"] == expected
    if build is build_cremad_preprocessed:
        assert expected == len(CREMAD_TRAIN_ROWS) == 5
    verdicts = _ledger(node.state_dir)
    assert len(verdicts) == totals["samples"]
    assert all(not v.startswith("invalid") for v in verdicts), verdicts  # raw media became valid features on the node


@pytest.mark.slow
def test_missing_root_and_dataset_listing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "device_sim.cli", "run", "--dataset", "cremad", "--no-progress"],
                       capture_output=True, env=env, cwd=str(ROOT), timeout=60)
    assert r.returncode == 2 and b"no --root given" in r.stderr
    root = build_cremad_preprocessed(tmp_path / "c")
    r = subprocess.run([sys.executable, "-m", "device_sim.cli", "datasets", "--root", str(root)],
                       capture_output=True, env=env, cwd=str(ROOT), timeout=60, text=True)
    assert r.returncode == 0
    lines = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines())
    assert lines["synthetic"].startswith("available")
    assert lines["cremad"].startswith("available") and "preprocessed" in lines["cremad"]
    assert lines["ave"].startswith("not available")
    r = subprocess.run([sys.executable, "-m", "device_sim.cli", "datasets"], capture_output=True, env=env, cwd=str(ROOT), timeout=60, text=True)
    assert "cremad: not available (no --root given)" in r.stdout
