"""``edge-node demo``: a real node and simulated UAVs on loopback, in one process tree.

1. ``edge-node run`` starts in a child process on ``tcp://127.0.0.1:<free port>`` with a fresh
   state folder (SQLite replay store + ledger + checkpoints) under ``--out``;
2. ``device-sim run`` starts N simulated devices in a second child process, replaying the
   synthetic audio-visual data set class-incrementally (every k-th sample held out as ``eval``),
   with its live progress line;
3. when the stream ends, or ``--seconds`` pass (the devices stop sending, then wait up to
   ``--drain-timeout`` for the verdicts of what they sent, so sent = acked + unanswered), the node
   gets SIGTERM: it decides what is queued, checkpoints and exits; its final checkpoint is
   evaluated here on held-out samples;
4. a summary table is printed, ``report.json`` written, and the plots of the node's learning history
   (``edge-node report``) written to ``--out``/report/index.html.

This is the only place in ``edge_runtime`` that reaches ``device_sim`` (as a subprocess, plus
the synthetic data set for the held-out evaluation).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from edge_runtime.core.config import Config
from edge_runtime.core.names import BUFFER_BYTES, BUFFER_ITEMS, EVAL_ACCURACY, PREQUENTIAL_ACCURACY, UPDATES


def synthetic_frame_size() -> list[int]:
    """[height, width] of the synthetic data set's frames: the demo nodes take this size, so no frame is resized."""
    from device_sim.datasets.synthetic import SyntheticConfig  # no torch

    size = SyntheticConfig.model_fields["image_size"].default
    return [size, size]


class DemoError(RuntimeError):
    """A part of the demo failed; the message says which and where its log is."""


