"""Each benchmark's --quick run: exits 0, writes the CSV columns it documents, and real non-empty PNGs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, out: Path, *extra: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, f"benchmarks/{script}", "--quick", "--out", str(out), *extra],
                       capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _png_ok(path: Path) -> None:
    assert path.stat().st_size > 1000, path
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
        assert len(np.unique(np.asarray(im.convert("L")))) > 10  # not a blank canvas


def _columns(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_buffer_sweep_quick_and_resume(tmp_path):
    out = tmp_path / "bs"
    _run("buffer_sweep.py", out)
    cols, rows = _columns(out / "results.csv")
    for c in ("dataset", "scenario", "policy", "buffer_items", "buffer_bytes", "seed", "final_accuracy",
              "average_incremental_accuracy", "forgetting", "audio_only_accuracy", "visual_only_accuracy",
              "prequential_accuracy", "samples_seen", "updates", "seconds"):
        assert c in cols
    assert len(rows) == 8 and {r["policy"] for r in rows} == {"reservoir", "mbs"}
    for r in rows:
        assert 0 <= float(r["final_accuracy"]) <= 1 and int(r["samples_seen"]) == 960
        assert int(r["buffer_bytes"]) > 0
    for name in ("accuracy_vs_buffer.png", "unimodal_vs_buffer.png", "accuracy_vs_samples.png"):
        _png_ok(out / name)
    again = _run("buffer_sweep.py", out)
    assert "8 already in" in again and "0 to do" in again  # resumable: nothing is run twice
    assert len(_columns(out / "results.csv")[1]) == 8


def test_ratio_sweep_quick(tmp_path):
    out = tmp_path / "rs"
    stdout = _run("ratio_sweep.py", out)
    cols, rows = _columns(out / "results.csv")
    assert cols == ["seed", "pretrain_epochs", "strategy", "keep_ratio", "kept", "accuracy", "audio_accuracy", "video_accuracy"]
    assert {r["strategy"] for r in rows} == {"el2n", "grand", "mbs", "random", "base"}
    assert len(rows) == 1 + 2 + 3 * 2 * 2
    wcols, wins = _columns(out / "wins.csv")
    assert wcols[:3] == ["strategy", "robustness_score", "efficiency_score"]
    assert sum(int(w["cells_won"]) for w in wins) >= 4  # every (R, ratio) cell has a winner (ties count for each)
    _png_ok(out / "accuracy_vs_ratio.png")
    assert "robustness" in stdout


def test_throughput_quick(tmp_path):
    out = tmp_path / "tp"
    _run("throughput.py", out)
    cols, rows = _columns(out / "throughput.csv")
    assert cols == ["metric", "value", "unit"]
    metrics = {r["metric"]: float(r["value"]) for r in rows}
    assert metrics["ingest ratio node/raw"] > 0 and metrics["learner ratio observe/plain"] > 0
    assert any(m.startswith("policy mbs") for m in metrics)
    _png_ok(out / "throughput.png")


def test_ingest_quick_interleaves_and_reports_median(tmp_path):
    out = tmp_path / "ing"
    stdout = _run("ingest.py", out)
    assert stdout.count("pair ") == 2 and "median" in stdout
    cols, rows = _columns(out / "ingest.csv")
    assert cols == ["measure", "samples", "value"]
    by = {}
    for r in rows:
        by.setdefault(r["measure"], []).append(float(r["value"]))
    assert len(by["raw_samples_per_s"]) == len(by["node_samples_per_s"]) == len(by["ratio_node_raw"]) == 2
    for raw, node, ratio in zip(by["raw_samples_per_s"], by["node_samples_per_s"], by["ratio_node_raw"]):
        assert abs(ratio - node / raw) < 1e-3
    _png_ok(out / "ingest.png")


def test_soak_quick_ledger_stays_within_retention(tmp_path):
    out = tmp_path / "soak"
    stdout = _run("soak.py", out)
    assert "state.db" in stdout
    cols, rows = _columns(out / "soak.csv")
    assert cols == ["decided", "state_db_mib", "verdict_rows", "rss_mib", "samples_per_s"]
    assert int(rows[-1]["decided"]) == 12_000
    # --quick: 2 devices, node.ledger_retention 1000 each; a batch (256) may not be compacted yet
    assert all(int(r["verdict_rows"]) <= 2 * (1000 + 256) for r in rows)
