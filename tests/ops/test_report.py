"""`edge-node report` on a finished demo's state_dir: real, non-blank PNGs and one HTML page that shows them
with the numbers; the history's arithmetic checked on a hand-written file."""

from __future__ import annotations

import pytest

import csv
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from edge_runtime.ops.history import columns, read_history, verdict_kinds
import math

from edge_runtime.ops.report import (PLOTS, TERMS, elapsed, interval_series, numbers, restarts, state_series,
                                      verdict_deltas, verdict_intervals, write_report)

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", *args], capture_output=True, text=True, env=ENV,
                          cwd=str(ROOT), timeout=timeout)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _ink(path: Path) -> tuple[float, int]:
    """(share of pixels that are not near-white, number of distinct colours) of a PNG."""
    img = Image.open(path)
    img.verify()  # a real PNG, not truncated
    rgb = np.asarray(Image.open(path).convert("RGB"))
    return float((rgb.min(axis=2) < 200).mean()), len(np.unique(rgb.reshape(-1, 3), axis=0))


@pytest.mark.slow
def test_report_of_a_finished_demo(tmp_path):
    demo = _cli("demo", "--samples", "300", "--devices", "2", "--test-samples", "50", "--no-progress", "--out", str(tmp_path))
    assert demo.returncode == 0, demo.stderr + demo.stdout
    state = tmp_path / "demo-state"
    demo_page = tmp_path / "report" / "index.html"
    assert demo_page.is_file() and str(demo_page) in demo.stdout  # the demo wrote (and printed) its own report
    assert json.loads((tmp_path / "report.json").read_text())["html_report"] == str(demo_page)

    out = tmp_path / "again"
    r = _cli("report", str(state), "--out", str(out))
    assert r.returncode == 0, r.stderr
    page = out / "index.html"
    assert str(page) in r.stdout
    for name in PLOTS:
        img = Image.open(out / name)
        assert img.format == "PNG" and img.width >= 400 and img.height >= 300
        ink, colours = _ink(out / name)
        least = 0.02 if name == "latency.png" else 0.03  # latency: a dot per interval with a batch, gaps between
        assert ink > least and colours > 50, f"{name} looks blank: {ink:.3f} inked, {colours} colours"
    parsed = _Page()
    parsed.feed(page.read_text())
    assert sorted(parsed.images) == sorted(PLOTS)
    text = " ".join(parsed.text)
    summary = json.loads((state / "summary.json").read_text())
    assert f"{summary['samples_seen']:,}" in text  # the final row is the node's final state
    assert f"{summary['prequential_accuracy']:.3f}" in text
    assert f"{summary['buffer_items']:,} items" in text
    rows = read_history(state)
    last = rows[-1]
    assert last["samples_learned"] == summary["samples_seen"] > 0
    kinds = verdict_kinds(summary["verdicts"])
    assert {k: int(last[k]) for k in kinds} == kinds
    assert {c: int(last[f"buffer_class_{c}"]) for c in summary["buffer_classes"]} == summary["buffer_classes"]


def _write(path: Path, rows: list[dict]) -> None:
    with open(path / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, columns(2))
        w.writeheader()
        for r in rows:
            w.writerow(r)


