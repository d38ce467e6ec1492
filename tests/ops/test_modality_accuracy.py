"""Each modality's own head's streamed eval accuracy, by name, in every operator view: the Prometheus series
``edge_modality_eval_accuracy{modality}``, ``status.json`` and ``edge-node status`` (screen and ``--json``, from the
state folder and from ``/metrics``), ``history.csv`` and ``edge-node report``; fed a learner summary of two named
modalities (``accel``, ``gyro``) that are not the default audio/video."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import generate_latest
from rich.console import Console

from edge_runtime.ops.history import FILENAME, columns, read_history
from edge_runtime.ops.metrics import NodeMetrics
from edge_runtime.ops.observe import NodeObserver
from edge_runtime.ops.report import numbers, write_report
from edge_runtime.ops.snapshot import from_metrics, metric_values, parse_metrics_text, read_state_dir
from edge_runtime.ops.status import render

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
MODALITIES = ("accel", "gyro")
HEADS = {"accel": 0.712, "gyro": 0.601}


def _summary(heads: dict[str, float | None]) -> dict:
    """A learner summary (Learner.summary()'s keys) after 40 samples, 10 of them eval."""
    return {"samples_seen": 40, "updates": 3, "prequential_accuracy": 0.5, "eval_accuracy": 0.8, "modality_eval_accuracy": heads,
            "verdicts": {"admitted": 20, "skipped": 10, "eval": 10}, "buffer_items": 20, "buffer_bytes": 1000,
            "buffer_classes": {0: 10, 1: 10}, "seen_classes": 2}


def _text(snap: dict) -> str:
    console = Console(width=120, record=True)
    console.print(render({**snap, "source": "test", "uptime_s": 5.0}, width=120))
    return console.export_text()


def _row(text: str, label: str) -> str:
    """The screen's line that holds ``label`` (one table cell: the label, the value, its note)."""
    lines = [ln for ln in text.splitlines() if label in ln]
    assert len(lines) == 1, (label, text)
    return lines[0]


def test_metrics_view_has_a_series_per_modality_and_status_shows_each_head():
    m = NodeMetrics()
    m.decided.labels("eval").inc(10)
    m.samples_learned.set(40)
    m.prequential_accuracy.set(0.5)
    m.eval_accuracy.set(0.8)
    assert from_metrics(metric_values(m.registry.collect()))["accuracy"]["modality_streamed_eval"] is None  # no series yet
    for name, acc in HEADS.items():  # as the worker sets them from the learner summary
        m.modality_eval_accuracy.labels(name).set(acc)
    page = generate_latest(m.registry).decode()
    assert 'edge_modality_eval_accuracy{modality="accel"} 0.712' in page
    assert 'edge_modality_eval_accuracy{modality="gyro"} 0.601' in page
    snap = from_metrics(parse_metrics_text(page))  # a scrape of /metrics, as `edge-node status --metrics` reads it
    assert snap["accuracy"] == {"prequential": 0.5, "streamed_eval": 0.8, "modality_streamed_eval": HEADS}
    assert list(snap["accuracy"]["modality_streamed_eval"]) == ["accel", "gyro"]  # the order they were set in
    text = _text(snap)
    assert "71.2%" in _row(text, "accel head") and "accel alone" in _row(text, "accel head")
    assert "60.1%" in _row(text, "gyro head")
    lines = text.splitlines()
    at = {label: next(i for i, ln in enumerate(lines) if label in ln) for label in ("streamed eval acc", "accel head", "gyro head")}
    assert at["streamed eval acc"] < at["accel head"] < at["gyro head"]  # under the fused streamed eval accuracy, in order


def test_worker_sets_one_gauge_per_modality_once_it_has_a_value():
    from types import SimpleNamespace

    from edge_runtime.node.worker import LearnerWorker

    seen: list = []
    m = NodeMetrics()
    fake = SimpleNamespace(metrics=m, learner=SimpleNamespace(summary=lambda: _summary({"accel": 0.25, "gyro": None})),
                           observer=SimpleNamespace(on_batch=lambda *a: seen.append(a)))
    LearnerWorker._observe_metrics(fake, [], [], 0.01)  # type: ignore[arg-type]
    values = metric_values(m.registry.collect())
    assert values["edge_modality_eval_accuracy"] == [({"modality": "accel"}, 0.25)]  # gyro: no eval sample counted yet
    assert seen


def test_status_file_history_report_and_status_cli_show_each_modality_by_name(tmp_path):
    obs = NodeObserver(tmp_path, NodeMetrics(), num_classes=2, status_every_s=60.0, history_every_s=60.0, modalities=MODALITIES)
    obs.start({"pid": os.getpid(), "endpoint": "tcp://127.0.0.1:1"})
    try:
        obs.on_batch([("imu-0", "eval")] * 10, _summary({"accel": None, "gyro": None}), 0.01)
        obs._write_history()  # a row before any eval sample was counted
        obs.on_batch([("imu-0", "admitted")] * 30, _summary(HEADS), 0.01)
    finally:
        obs.stop()  # the final status.json and history row

    status = json.loads((tmp_path / "status.json").read_text())
    assert status["accuracy"] == {"prequential": 0.5, "streamed_eval": 0.8, "modality_streamed_eval": HEADS}
    snap = read_state_dir(tmp_path)
    assert snap["accuracy"]["modality_streamed_eval"] == HEADS
    text = _text(snap)
    assert "71.2%" in _row(text, "accel head") and "60.1%" in _row(text, "gyro head")

    with open(tmp_path / FILENAME, newline="") as f:
        header = next(csv.reader(f))
    assert header == columns(2, MODALITIES) and header[-2:] == ["modality_eval_accuracy_accel", "modality_eval_accuracy_gyro"]
    rows = read_history(tmp_path)
    assert [(r["modality_eval_accuracy_accel"], r["modality_eval_accuracy_gyro"]) for r in rows] == [(None, None), (0.712, 0.601)]
    assert numbers(rows)["modality_eval_accuracy"] == HEADS
    page = write_report(tmp_path, tmp_path / "report").read_text()
    assert "<th>streamed eval accuracy, accel head</th><td>0.712</td>" in page
    assert "<th>streamed eval accuracy, gyro head</th><td>0.601</td>" in page

    out = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "status", "--state-dir", str(tmp_path), "--json"],
                         capture_output=True, text=True, env=ENV, cwd=str(ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accuracy"]["modality_streamed_eval"] == HEADS


def test_views_of_a_state_folder_without_the_per_modality_numbers(tmp_path):
    """summary.json only (a node without status.json), and a history written before the modality columns."""
    (tmp_path / "summary.json").write_text(json.dumps({**_summary(HEADS), "decided": 40}))
    snap = read_state_dir(tmp_path)
    assert snap["state"] == "unknown" and snap["accuracy"]["modality_streamed_eval"] == HEADS
    (tmp_path / "summary.json").write_text(json.dumps({"samples_seen": 40, "prequential_accuracy": 0.5, "eval_accuracy": 0.8}))
    older = read_state_dir(tmp_path)
    assert older["accuracy"]["modality_streamed_eval"] is None
    assert "head" not in _text(older)  # no per-modality rows, no error
    with open(tmp_path / FILENAME, "w", newline="") as f:
        w = csv.DictWriter(f, columns(2))  # an older history: no modality columns
        w.writeheader()
        w.writerow({"time": 1, "pid": 1, "samples_learned": 4, "eval_accuracy": 0.5})
    n = numbers(read_history(tmp_path))
    assert n["modality_eval_accuracy"] == {}
    page = write_report(tmp_path, tmp_path / "report").read_text()
    assert "head</th>" not in page
