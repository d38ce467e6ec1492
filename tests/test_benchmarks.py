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


def test_fleet_scale_quick(tmp_path):
    out = tmp_path / "fs"
    stdout = _run("fleet_scale.py", out)
    cols, rows = _columns(out / "fleet_scale.csv")
    assert cols == ["devices", "repeat", "total_rate", "seconds", "samples_acked", "node_cpu_s", "cpu_ms_per_sample",
                    "node_rss_mib", "rss_base_mib", "rss_kib_per_device", "p50_ms", "p99_ms", "device_side_cpu_pct", "unanswered"]
    assert [int(r["devices"]) for r in rows] == [2, 5]
    for r in rows:
        acked, cpu = int(r["samples_acked"]), float(r["node_cpu_s"])
        assert acked > 0 and cpu > 0
        assert abs(float(r["cpu_ms_per_sample"]) - 1000 * cpu / acked) <= 1e-4 * float(r["cpu_ms_per_sample"]) + 1e-6
        per_device = 1024 * (float(r["node_rss_mib"]) - float(r["rss_base_mib"])) / int(r["devices"])
        assert abs(float(r["rss_kib_per_device"]) - per_device) <= 1e-3 * abs(per_device) + 0.01
        assert 0 < float(r["p50_ms"]) <= float(r["p99_ms"])
        assert int(r["unanswered"]) == 0
    assert "| devices |" in stdout
    _png_ok(out / "fleet_scale.png")


def test_federation_quick(tmp_path):
    out = tmp_path / "fed"
    _run("federation.py", out)
    cols, rows = _columns(out / "federation.csv")
    assert cols == ["split", "arm", "round", "node", "classes", "samples", "accuracy", "bytes_round", "seconds_round"]
    assert {(r["split"], r["arm"]) for r in rows} == {(s, a) for s in ("class", "iid") for a in ("isolated", "federated", "single")}
    fed = [r for r in rows if r["arm"] == "federated"]
    # after a merge every node holds the same global model: one accuracy per round and split
    for split in ("class", "iid"):
        for rnd in ("1", "2"):
            assert len({r["accuracy"] for r in fed if r["split"] == split and r["round"] == rnd}) == 1
    # a round moves each node's arrays up and the global arrays down: 6 copies of the same arrays
    assert len({r["bytes_round"] for r in fed}) == 1 and int(fed[0]["bytes_round"]) % 6 == 0
    # class split: each node streams its digits only, shared digits split between two nodes
    assert [r["classes"] for r in rows if r["split"] == "class" and r["arm"] == "isolated" and r["round"] == "1"] == ["0123", "3456", "6789"]
    _png_ok(out / "federation.png")


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
