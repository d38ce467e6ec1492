"""The command lines as a user runs them: help, config errors, and a short demo run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args, cwd=ROOT, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_help_explains_every_subcommand():
    node = _run("-m", "edge_runtime.cli.main", "--help")
    assert node.returncode == 0
    for word in ("run", "demo", "keys", "config"):
        assert word in node.stdout
    sim = _run("-m", "device_sim.cli", "--help")
    assert sim.returncode == 0
    for word in ("datasets", "inspect", "run"):
        assert word in sim.stdout


def test_both_programs_print_the_package_version():
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for module, prog in (("edge_runtime.cli.main", "edge-node"), ("device_sim.cli", "device-sim")):
        r = _run("-m", module, "--version")
        assert r.returncode == 0 and r.stdout.strip() == f"{prog} {version}", (r.stdout, r.stderr)


def test_set_example_in_the_help_is_valid_with_the_default_configuration():
    r = _run("-m", "edge_runtime.cli.main", "config", "--help")
    example = next(word for word in r.stdout.replace("\n", " ").split() if "=" in word and "." in word.split("=")[0])
    checked = _run("-m", "edge_runtime.cli.main", "config", "--set", example)
    assert checked.returncode == 0, (example, checked.stderr)


def test_config_error_names_key_and_exits_2():
    r = _run("-m", "edge_runtime.cli.main", "config", "--set", "selection.policy=mbs", "--set", "selection.keep_ratio=2")
    assert r.returncode == 2
    assert "selection.keep_ratio" in r.stderr
    assert "Traceback" not in r.stderr


def test_parser_and_keys_do_not_import_torch(tmp_path):
    """Building ``edge-node``'s parser (export's included) and running ``keys`` need no torch: quick to start."""
    code = ("import sys; from edge_runtime.cli.main import main; "
            f"rc = main(['keys', {str(tmp_path / 'certs')!r}]); "
            "print('torch-loaded' if 'torch' in sys.modules else 'torch-free', rc)")
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "torch-free 0"
    assert (tmp_path / "certs" / "server.key_secret").is_file()


@pytest.mark.parametrize("argv", [["--help"], ["export", "--help"], ["config"]], ids=["help", "export-help", "config"])
def test_help_and_config_do_not_import_torch(argv):
    """``edge-node --help``, ``export --help`` and ``config`` answer without torch (the opset bounds are torch-free)."""
    code = ("import sys; from edge_runtime.cli.main import main\n"
            "try:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code\n"
            "print('torch-loaded' if 'torch' in sys.modules else 'torch-free', rc, file=sys.stderr)")
    r = _run("-c", code, *argv)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "torch-free 0"
    assert r.stdout, "the command printed its help or the resolved configuration"


@pytest.mark.parametrize("command, options", [
    ("export", ["--checkpoint", "--out", "--config", "--set", "--opset", "13..20 (default 17)"]),
    ("status", ["--state-dir", "--metrics", "--watch", "--interval", "--count", "--top", "--json"]),
    ("report", ["STATE_DIR", "--out", "default: STATE_DIR/report"]),
])
def test_subcommand_help_lists_its_options(command, options):
    r = _run("-m", "edge_runtime.cli.main", command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: edge-node {command}")
    for option in options:
        assert option in r.stdout, option


@pytest.mark.slow
def test_status_and_report_of_a_missing_state_dir_exit_2_with_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    status = _run("-m", "edge_runtime.cli.main", "status", "--state-dir", str(missing))
    report = _run("-m", "edge_runtime.cli.main", "report", str(missing))
    assert (status.returncode, report.returncode) == (2, 2)
    assert status.stderr == f"edge-node: --state-dir {missing}: no such folder; give the node's node.state_dir\n"
    assert report.stderr.startswith(f"edge-node: {missing / 'history.csv'} does not exist")
    assert len(report.stderr.splitlines()) == 1 and not report.stdout
    spelled = _run("-m", "edge_runtime.cli.main", "report", "--state-dir", str(missing))  # the spelling of every command
    assert (spelled.returncode, spelled.stderr) == (2, report.stderr)
    export = _run("-m", "edge_runtime.cli.main", "export", "--state-dir", str(missing), "--out", str(tmp_path / "m.onnx"))
    assert export.returncode == 2
    assert export.stderr == f"edge-node export: --state-dir {missing}: no such folder; give the node's node.state_dir\n"
    both = _run("-m", "edge_runtime.cli.main", "report", str(missing), "--state-dir", str(tmp_path))
    assert both.returncode == 2 and "two state folders" in both.stderr


@pytest.mark.slow
def test_export_of_a_missing_checkpoint_and_a_bad_setting_exit_2(tmp_path):
    """A checkpoint the command is pointed at that is missing is a usage error (2), as a missing --state-dir is
    (docs/operations.md, "Exit codes"); 1 is for an export that started and failed."""
    out = tmp_path / "m.onnx"
    missing = _run("-m", "edge_runtime.cli.main", "export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out))
    assert missing.returncode == 2
    assert missing.stderr == f"edge-node export: checkpoint {tmp_path / 'nope.pt'} does not exist\n"
    bad = _run("-m", "edge_runtime.cli.main", "export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out),
               "--set", "bogus=1")
    assert bad.returncode == 2 and "bogus: unknown key" in bad.stderr and "Traceback" not in bad.stderr
    assert not out.exists()


@pytest.mark.slow
def test_config_prints_resolved_yaml():
    r = _run("-m", "edge_runtime.cli.main", "config", "--config", "configs/default.yaml", "--set", "buffer.max_items=77")
    assert r.returncode == 0, r.stderr
    assert "max_items: 77" in r.stdout


@pytest.mark.slow
def test_demo_runs_node_and_devices_and_report_adds_up(tmp_path):
    r = _run("-m", "edge_runtime.cli.main", "demo", "--samples", "400", "--devices", "2", "--test-samples", "100",
             "--no-progress", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["samples_sent"] == report["samples_acked"] == 400 and report["stream_complete"]
    stream = report["stream"]  # completeness: the whole stream, every class
    assert stream["samples_streamed"] == stream["samples_total"] == 400 and stream["cut"] is None
    assert stream["classes_streamed"] == list(range(10)) and stream["classes_never_streamed"] == []
    assert sum(stream["streamed_per_class"].values()) == 400
    assert "STREAM CUT" not in r.stdout and "400 of 400 samples; classes streamed 10 of 10" in r.stdout
    assert sum(report["verdicts"].values()) == 400
    assert report["device_verdicts"] == report["verdicts"], "what devices were told must equal what the node decided"
    assert report["verdicts"]["eval"] == 40  # every 10th sample of each device
    assert 0 < report["buffer_items"] <= report["verdicts"].get("admitted", 0)
    assert 0.0 <= report["held_out_test_accuracy"] <= 1.0 and report["held_out_test_samples"] == 100
    assert re.search(rf"held-out test accuracy, all 10 classes +{report['held_out_test_accuracy']:.3f}", r.stdout)
    for key, term in (("prequential_accuracy", "prequential: "), ("eval_accuracy", "streamed eval: "),
                      ("held_out_test_accuracy", "held-out test: ")):
        assert report["descriptions"][key].startswith(term)
    assert {"admission policy", "buffer size", "model", "time limit"} <= set(report["config"])
    assert report["updates"] > 0 and report["wall_seconds"] > 0
    assert "demo summary" in r.stdout
    from edge_runtime.core.config import load_config

    defaults = load_config(None)  # the demo says which policies it ran: the built-in defaults here
    assert f"admission {defaults.selection.policy} (" in r.stdout and f"retention {defaults.buffer.retention} (" in r.stdout
    assert report["policies"].startswith(f"admission {defaults.selection.policy} (")


@pytest.mark.slow
def test_device_sim_lists_and_inspects_synthetic():
    r = _run("-m", "device_sim.cli", "datasets")
    assert r.returncode == 0 and "synthetic" in r.stdout
    r = _run("-m", "device_sim.cli", "inspect", "synthetic", "-n", "50")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["tensors"]["audio"]["shape"][1] == 13
    assert sum(info["labels"].values()) == 50


@pytest.mark.slow
def test_demo_stopped_by_seconds_waits_for_every_verdict(tmp_path):
    """--seconds stops sending; the devices then wait for what is in flight, so every sample sent is acked."""
    r = _run("-m", "edge_runtime.cli.main", "demo", "--seconds", "5", "--samples", "50000", "--devices", "2",
             "--test-samples", "50", "--no-progress", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert not report["stream_complete"], "the 5 s deadline must come before the 50,000-sample stream ends"
    assert report["samples_sent"] > 0
    assert report["samples_sent"] == report["samples_acked"] and report["samples_unanswered"] == 0
    assert sum(report["verdicts"].values()) == report["samples_sent"], "the node decided exactly what was sent"
    assert report["device_verdicts"] == report["verdicts"]
    stream = report["stream"]  # the cut is named: on the screen, in report.json and in the HTML
    assert not stream["complete"] and stream["samples_streamed"] == report["samples_sent"] < stream["samples_total"] == 50000
    assert stream["cut"].startswith(f"stopped at the 5 s limit (--seconds) after {report['samples_sent']:,} of 50,000 samples")
    assert f"STREAM CUT: {stream['cut']}" in r.stdout
    assert sum(stream["streamed_per_class"].values()) == report["samples_sent"]
    assert set(stream["classes_streamed"]) | set(stream["classes_never_streamed"]) == set(range(10))
    if stream["classes_never_streamed"]:
        assert "never streamed" in stream["cut"]
    page = (tmp_path / "report" / "index.html").read_text()
    import html

    assert f"Stream cut:</strong> {html.escape(stream['cut'])}" in page