def test_history_arithmetic_on_a_hand_written_file(tmp_path):
    base = {"uptime_s": 1, "received": 0, "decided": 0, "updates": 1, "buffer_items": 2, "buffer_bytes": 10,
            "buffer_class_0": 1, "buffer_class_1": 1, "queue_depth": 0}
    rows = [
        {**base, "time": 100, "pid": 1},  # before the first batch: no learner values
        {**base, "time": 101, "pid": 1, "samples_learned": 10, "admitted": 4, "trained": 0, "skipped": 6, "eval": 0, "invalid": 0,
         "batches": 2, "update_mean_s": 0.010, "update_max_s": 0.012, "prequential_accuracy": 0.5},
        {**base, "time": 102, "pid": 1, "samples_learned": 30, "admitted": 6, "trained": 2, "skipped": 16, "eval": 4, "invalid": 2,
         "batches": 3, "update_mean_s": 0.020, "update_max_s": 0.050, "prequential_accuracy": 0.6},
        # a restart restored an older checkpoint: counters went back, no negative interval
        {**base, "time": 110, "pid": 2, "samples_learned": 25, "admitted": 5, "trained": 2, "skipped": 14, "eval": 3, "invalid": 1,
         "batches": 1, "update_mean_s": 0.030, "update_max_s": 0.030, "prequential_accuracy": 0.55},
        {**base, "time": 111, "pid": 2, "samples_learned": 35, "admitted": 9, "trained": 2, "skipped": 19, "eval": 4, "invalid": 1,
         "batches": 0, "update_mean_s": None, "update_max_s": None, "prequential_accuracy": 0.6},
    ]
    _write(tmp_path, rows)
    got = read_history(tmp_path)
    assert got[0]["samples_learned"] is None and got[1]["admitted"] == 4.0
    assert restarts(got) == [3]
    assert verdict_intervals(got) == [
        (30.0, {"admitted": 2, "trained": 2, "skipped": 10, "eval": 4, "invalid": 2}),
        (35.0, {"admitted": 4, "trained": 0, "skipped": 5, "eval": 1, "invalid": 0}),
    ]
    n = numbers(got)
    assert n["runs"] == 2 and n["samples_learned"] == 35 and n["span_s"] == 11
    assert n["verdicts"] == {"admitted": 9, "trained": 2, "skipped": 19, "eval": 4, "invalid": 1}
    assert n["verdict_share"]["admitted"] == 9 / 35
    assert n["batches"] == 6
    assert abs(n["latency_mean_s"] - (2 * 0.010 + 3 * 0.020 + 1 * 0.030) / 6) < 1e-12
    assert n["latency_max_s"] == 0.050
    assert n["latency_interval_median_s"] == 0.020
    assert n["buffer_classes"] == {"0": 1, "1": 1} and n["chance"] == 0.5
    assert verdict_kinds({"admitted": 3, "invalid:nan_or_inf": 2, "invalid:shape_audio": 1}) == \
        {"admitted": 3, "trained": 0, "skipped": 0, "eval": 0, "invalid": 3}


