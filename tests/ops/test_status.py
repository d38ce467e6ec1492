"""`edge-node status` against a real node with a streaming fleet: its numbers add up mid-stream and
equal the node's own summary (and the SQLite store) at the end."""

from __future__ import annotations

import pytest

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.support.nodeproc import ROOT, NodeProcess
from tests.support.wait import wait_until as _wait

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}


def _status(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "status", *args], capture_output=True, text=True,
                          env=ENV, cwd=str(ROOT), timeout=60)


def _status_json(*args: str) -> dict:
    out = _status(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _store(state_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(items per label, decided verdicts per device) straight from the node's SQLite file."""
    with sqlite3.connect(state_dir / "state.db") as db:
        classes = {str(label): n for label, n in db.execute("SELECT label, COUNT(*) FROM items GROUP BY label")}
        per_device = dict(db.execute("SELECT device, COUNT(*) FROM verdicts GROUP BY device"))
    return classes, per_device




def _status_file(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def _check_adds_up(snap: dict) -> None:
    s = snap["samples"]
    assert sum(s["verdicts"].values()) == s["decided"]
    assert s["received"] >= s["decided"]
    buf = snap["buffer"]
    assert sum(buf["classes"].values()) == buf["items"]


@pytest.mark.slow
def test_status_mid_stream_and_at_the_end_matches_the_node(tmp_path):
    overrides = {"node": {"metrics_port": 0, "status_every_s": 0.2, "history_every_s": 0.5}, "buffer": {"max_items": 60}}
    node = NodeProcess(tmp_path, overrides).start()
    url = f"http://127.0.0.1:{node.info['metrics_port']}/metrics"
    env = dict(ENV)
    sim = subprocess.Popen([sys.executable, "-m", "device_sim.cli", "run", "--endpoint", node.endpoint, "--devices", "3",
                            "--samples", "300", "--rate", "15", "--eval-every", "5", "--no-progress",
                            "--summary", str(tmp_path / "fleet.json")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
    try:
        _wait(lambda: (_status_file(node.state_dir) or {}).get("samples", {}).get("decided", 0) >= 30, what="30 samples decided")
        mid = _status_json("--state-dir", str(node.state_dir))
        assert mid["state"] == "running" and mid["pid"] == node.proc.pid and mid["endpoint"] == node.endpoint
        _check_adds_up(mid)
        if mid["samples"]["decided"] < 300:  # still streaming (a loaded machine may be slow to start the status process)
            assert mid["devices"]["connected"] == 3
        top = mid["devices"]["top"]
        assert {d["device"] for d in top} <= {"uav-0", "uav-1", "uav-2"}
        assert sum(d["samples"] for d in top) == mid["samples"]["decided"]  # all 3 devices are listed
        assert all(d["last_seen_age_s"] >= 0 for d in top)
        assert mid["buffer"]["items"] <= 60
        assert mid["rates"]["decided"] is not None and mid["rates"]["decided"] >= 0

        scraped = _status_json("--metrics", url, "--interval", "0.3")
        _check_adds_up(scraped)
        assert scraped["devices"]["top"] is None  # no series is labelled by device
        assert scraped["samples"]["decided"] >= mid["samples"]["decided"]  # counters only grow
        assert scraped["endpoint"] == node.endpoint and scraped["pid"] == node.proc.pid
        if scraped["samples"]["verdicts"].get("eval"):  # one series per modality once an eval sample was counted
            assert list(scraped["accuracy"]["modality_streamed_eval"]) == ["audio", "video"]

        text = _status("--state-dir", str(node.state_dir))
        assert text.returncode == 0, text.stderr
        assert "running" in text.stdout and "uav-0" in text.stdout and "replay buffer" in text.stdout
        assert "\x1b[" not in text.stdout  # plain text when not on a terminal

        _, err = sim.communicate(timeout=240)
        assert sim.returncode == 0, err.decode()
        fleet = json.loads((tmp_path / "fleet.json").read_text())["totals"]
        assert fleet["decided"] == 300
        _wait(lambda: (_status_file(node.state_dir) or {}).get("samples", {}).get("decided") == 300, what="the status file to catch up")
        live_end = _status_json("--state-dir", str(node.state_dir))
        classes, per_device = _store(node.state_dir)
        assert live_end["buffer"]["classes"] == classes  # the store's own histogram
        assert live_end["samples"]["verdicts"] == fleet["verdicts"]
        assert node.stop() == 0
    finally:
        if sim.poll() is None:
            sim.kill()
        node.kill()

    end = _status_json("--state-dir", str(node.state_dir))
    summary = node.summary()
    assert end["state"] == "stopped"
    _check_adds_up(end)
    assert end["samples"]["decided"] == summary["decided"] == 300
    assert end["samples"]["verdicts"] == summary["verdicts"]  # a fresh node: this run is all runs
    assert end["samples"]["learned"] == summary["samples_seen"]
    assert end["buffer"]["classes"] == {str(k): v for k, v in summary["buffer_classes"].items()} == _store(node.state_dir)[0]
    assert end["buffer"]["items"] == summary["buffer_items"] and end["buffer"]["bytes"] == summary["buffer_bytes"]
    assert end["accuracy"] == {"prequential": summary["prequential_accuracy"], "streamed_eval": summary["eval_accuracy"],
                               "modality_streamed_eval": summary["modality_eval_accuracy"]}
    assert list(summary["modality_eval_accuracy"]) == ["audio", "video"] and None not in summary["modality_eval_accuracy"].values()
    assert end["updates"] == summary["updates"]
    assert {d["device"]: d["samples"] for d in end["devices"]["top"]} == per_device == {f"uav-{k}": 100 for k in range(3)}
    assert end["devices"]["known"] == 3 and end["devices"]["connected"] == 0
    ck = end["checkpoint"]
    assert Path(ck["path"]).is_file() and ck["count"] >= 1 and ck["age_s"] >= 0
    assert end["queue"] == {"depth": 0, "bytes": 0} and end["credit_in_flight"] == 0


@pytest.mark.slow
def test_status_of_a_killed_node_says_stale_and_bad_sources_are_clear_errors(tmp_path):
    node = NodeProcess(tmp_path, {"node": {"status_every_s": 0.2}}).start()
    _wait(lambda: _status_file(node.state_dir), what="the first status file")
    node.kill()
    snap = _status_json("--state-dir", str(node.state_dir))
    assert snap["state"] == "stale"
    watched = _status("--state-dir", str(node.state_dir), "--watch", "--count", "2", "--interval", "0.1", "--json")
    assert watched.returncode == 0 and [json.loads(line)["state"] for line in watched.stdout.splitlines()] == ["stale", "stale"]
    missing = _status("--state-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no such folder" in missing.stderr and "Traceback" not in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no status.json" in _status("--state-dir", str(empty)).stderr
    dead = _status("--metrics", "http://127.0.0.1:9/metrics")
    assert dead.returncode == 2 and "cannot scrape" in dead.stderr and "node.metrics_port" in dead.stderr


def test_snapshot_from_a_registry_rates_and_federation_line():
    from prometheus_client import Gauge
    from rich.console import Console

    from edge_runtime.ops.metrics import NodeMetrics
    from edge_runtime.ops.snapshot import from_metrics, metric_values, with_rates
    from edge_runtime.ops.status import render

    m = NodeMetrics()
    m.received.inc(100)
    m.decided.labels("admitted").inc(30)
    m.decided.labels("skipped").inc(50)
    m.update_seconds.observe(0.25)
    m.update_seconds.observe(0.75)
    m.buffer_class_items.labels("3").set(4)
    m.buffer_class_items.labels("1").set(0)  # emptied class: not in the histogram
    fed = Gauge("edge_federation_round", "last federation round", registry=m.registry)
    prev = from_metrics(metric_values(m.registry.collect()))
    assert prev["samples"]["decided"] == 80 and prev["samples"]["verdicts"] == {"admitted": 30, "skipped": 50}
    assert prev["buffer"]["classes"] == {"3": 4}
    # gauges at 0 before any sample learned; no per-modality series before the first eval sample
    assert prev["accuracy"] == {"prequential": None, "streamed_eval": None, "modality_streamed_eval": None}
    assert prev["checkpoint"]["written_at"] is None and prev["model"]["version"] is None
    assert prev["federation"] == {"round": 0.0}
    m.received.inc(60)
    m.decided.labels("admitted").inc(40)
    m.update_seconds.observe(0.5)
    fed.set(3)
    cur = with_rates(from_metrics(metric_values(m.registry.collect())), prev, 2.0)
    assert cur["rates"]["received"] == 60 / 2.0
    assert cur["rates"]["decided"] == 40 / 2.0
    assert cur["rates"]["verdicts"] == {"admitted": 20.0, "skipped": 0.0}
    assert cur["rates"]["update_latency_s"] == 0.5  # one batch of 0.5 s in the interval
    assert with_rates(dict(cur), None, 0.0)["rates"]["received"] is None
    console = Console(width=120, record=True)
    console.print(render({**cur, "source": "test", "uptime_s": 5.0}, width=120))
    text = console.export_text()
    assert "round 3" in text and "no per-device table" in text and "20.0/s" in text


def test_per_device_tallies_stay_bounded(tmp_path, monkeypatch):
    import edge_runtime.ops.observe as observe
    from edge_runtime.ops.metrics import NodeMetrics

    monkeypatch.setattr(observe, "MAX_TRACKED", 8)
    obs = observe.NodeObserver(tmp_path, NodeMetrics(), num_classes=2, status_every_s=60.0, history_every_s=None)
    for k in range(20):  # device k last seen at time k; each decides k + 1 samples
        obs.arrivals[f"d{k}"] = float(k)
        obs.on_batch([(f"d{k}", "skipped")] * (k + 1), {"samples_seen": 0}, 0.01)
    snap = obs.snapshot()
    tracked = {d["device"]: d["samples"] for d in snap["devices"]["top"]}
    assert len(tracked) <= 8 and len(obs.arrivals) <= 8
    assert "d19" in tracked and tracked["d19"] == 20 and "d0" not in tracked  # the least recently seen went first
    assert snap["samples"]["decided"] == sum(range(1, 21))  # totals are not forgotten
