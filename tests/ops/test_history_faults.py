"""Issue 24, G14: a history.csv cut by a crash mid-write, and durations across a wall clock set back.

(a) The writer starts a new line after a cut last row, and the reader skips a malformed row with a
    warning instead of refusing the file: the report keeps the rows before and after the cut.
(b) Uptime, checkpoint age and time since last seen come from ``time.monotonic()``; the timestamps
    shown to people stay wall-clock. The wall clock is "moved back" by passing explicit readings.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from edge_runtime.core.names import LOGGER_HISTORY
from edge_runtime.ops.history import FILENAME, HistoryWriter, columns, read_history
from edge_runtime.ops.metrics import NodeMetrics
from edge_runtime.ops.observe import NodeObserver
from edge_runtime.ops.snapshot import from_metrics, metric_values, with_ages
from tests.support.nodeproc import ROOT

DAY, YEAR = 86_400.0, 31_536_000.0


def _row(t: float, learned: int) -> dict:
    return {"time": t, "pid": 7, "uptime_s": t - 1000, "samples_learned": learned, "received": learned, "decided": learned,
            "prequential_accuracy": 0.5, "updates": learned // 8, "buffer_items": 4, "buffer_bytes": 400,
            "admitted": learned // 2, "trained": 0, "skipped": learned - learned // 2, "eval": 0, "invalid": 0,
            "batches": 1, "update_mean_s": 0.01, "update_max_s": 0.02, "queue_depth": 0,
            "buffer_class_0": 2, "buffer_class_1": 2}


def _cut_history(state_dir) -> None:
    """Rows at t=1001, 1002, a third cut mid-write (no newline), then a new writer (the restarted node) adds 1004, 1005."""
    w = HistoryWriter(state_dir, 2)
    w.append(_row(1001, 8))
    w.append(_row(1002, 16))
    path = state_dir / FILENAME
    whole = path.read_bytes()
    w.append(_row(1003, 24))
    path.write_bytes(path.read_bytes()[: len(whole) + 15])  # the crash: 15 bytes of the third row, no newline
    w = HistoryWriter(state_dir, 2)  # same columns: appended to, not moved aside
    w.append(_row(1004, 32))
    w.append(_row(1005, 40))


def test_a_cut_last_row_gets_a_new_line_and_the_rows_around_it_are_read(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER_HISTORY)
    _cut_history(tmp_path)
    assert any(r.levelno == logging.WARNING and "cut row" in r.getMessage() for r in caplog.records)
    lines = (tmp_path / FILENAME).read_text().splitlines()
    assert len(lines) == 1 + 5 and lines[0].split(",") == columns(2)
    assert lines[4].startswith("1004"), "the row after the cut starts a line of its own"
    caplog.clear()
    skipped: list = []
    rows = read_history(tmp_path, skipped)
    assert [r["time"] for r in rows] == [1001, 1002, 1004, 1005]
    assert [r["samples_learned"] for r in rows] == [8, 16, 32, 40]
    assert [line for line, _ in skipped] == [4]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "line 4" in warned[0] and str(tmp_path / FILENAME) in warned[0]


def test_reader_skips_rows_run_together_by_the_old_writer(tmp_path, caplog):
    """A file the writer before the fix left: a cut row and the next one on one line; and a row of the
    right width whose cells are not numbers."""
    caplog.set_level(logging.WARNING, logger=LOGGER_HISTORY)
    cols = columns(2)

    def line(t: float, learned: int) -> str:
        return ",".join(str(_row(t, learned).get(c, "")) for c in cols)

    merged = line(1002, 16)[:15] + line(1003, 24)  # the old writer appended 1003 right after the cut
    garbage = ",".join(["1004", "7", "x"] + [""] * (len(cols) - 3))
    (tmp_path / FILENAME).write_text("\r\n".join([",".join(cols), line(1001, 8), merged, garbage, line(1005, 40)]) + "\r\n",
                                     newline="")
    rows = read_history(tmp_path)
    assert [r["time"] for r in rows] == [1001, 1005]
    assert sum("skipping a malformed row" in r.getMessage() for r in caplog.records) == 2


def test_a_file_of_only_malformed_rows_is_still_a_clear_error(tmp_path):
    (tmp_path / FILENAME).write_text(",".join(columns(2)) + "\n1,2,3\n")
    with pytest.raises(ValueError, match="no readable row"):
        read_history(tmp_path)


@pytest.mark.slow
def test_edge_node_report_of_a_cut_history_includes_the_rows_before_and_after(tmp_path):
    _cut_history(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "report", str(tmp_path), "--out", str(tmp_path / "out")],
                       env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "line 4" in r.stderr and "Traceback" not in r.stderr
    page = (tmp_path / "out" / "index.html").read_text()
    assert "4 over" in page  # history rows: the two before the cut and the two after it
    assert "<th>samples learned</th><td>40</td>" in page
    assert "<th>malformed rows skipped</th><td>1</td>" in page
    assert all((tmp_path / "out" / p).stat().st_size > 0 for p in ("accuracy.png", "buffer.png", "verdicts.png", "latency.png"))


# ----------------------------------------------------------------------------------- (b) monotonic durations


def _observer(tmp_path, history: bool = False) -> NodeObserver:
    obs = NodeObserver(tmp_path, NodeMetrics(), num_classes=2, status_every_s=60.0, history_every_s=60.0 if history else None)
    obs.start({"pid": os.getpid(), "endpoint": "tcp://127.0.0.1:1"})
    return obs


def test_status_durations_stay_right_when_the_wall_clock_is_set_back(tmp_path):
    obs = _observer(tmp_path)
    try:
        obs.on_checkpoint(tmp_path / "ckpt-000000000001.pt")
        obs.arrivals["uav-0"] = time.monotonic()
        obs.on_batch([("uav-0", "admitted")], {"samples_seen": 1}, 0.01)
        started_at = obs.snapshot()["started_at"]
        back = time.time() - DAY  # the wall clock set back a day after the node started and checkpointed
        snap = obs.snapshot(wall=back)
    finally:
        obs.stop()
    assert snap["written_at"] == back and snap["started_at"] == started_at  # timestamps: wall-clock, as read
    assert 0 <= snap["uptime_s"] < 60
    assert 0 <= snap["checkpoint"]["age_s"] < 60
    assert 0 <= snap["devices"]["top"][0]["last_seen_age_s"] < 60
    # `edge-node status` reading this status.json later, the wall clock now a year behind the node's writing
    aged = with_ages(snap, now=back - YEAR)
    assert 0 <= aged["uptime_s"] < 60 and 0 <= aged["checkpoint"]["age_s"] < 60
    assert 0 <= aged["devices"]["top"][0]["last_seen_age_s"] < 60


def test_with_ages_advances_the_node_durations_on_the_monotonic_clock():
    from edge_runtime.ops.snapshot import boot_id

    mono = 5000.0
    snap = {"started_at": 2_000_000_000.0, "written_at": 2_000_000_100.0, "stopped_at": None, "uptime_s": 100.0,
            "checkpoint": {"written_at": 2_000_000_090.0, "age_s": 10.0},
            "devices": {"top": [{"device": "d", "last_seen": 2_000_000_099.0, "last_seen_age_s": 1.0}]},
            "clock": {"monotonic": mono, "boot_id": boot_id()}}
    # read 30 s later on the monotonic clock, the wall clock set back a day meanwhile
    got = with_ages({**snap, "checkpoint": dict(snap["checkpoint"]), "devices": {"top": [dict(snap["devices"]["top"][0])]}},
                    now=snap["written_at"] - DAY, mono=mono + 30)
    since = 30.0 if boot_id() else 0.0  # another boot (or no boot id): the wall clock, never negative
    assert got["uptime_s"] == 100 + since and got["checkpoint"]["age_s"] == 10 + since
    assert got["devices"]["top"][0]["last_seen_age_s"] == 1 + since
    stopped = with_ages({**snap, "stopped_at": snap["written_at"], "checkpoint": dict(snap["checkpoint"])},
                        now=snap["written_at"] - DAY, mono=mono + 30)
    assert stopped["uptime_s"] == 100  # a stopped node's uptime does not grow
    other_boot = with_ages({**snap, "clock": {"monotonic": mono, "boot_id": "another boot"}, "checkpoint": dict(snap["checkpoint"])},
                           now=snap["written_at"] - DAY, mono=mono + 30)
    assert other_boot["uptime_s"] == 100 and other_boot["checkpoint"]["age_s"] == 10


def test_wall_clock_only_durations_are_never_negative():
    """A /metrics scrape has only wall-clock times: past a clock set back they are unknown, not negative."""
    m = NodeMetrics()
    now = time.time()
    m.start_time.set(now)
    m.last_checkpoint.set(now - 5)
    snap = with_ages(from_metrics_of(m), now=now - YEAR)
    assert snap["uptime_s"] is None and snap["checkpoint"]["age_s"] is None
    snap = with_ages(from_metrics_of(m), now=now + 7)
    assert snap["uptime_s"] == pytest.approx(7) and snap["checkpoint"]["age_s"] == pytest.approx(12)


def from_metrics_of(m: NodeMetrics) -> dict:
    return from_metrics(metric_values(m.registry.collect()))


def test_history_uptime_is_monotonic_and_its_time_wall_clock(tmp_path):
    obs = _observer(tmp_path, history=True)
    try:
        back = time.time() - DAY
        obs._write_history(wall=back)
    finally:
        obs.stop()  # the final row, at the real wall time
    rows = read_history(tmp_path)
    assert rows[0]["time"] == round(back, 3)
    assert all(0 <= r["uptime_s"] < 60 for r in rows)