@pytest.mark.slow
def test_a_run_with_a_single_history_interval_still_plots_its_verdict_mix(tmp_path):
    """A short run (two history rows, one interval) must still show its verdict shares."""
    base = {"uptime_s": 1, "received": 0, "decided": 0, "updates": 1, "buffer_items": 2, "buffer_bytes": 10,
            "buffer_class_0": 1, "buffer_class_1": 1, "queue_depth": 0, "batches": 1, "update_mean_s": 0.01,
            "update_max_s": 0.01, "prequential_accuracy": 0.5}
    _write(tmp_path, [
        {**base, "time": 100, "pid": 1, "samples_learned": 32, "admitted": 14, "trained": 0, "skipped": 15, "eval": 3, "invalid": 0},
        {**base, "time": 101, "pid": 1, "samples_learned": 224, "admitted": 98, "trained": 0, "skipped": 105, "eval": 21, "invalid": 0},
    ])
    assert len(verdict_intervals(read_history(tmp_path))) == 1
    r = _cli("report", str(tmp_path), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    ink, colours = _ink(tmp_path / "out" / "verdicts.png")
    assert ink > 0.2, f"one interval drew {ink:.3f} of the plot"


def test_report_without_history_is_a_clear_error(tmp_path):
    r = _cli("report", str(tmp_path), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "history.csv does not exist" in r.stderr and "Traceback" not in r.stderr


def _rows_with_idle_intervals() -> list[dict]:
    base = {"uptime_s": 1, "received": 0, "decided": 0, "updates": 1, "buffer_items": 2, "buffer_bytes": 10,
            "buffer_class_0": 1, "buffer_class_1": 1, "queue_depth": 0, "invalid": 0, "trained": 0, "eval": 0}
    spec = [  # time, pid, batches, mean latency, samples learned, prequential accuracy
        (100, 1, None, None, None, None),  # before the first batch
        (101, 1, 2, 0.010, 32, 0.5),
        (102, 1, 0, None, 32, 0.5),  # idle: no batch
        (103, 1, 0, None, 32, 0.5),  # idle
        (104, 1, 1, 0.030, 64, 0.6),
        (110, 2, 1, 0.020, 96, 0.7),  # restarted (new pid)
        (111, 2, 3, 0.040, 192, 0.8),
    ]
    rows = []
    for t, pid, batches, mean, learned, acc in spec:
        row = {**base, "time": t, "pid": pid, "batches": batches, "update_mean_s": mean, "update_max_s": mean,
               "samples_learned": learned, "prequential_accuracy": acc}
        if learned is not None:
            row.update({"admitted": learned // 2, "skipped": learned - learned // 2})
        rows.append(row)
    return rows


def test_an_interval_without_a_batch_is_a_gap_in_the_latency_line(tmp_path):
    _write(tmp_path, _rows_with_idle_intervals())
    rows = read_history(tmp_path)
    xs, label = elapsed(rows)
    assert xs == [0, 1, 2, 3, 4, 10, 11] and label == "time since the first history row (s)"
    x, y = interval_series(rows, "update_mean_s", xs)
    # Direct: a value only where the row's interval learned a batch; NaN elsewhere; one NaN point before the restart.
    expected = [(0, None), (1, 0.010), (2, None), (3, None), (4, 0.030), (10, None), (10, 0.020), (11, 0.040)]
    assert x == [e[0] for e in expected]
    assert all((math.isnan(got) if want is None else got == want) for got, (_, want) in zip(y, expected))
    x, y = state_series(rows, "prequential_accuracy", xs)  # a cumulative value holds through idle intervals
    assert x == [0, 1, 2, 3, 4, 10, 10, 11]
    assert math.isnan(y[0]) and y[1:5] == [0.5, 0.5, 0.5, 0.6] and math.isnan(y[5]) and y[6:] == [0.7, 0.8]
    # Verdict bars span their own interval; the idle intervals have none.
    assert [(a, b) for a, b, _ in verdict_deltas(rows)] == [(3, 4), (4, 5), (5, 6)]
    assert verdict_intervals(rows)[0] == (64.0, {"admitted": 16, "trained": 0, "skipped": 16, "eval": 0, "invalid": 0})


def test_the_page_shows_the_runs_accuracy_cut_completeness_and_configuration(tmp_path):
    _write(tmp_path, _rows_with_idle_intervals())
    run = {"title": "edge-node demo report",
           "headline": ("held-out test accuracy, all 10 classes", "0.647", "on 1,000 held-out test samples never streamed"),
           "cut": "stopped at the 60 s limit (--seconds) after 2,528 of 6,000 samples; classes 6-9 never streamed",
           "complete": False,
           "tables": [("Completeness", [("samples streamed / total", "2,528 / 6,000")]),
                      ("Configuration", [("admission policy", "all (train_on all)"), ("buffer size", "200 items")])]}
    page = write_report(tmp_path, tmp_path / "out", run=run)
    parsed = _Page()
    parsed.feed(page.read_text())
    text = " ".join(" ".join(parsed.text).split())
    assert "held-out test accuracy, all 10 classes 0.647" in text
    assert "Stream cut: stopped at the 60 s limit (--seconds) after 2,528 of 6,000 samples; classes 6-9 never streamed" in text
    for words in ("Completeness samples streamed / total 2,528 / 6,000", "Configuration admission policy all (train_on all)"):
        assert words in text
    for term, meaning in TERMS.items():
        assert f"{term} {meaning}" in text
    assert "held-out accuracy" not in text, "the streamed eval is not called held-out"
    plain = write_report(tmp_path, tmp_path / "plain").read_text()  # edge-node report: no run block
    assert "Stream cut" not in plain and "edge-node learning report" in plain