def start_node(config: Config, out: Path) -> tuple[subprocess.Popen, dict[str, Any], Path]:
    """``edge-node run`` of ``config`` in a child process, on a free loopback port and a fresh state folder
    ``out/demo-state``; returns (process, its node.json, its log file) once it listens."""
    state = out / "demo-state"
    if state.exists():
        shutil.rmtree(state)
    cfg = config.model_dump(mode="json")
    cfg["node"].update({"bind": "tcp://127.0.0.1:*", "state_dir": str(state), "log_format": "json", "history_every_s": 0.5})
    if cfg["node"]["frame_size"] is None:
        cfg["node"]["frame_size"] = synthetic_frame_size()
    cfg_path = out / "demo-node.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log_path = out / "demo-node.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli.main", "run", "--config", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    info_path = state / "node.json"
    deadline = time.monotonic() + 120
    while not info_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise DemoError(f"edge-node did not start (exit {proc.poll()}); see {log_path}:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, json.loads(info_path.read_text()), log_path


def stop_node(proc: subprocess.Popen, log_path: Path) -> None:
    """SIGTERM, wait for the drain and final checkpoint; DemoError unless it exits 0 within 120 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise DemoError(f"edge-node did not stop within 120 s after SIGTERM; see {log_path}") from None
    if code != 0:
        raise DemoError(f"edge-node exited with {code}; see {log_path}")


def _held_out_accuracy(config: Config, state: Path, test_samples: int, seed: int, size: int) -> dict[str, Any]:
    from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset
    from edge_runtime.learning.checkpoint import CheckpointManager
    from edge_runtime.learning.learner import Learner

    mc = config.model
    dataset = SyntheticDataset(SyntheticConfig(num_classes=mc.num_classes, audio_features=mc.audio_features, channels=mc.visual_channels, seed=seed, size=size))
    loaded = CheckpointManager(state / "checkpoints").load_latest()
    if loaded is None:
        raise DemoError(f"the node left no checkpoint in {state / 'checkpoints'}")
    learner = Learner(config.model_copy(update={"device": "cpu"}))
    learner.model.load_state_dict(loaded[0]["learner"]["model"])  # the model is all evaluation needs
    return learner.evaluate(dataset.test_set(test_samples))


def describe_policies(config: Config) -> str:
    """One line naming the admission, retention and replay policies the node runs, with their own settings."""
    own = {k: v for k, v in config.selection.model_dump().items() if k != "policy"}
    settings = ", ".join(f"{k} {v}" for k, v in own.items())
    return (f"admission {config.selection.policy} ({settings}), retention {config.buffer.retention} "
            f"({config.buffer.max_items} items), replay {config.replay.policy}")


def run_demo(
    config: Config,
    out: Path,
    devices: int = 4,
    samples: int = 6000,
    seconds: float = 60.0,
    rate: float | None = None,
    eval_every: int = 10,
    test_samples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    drain_timeout: float = 30.0,
) -> dict[str, Any]:
    """Run the node + devices demo; returns the report (also written to ``out/report.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"edge-node demo: {describe_policies(config)}", flush=True)
    started = time.perf_counter()
    node, info, node_log = start_node(config, out)
    devices_json = out / "demo-devices.json"
    cmd = [sys.executable, "-m", "device_sim.cli", "run", "--endpoint", info["endpoint"], "--devices", str(devices),
           "--dataset", "synthetic", "--scenario", "class-incremental", "--samples", str(samples),
           "--eval-every", str(eval_every), "--seed", str(seed), "--seconds", str(seconds), "--drain-timeout", str(drain_timeout), "--summary", str(devices_json)]
    if rate:
        cmd += ["--rate", str(rate)]
    try:
        sim = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=None if progress else subprocess.DEVNULL, timeout=seconds + drain_timeout + 300)
    except BaseException:
        node.kill()
        raise
    stop_node(node, node_log)
    wall = time.perf_counter() - started
    if not devices_json.exists():
        raise DemoError(f"device-sim exited with {sim.returncode} and wrote no summary")
    fleet = json.loads(devices_json.read_text())
    state = out / "demo-state"
    node_summary = json.loads((state / "summary.json").read_text())
    held_out = _held_out_accuracy(config, state, test_samples, seed, samples)  # indices past the stream
    totals = fleet["totals"]
    report = {
        "devices": devices,
        "samples_sent": totals["sent"],
        "samples_resent": totals["resent"],
        "samples_acked": totals["acked"],
        "samples_unanswered": totals["unanswered"],
        "stream_complete": bool(totals.get("complete", sim.returncode == 0)),
        "verdicts": node_summary["verdicts"],
        "device_verdicts": totals["verdicts"],
        PREQUENTIAL_ACCURACY: node_summary[PREQUENTIAL_ACCURACY],
        EVAL_ACCURACY: node_summary[EVAL_ACCURACY],
        "held_out_accuracy": held_out["accuracy"],
        "held_out_audio_accuracy": held_out["audio_accuracy"],
        "held_out_visual_accuracy": held_out["video_accuracy"],
        BUFFER_ITEMS: node_summary[BUFFER_ITEMS],
        BUFFER_BYTES: node_summary[BUFFER_BYTES],
        "buffer_classes": node_summary["buffer_classes"],
        UPDATES: node_summary[UPDATES],
        "wall_seconds": round(wall, 2),
        "node_log": str(node_log),
        "state_dir": str(state),
        "policy": config.selection.policy,
        "policies": describe_policies(config),
    }
    from edge_runtime.ops.report import write_report

    report["html_report"] = str(write_report(state, out / "report"))  # plots of state/history.csv
    _print_table(report, chance=1.0 / config.model.num_classes)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _print_table(r: dict[str, Any], chance: float) -> None:
    rows = [
        ("devices", f"{r['devices']} simulated UAVs over tcp://127.0.0.1"),
        ("samples sent / acked", f"{r['samples_sent']} / {r['samples_acked']} ({r['samples_resent']} resent, "
                                 f"{r['samples_unanswered']} unanswered)"),
        ("verdicts", ", ".join(f"{k} {v}" for k, v in sorted(r["verdicts"].items()))),
        ("prequential accuracy", _fmt(r[PREQUENTIAL_ACCURACY])),
        ("eval accuracy (streamed eval)", _fmt(r[EVAL_ACCURACY])),
        ("held-out accuracy, all classes", f"{_fmt(r['held_out_accuracy'])}  (chance {chance:.3f})"),
        ("audio-only / visual-only", f"{_fmt(r['held_out_audio_accuracy'])} / {_fmt(r['held_out_visual_accuracy'])}"),
        ("replay buffer", f"{r[BUFFER_ITEMS]} items, {r[BUFFER_BYTES] / 1024:.0f} KiB, per class {r['buffer_classes']}"),
        ("policies", r["policies"]),
        ("updates", str(r[UPDATES])),
        ("wall time", f"{r['wall_seconds']:.1f} s"),
        ("plots (HTML)", r["html_report"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nedge-node demo summary")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
