"""The command lines as a user runs them: help, config errors, and a short demo run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_help_explains_every_subcommand():
    node = _run("-m", "edge_runtime.cli", "--help")
    assert node.returncode == 0
    for word in ("run", "demo", "keys", "config"):
        assert word in node.stdout
    sim = _run("-m", "device_sim.cli", "--help")
    assert sim.returncode == 0
    for word in ("datasets", "inspect", "run"):
        assert word in sim.stdout


def test_config_error_names_key_and_exits_2():
    r = _run("-m", "edge_runtime.cli", "config", "--set", "selection.policy=mbs", "--set", "selection.keep_ratio=2")
    assert r.returncode == 2
    assert "selection.keep_ratio" in r.stderr
    assert "Traceback" not in r.stderr


def test_parser_and_keys_do_not_import_torch(tmp_path):
    """Building ``edge-node``'s parser (export's included) and running ``keys`` need no torch: quick to start."""
    code = ("import sys; from edge_runtime.cli import main; "
            f"rc = main(['keys', {str(tmp_path / 'certs')!r}]); "
            "print('torch-loaded' if 'torch' in sys.modules else 'torch-free', rc)")
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "torch-free 0"
    assert (tmp_path / "certs" / "server.key_secret").is_file()


def test_config_prints_resolved_yaml():
    r = _run("-m", "edge_runtime.cli", "config", "--config", "configs/default.yaml", "--set", "buffer.max_items=77")
    assert r.returncode == 0, r.stderr
    assert "max_items: 77" in r.stdout


def test_demo_runs_node_and_devices_and_report_adds_up(tmp_path):
    r = _run("-m", "edge_runtime.cli", "demo", "--samples", "400", "--devices", "2", "--test-samples", "100",
             "--no-progress", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["samples_sent"] == report["samples_acked"] == 400 and report["stream_complete"]
    assert sum(report["verdicts"].values()) == 400
    assert report["device_verdicts"] == report["verdicts"], "what devices were told must equal what the node decided"
    assert report["verdicts"]["eval"] == 40  # every 10th sample of each device
    assert 0 < report["buffer_items"] <= report["verdicts"].get("admitted", 0)
    assert 0.0 <= report["held_out_accuracy"] <= 1.0
    assert report["updates"] > 0 and report["wall_seconds"] > 0
    assert "demo summary" in r.stdout
    from edge_runtime.config import load_config

    defaults = load_config(None)  # the demo says which policies it ran: the built-in defaults here
    assert f"admission {defaults.selection.policy} (" in r.stdout and f"retention {defaults.buffer.retention} (" in r.stdout
    assert report["policies"].startswith(f"admission {defaults.selection.policy} (")


def test_device_sim_lists_and_inspects_synthetic():
    r = _run("-m", "device_sim.cli", "datasets")
    assert r.returncode == 0 and "synthetic" in r.stdout
    r = _run("-m", "device_sim.cli", "inspect", "synthetic", "-n", "50")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["tensors"]["audio"]["shape"][1] == 13
    assert sum(info["labels"].values()) == 50


def test_demo_stopped_by_seconds_waits_for_every_verdict(tmp_path):
    """--seconds stops sending; the devices then wait for what is in flight, so every sample sent is acked."""
    r = _run("-m", "edge_runtime.cli", "demo", "--seconds", "5", "--samples", "50000", "--devices", "2",
             "--test-samples", "50", "--no-progress", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["stream_complete"], "the 5 s deadline must come before the 50,000-sample stream ends"
    assert report["samples_sent"] > 0
    assert report["samples_sent"] == report["samples_acked"] and report["samples_unanswered"] == 0
    assert sum(report["verdicts"].values()) == report["samples_sent"], "the node decided exactly what was sent"
    assert report["device_verdicts"] == report["verdicts"]
