"""Node and device-sim as real processes on loopback: end to end, crash + resume, backpressure."""

from __future__ import annotations

import pytest

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.support.nodeproc import ROOT, NodeProcess


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_sim(endpoint: str, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "device_sim.cli", "run", "--endpoint", endpoint, "--no-progress", "--summary", str(out), *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))


def _ledger(state_dir: Path) -> dict[tuple[str, int], str]:
    with sqlite3.connect(state_dir / "state.db") as db:
        return {(d, s): v for d, s, v in db.execute("SELECT device, seq, verdict FROM verdicts")}


def _items_and_evictions(state_dir: Path) -> tuple[set, set]:
    with sqlite3.connect(state_dir / "state.db") as db:
        items = {(d, s) for d, s in db.execute("SELECT device, seq FROM items")}
        evicted = {(d, s) for d, s in db.execute("SELECT device, seq FROM evictions")}
    return items, evicted


@pytest.mark.slow
def test_four_devices_every_sample_exactly_one_verdict(tmp_path):
    node = NodeProcess(tmp_path).start()
    try:
        out = tmp_path / "fleet.json"
        sim = _device_sim(node.endpoint, out, "--devices", "4", "--samples", "600", "--eval-every", "5")
        _, err = sim.communicate(timeout=240)
        assert sim.returncode == 0, err.decode()
        assert node.stop() == 0
    finally:
        node.kill()
    fleet = json.loads(out.read_text())
    totals = fleet["totals"]
    assert totals["samples"] == 600 and totals["decided"] == 600 and totals["complete"]
    assert totals["ack_conflicts"] == 0
    assert sum(d["acked"] for d in fleet["devices"]) == totals["acked"] == 600
    ledger = _ledger(node.state_dir)
    assert len(ledger) == 600
    assert {d for d, _ in ledger} == {f"uav-{k}" for k in range(4)}
    for k in range(4):  # each device's seqs are exactly 0..149
        assert sorted(s for d, s in ledger if d == f"uav-{k}") == list(range(150))
    node_counts: dict[str, int] = {}
    for v in ledger.values():
        node_counts[v] = node_counts.get(v, 0) + 1
    assert node_counts == totals["verdicts"]
    assert node_counts["eval"] == 120
    summary = node.summary()
    assert summary["decided"] == 600 and sum(summary["verdicts"].values()) == 600
    items, evicted = _items_and_evictions(node.state_dir)
    admitted = {k for k, v in ledger.items() if v == "admitted"}
    assert items <= admitted and admitted <= items | evicted
    assert summary["buffer_items"] == len(items)


@pytest.mark.slow
def test_sigkill_mid_stream_then_resume_loses_nothing(tmp_path):
    port = _free_port()
    overrides = {"node": {"bind": f"tcp://127.0.0.1:{port}", "checkpoint_every_s": 0.5}, "buffer": {"max_items": 60}}
    node = NodeProcess(tmp_path, overrides).start()
    out = tmp_path / "fleet.json"
    sim = _device_sim(node.endpoint, out, "--devices", "3", "--samples", "900", "--rate", "60", "--resend-timeout", "0.5")
    try:
        deadline = time.monotonic() + 120
        while len(_ledger(node.state_dir)) < 300:  # well into the stream, after a few checkpoints
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        before = _ledger(node.state_dir)  # committed verdicts: a superset of what was acked before the kill
        node.kill()
        time.sleep(1.0)  # devices keep resending into the void
        node = NodeProcess(tmp_path, overrides).start()
        _, err = sim.communicate(timeout=240)
        assert sim.returncode == 0, err.decode()
        assert node.stop() == 0
    finally:
        sim.kill()
        node.kill()
    fleet = json.loads(out.read_text())
    totals = fleet["totals"]
    assert totals["complete"] and totals["decided"] == 900
    assert totals["ack_conflicts"] == 0, "a resent seq must get its first verdict again"
    after = _ledger(node.state_dir)
    assert len(after) == 900  # one row per (device, seq): the primary key forbids a second decision
    assert all(after[k] == v for k, v in before.items()), "no decision changed across the crash"
    items, evicted = _items_and_evictions(node.state_dir)
    admitted_before = {k for k, v in before.items() if v == "admitted"}
    assert admitted_before <= items | evicted, "an admitted sample vanished without a logged eviction"
    assert node.summary()["buffer_items"] == len(items)
    assert "restored checkpoint" in node.log()


@pytest.mark.slow
def test_slow_learner_backpressure_bounded_and_nothing_dropped(tmp_path):
    # a deliberately slow learner (many replay steps per batch), a tiny queue and credit, fast devices
    overrides = {"node": {"queue_max": 8, "credit": 4, "batch_size": 8, "metrics_port": 0},
                 "training": {"replay_steps": 24}}
    node = NodeProcess(tmp_path, overrides).start()
    out = tmp_path / "fleet.json"
    sim = _device_sim(node.endpoint, out, "--devices", "4", "--samples", "240", "--window", "64", "--resend-timeout", "1.0")
    depth_seen, inflight_seen = [], []
    try:
        url = f"http://127.0.0.1:{node.info['metrics_port']}/metrics"
        while sim.poll() is None:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            for line in text.splitlines():
                if line.startswith("edge_queue_depth "):
                    depth_seen.append(float(line.split()[1]))
                if line.startswith("edge_credit_in_flight "):
                    inflight_seen.append(float(line.split()[1]))
            time.sleep(0.1)
        _, err = sim.communicate(timeout=10)
        assert sim.returncode == 0, err.decode()
        assert node.stop() == 0
    finally:
        sim.kill()
        node.kill()
    assert depth_seen and max(depth_seen) <= 8
    assert max(inflight_seen) <= 4 * 4
    fleet = json.loads(out.read_text())
    totals = fleet["totals"]
    assert totals["complete"] and totals["decided"] == 240 and totals["ack_conflicts"] == 0
    assert max(depth_seen) > 0, "the queue was never used: the test did not exercise backpressure"
    assert len(_ledger(node.state_dir)) == 240
