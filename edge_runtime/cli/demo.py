"""``edge-node demo``: a real node and simulated UAVs on loopback, in one process tree.

1. ``edge-node run`` starts in a child process on ``tcp://127.0.0.1:<free port>`` with a fresh
   state folder (SQLite replay store + ledger + checkpoints) under ``--out``;
2. ``device-sim run`` starts N simulated devices in a second child process, replaying the
   synthetic audio-visual data set class-incrementally (every k-th sample sent as split ``eval``:
   the *streamed eval*), with its live progress line. The screen says first what is streamed;
3. when the whole stream is decided, or, only when ``--seconds`` is given, that many seconds pass
   (the devices stop sending, then wait up to ``--drain-timeout`` for the verdicts of what they
   sent, so sent = acked + unanswered), the node gets SIGTERM: it decides what is queued,
   checkpoints and exits; its final checkpoint is evaluated here on the *held-out test* set
   (samples drawn past the end of the stream, never streamed), over all classes;
4. a summary table is printed (with the cut, if the stream was cut), ``report.json`` written, and
   the plots of the node's learning history with the run's summary (held-out test accuracy,
   completeness, configuration) written to ``--out``/report/index.html.

This is the only place in ``edge_runtime`` that reaches ``device_sim`` (as a subprocess, plus
the synthetic data set and its stream order, for the held-out test and the completeness count).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from edge_runtime.core.config import Config, ConfigError, load_config
from edge_runtime.core.names import BUFFER_BYTES, BUFFER_ITEMS, EVAL_ACCURACY, PREQUENTIAL_ACCURACY, UPDATES

HELD_OUT_TEST_ACCURACY = "held_out_test_accuracy"
CLASSES_PER_TASK = 2  # device-sim's default for class-incremental streams
#: The demo's --seconds default: no time limit, the whole stream is sent.
DEFAULT_SECONDS: float | None = None


def synthetic_frame_size() -> list[int]:
    """[height, width] of the synthetic data set's frames: the demo nodes take this size, so no frame is resized."""
    from device_sim.datasets.synthetic import SyntheticConfig  # no torch

    size = SyntheticConfig.model_fields["image_size"].default
    return [size, size]


class DemoError(RuntimeError):
    """A part of the demo failed; the message says which and where its log is."""


# ----------------------------------------------------------------------------------- the command line


def add_demo_parser(sub: Any, add_config_args: Callable[[argparse.ArgumentParser], None], **parser_kwargs: Any) -> None:
    """Add ``demo`` to ``edge-node``'s sub-command parsers (``add_config_args`` adds --config/--set/--debug;
    ``parser_kwargs``, e.g. the help formatter and epilog, go to ``add_parser``)."""
    demo = sub.add_parser(
        "demo", **parser_kwargs,
        help="a node plus simulated UAVs on loopback, synthetic audio-visual stream; summary + report.json",
        description="Start `edge-node run` and `device-sim run` as child processes on 127.0.0.1: N simulated UAVs "
        "stream the whole synthetic audio-visual data set (--samples) class-incrementally to the node, which learns, "
        "acks and checkpoints. At the end the node is stopped with SIGTERM, its final checkpoint is evaluated on the "
        "held-out test set (never streamed, all classes), a summary table is printed, OUT/report.json written and the "
        "report of the run (accuracy, completeness, configuration, plots) written to OUT/report/index.html.",
    )
    add_config_args(demo)
    demo.add_argument("--devices", type=int, default=4, help="simulated UAVs (default 4)")
    demo.add_argument("--samples", type=int, default=6000, help="samples in the stream, over all devices (default 6000)")
    demo.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                      help="stop sending after this long even if the stream is not over, then wait for the verdicts "
                      "of what was sent; the summary and report name the cut (default: no limit, the whole stream)")
    demo.add_argument("--drain-timeout", type=float, default=30.0, help="after --seconds: wait at most this long for in-flight verdicts (default 30)")
    demo.add_argument("--rate", type=float, default=None, help="samples/s per device (default: as fast as credit allows)")
    demo.add_argument("--eval-every", type=int, default=10, help="every k-th sample of a device is sent as split eval, the streamed eval (default 10)")
    demo.add_argument("--test-samples", type=int, default=1000, help="held-out test samples (never streamed, all classes) for the final evaluation (default 1000)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data stream (default 0)")
    demo.add_argument("--out", metavar="DIR", default="demo-out", help="folder for report.json, node log and state (default demo-out)")
    demo.add_argument("--no-progress", action="store_true", help="do not draw the live progress line")


def check_demo_args(args: argparse.Namespace) -> None:
    """ConfigError naming the option when a number is out of range."""
    for name in ("devices", "samples", "eval_every", "test_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.seconds is not None and args.seconds <= 0:
        raise ConfigError(f"--seconds must be > 0 (got {args.seconds}); leave it out to stream the whole data set")
    if args.drain_timeout < 0:
        raise ConfigError(f"--drain-timeout must be >= 0 (got {args.drain_timeout})")


def run_demo_command(args: argparse.Namespace) -> int:
    """The sub-command: run the demo; exit 0, or 1 (one line on stderr) when a part of it fails."""
    check_demo_args(args)
    config = load_config(args.config, args.set)
    out = Path(args.out)
    try:
        run_demo(config, out, devices=args.devices, samples=args.samples, seconds=args.seconds, rate=args.rate,
                 eval_every=args.eval_every, test_samples=args.test_samples, seed=args.seed, progress=not args.no_progress,
                 drain_timeout=args.drain_timeout)
    except DemoError as err:
        print(f"edge-node demo: {err}", file=sys.stderr)
        return 1
    print(f"report written to {out / 'report.json'}")
    return 0


# ----------------------------------------------------------------------------------- the processes


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


def stream_devices(cmd: list[str], node: subprocess.Popen, node_log: Path, progress: bool) -> int:
    """Run ``device-sim`` (``cmd``) to its end; DemoError (devices stopped) if the node exits first."""
    sim = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=None if progress else subprocess.DEVNULL)
    try:
        while sim.poll() is None:
            if node.poll() is not None:
                sim.terminate()
                sim.wait(30)
                raise DemoError(f"edge-node exited with {node.returncode} while the devices streamed; see {node_log}")
            time.sleep(0.2)
    except BaseException:
        if sim.poll() is None:
            sim.kill()
        node.kill()
        raise
    return sim.returncode


# ----------------------------------------------------------------------------------- what is streamed


def _dataset(config: Config, seed: int, size: int) -> Any:
    from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset

    mc = config.model
    return SyntheticDataset(SyntheticConfig(num_classes=mc.num_classes, audio_features=mc.audio_features,
                                            channels=mc.visual_channels, seed=seed, size=size))


def stream_plan(config: Config, samples: int, seed: int, devices: int) -> dict[str, Any]:
    """What device-sim streams: the label of each stream position, each position's device, the tasks' classes."""
    import numpy as np

    from device_sim.scenario import assign_devices, make_order

    labels = _dataset(config, seed, samples).labels()
    order = make_order("class-incremental", labels, seed=seed, classes_per_task=CLASSES_PER_TASK)
    stream_labels = np.asarray(labels)[order.indices[:samples]]
    return {"labels": stream_labels, "owner": assign_devices(stream_labels, devices, 0.0, seed=seed),
            "tasks": order.task_classes, "num_classes": config.model.num_classes}


def streamed_per_class(stream_labels: Any, owner: Any, sent_per_device: dict[int, int]) -> dict[int, int]:
    """Samples of each class that were sent: device k replays its positions in order, so it sent the
    first ``sent_per_device[k]`` of them."""
    counts: dict[int, int] = {}
    for k, sent in sent_per_device.items():
        for label in stream_labels[owner == k][:sent].tolist():
            counts[int(label)] = counts.get(int(label), 0) + 1
    return dict(sorted(counts.items()))


def class_ranges(classes: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    parts: list[str] = []
    for c in sorted(classes):
        if parts and parts[-1][1] == c - 1:
            parts[-1] = (parts[-1][0], c)
        else:
            parts.append((c, c))  # type: ignore[arg-type]
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)  # type: ignore[misc]


def completeness(plan: dict[str, Any], fleet: dict[str, Any], seconds: float | None, learned: list[int]) -> dict[str, Any]:
    """How much of the stream was streamed and learned from, and the cut (a sentence) when it was not all."""
    totals = fleet["totals"]
    sent = {int(str(d["device"]).rsplit("-", 1)[-1]): int(d["sent"]) for d in fleet["devices"]}
    per_class = streamed_per_class(plan["labels"], plan["owner"], sent)
    never = [c for c in range(plan["num_classes"]) if c not in per_class]
    total, streamed = int(totals["samples"]), int(totals["sent"])
    complete = bool(totals.get("complete")) and streamed == total
    return {
        "samples_total": total,
        "samples_streamed": streamed,
        "complete": complete,
        "time_limit_s": seconds,
        "classes_total": plan["num_classes"],
        "classes_streamed": sorted(per_class),
        "classes_never_streamed": never,
        "classes_learned": learned,
        "streamed_per_class": {str(c): n for c, n in per_class.items()},
        "tasks": plan["tasks"],
        "cut": None if complete else cut_sentence(total, streamed, never, seconds, totals),
    }


def cut_sentence(total: int, streamed: int, never: list[int], seconds: float | None, totals: dict[str, Any]) -> str:
    """Why the stream is not complete, in one sentence: the time limit, or the devices that gave up."""
    if seconds is not None and not totals.get("failed") and streamed < total:
        why = f"stopped at the {seconds:g} s limit (--seconds) after {streamed:,} of {total:,} samples"
    else:
        why = (f"the stream is incomplete: {streamed:,} of {total:,} samples sent, {totals.get('unanswered', 0):,} unanswered, "
               f"{totals.get('failed', 0)} device(s) gave up")
    return why + (f"; classes {class_ranges(never)} never streamed" if never else "; every class streamed")


def describe_stream(plan: dict[str, Any], samples: int, devices: int, eval_every: int, seconds: float | None) -> str:
    """One line saying what the demo streams and when it stops."""
    tasks = " ".join("{" + ",".join(map(str, t)) + "}" for t in plan["tasks"])
    stop = (f"stops sending at {seconds:g} s (--seconds) even if the stream is not over" if seconds is not None
            else "no time limit: the whole stream is sent")
    return (f"streaming {samples:,} synthetic audio-visual samples from {devices} devices, class-incremental: "
            f"{len(plan['tasks'])} tasks of {CLASSES_PER_TASK} classes in the order {tasks}; every {eval_every}th sample of a "
            f"device is streamed eval; {stop}")


# ----------------------------------------------------------------------------------- evaluation


def _held_out_test(config: Config, state: Path, test_samples: int, seed: int, size: int) -> tuple[dict[str, Any], list[int]]:
    """The final checkpoint's accuracy on the held-out test set (indices past the stream, all classes), and
    the classes the node learned from (its ``seen`` classes)."""
    from edge_runtime.learning.checkpoint import CheckpointManager
    from edge_runtime.learning.learner import Learner

    loaded = CheckpointManager(state / "checkpoints").load_latest()
    if loaded is None:
        raise DemoError(f"the node left no checkpoint in {state / 'checkpoints'}")
    learner_state = loaded[0]["learner"]
    learner = Learner(config.model_copy(update={"device": "cpu"}))
    learner.model.load_state_dict(learner_state["model"])  # the model is all evaluation needs
    seen = learner_state.get("seen")
    learned = [int(c) for c in seen.nonzero().flatten().tolist()] if seen is not None else []
    return learner.evaluate(_dataset(config, seed, size).test_set(test_samples)), learned


def describe_policies(config: Config) -> str:
    """One line naming the admission, retention and replay policies the node runs, with their own settings."""
    own = {k: v for k, v in config.selection.model_dump().items() if k != "policy"}
    settings = ", ".join(f"{k} {v}" for k, v in own.items())
    return (f"admission {config.selection.policy} ({settings}), retention {config.buffer.retention} "
            f"({config.buffer.max_items} items), replay {config.replay.policy}")


def describe_modalities(config: Config) -> str:
    """Each modality of the configuration with its kind and size (frames: the visual backbone too)."""
    from edge_runtime.core.modalities import modalities_of

    parts = []
    for name, m in modalities_of(config).items():
        extra = f", visual {config.model.visual_backbone}" if m.kind == "frames" else ""
        parts.append(f"{name} ({m.kind}, {m.channels} ch{extra})")
    return ", ".join(parts)


def modality_line(accuracy: dict[str, float | None]) -> tuple[str, str]:
    """``("held-out test, <a>-only / <b>-only", "0.512 / 0.433")``: each modality's own head, by name."""
    names = list(accuracy)
    return (f"held-out test, {' / '.join(f'{n}-only' for n in names)}", " / ".join(_fmt(accuracy[n]) for n in names))


def config_rows(config: Config, devices: int, samples: int, eval_every: int, test_samples: int, seed: int,
                seconds: float | None) -> dict[str, str]:
    """The configuration of the run in one table: policies, buffer, model, training and stream settings."""
    m, t, b, n = config.model, config.training, config.buffer, config.node
    own = ", ".join(f"{k} {v}" for k, v in config.selection.model_dump().items() if k != "policy")
    return {
        "admission policy": f"{config.selection.policy} ({own})" if own else config.selection.policy,
        "retention policy": b.retention,
        "buffer size": f"{b.max_items:,} items (at most {b.max_bytes / 2**20:,.0f} MiB)",
        "replay": f"{config.replay.policy}, {b.replay_batch_size} per step, {t.replay_steps} step(s) per micro-batch",
        "model": f"{m.num_classes} classes; modalities {describe_modalities(config)}; "
                 f"embedding {m.embed_dim}, fusion {m.fusion}",
        "training": f"{t.optimizer}, lr {t.lr:g}, distillation lambda {t.kd_lambda:g} (T {t.kd_temperature:g}), seed {t.seed}",
        "micro-batch": f"{n.batch_size} samples (window {n.batch_window_ms:g} ms), credit {n.credit} per device",
        "stream": f"{samples:,} synthetic samples, class-incremental, {CLASSES_PER_TASK} classes per task, seed {seed}",
        "devices": f"{devices} simulated UAVs over tcp://127.0.0.1",
        "streamed eval": f"every {eval_every}th sample of each device",
        "held-out test": f"{test_samples:,} samples, all classes, never streamed",
        "time limit": "none (the whole stream)" if seconds is None else f"{seconds:g} s (--seconds)",
    }


# ----------------------------------------------------------------------------------- the run


def run_demo(
    config: Config,
    out: Path,
    devices: int = 4,
    samples: int = 6000,
    seconds: float | None = DEFAULT_SECONDS,
    rate: float | None = None,
    eval_every: int = 10,
    test_samples: int = 1000,
    seed: int = 0,
    progress: bool = True,
    drain_timeout: float = 30.0,
) -> dict[str, Any]:
    """Run the node + devices demo; returns the report (also written to ``out/report.json``).

    ``seconds=None`` streams the whole data set; with a limit, a cut is named on the screen, in
    report.json (``stream.cut``) and in the HTML report."""
    out.mkdir(parents=True, exist_ok=True)
    plan = stream_plan(config, samples, seed, devices)
    if progress:
        print(f"edge-node demo: {describe_stream(plan, samples, devices, eval_every, seconds)}", flush=True)
        print(f"edge-node demo: {describe_policies(config)}", flush=True)
    started = time.perf_counter()
    node, info, node_log = start_node(config, out)
    devices_json = out / "demo-devices.json"
    if devices_json.exists():
        devices_json.unlink()
    cmd = [sys.executable, "-m", "device_sim.cli", "run", "--endpoint", info["endpoint"], "--devices", str(devices),
           "--dataset", "synthetic", "--scenario", "class-incremental", "--classes-per-task", str(CLASSES_PER_TASK),
           "--samples", str(samples), "--eval-every", str(eval_every), "--seed", str(seed),
           "--drain-timeout", str(drain_timeout), "--summary", str(devices_json)]
    cmd += ["--seconds", str(seconds)] if seconds is not None else []
    cmd += ["--rate", str(rate)] if rate else []
    code = stream_devices(cmd, node, node_log, progress)
    stop_node(node, node_log)
    wall = time.perf_counter() - started
    if not devices_json.exists():
        raise DemoError(f"device-sim exited with {code} and wrote no summary")
    fleet = json.loads(devices_json.read_text())
    state = out / "demo-state"
    held_out, learned = _held_out_test(config, state, test_samples, seed, samples)
    report = build_report(config, fleet, json.loads((state / "summary.json").read_text()), held_out,
                          completeness(plan, fleet, seconds, learned),
                          config_rows(config, devices, samples, eval_every, test_samples, seed, seconds))
    report.update({"wall_seconds": round(wall, 2), "node_log": str(node_log), "state_dir": str(state)})
    from edge_runtime.ops.report import write_report

    report["html_report"] = str(write_report(state, out / "report", run=html_summary(report)))
    _print_table(report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def build_report(config: Config, fleet: dict[str, Any], node: dict[str, Any], held_out: dict[str, Any],
                 stream: dict[str, Any], settings: dict[str, str]) -> dict[str, Any]:
    """report.json's content (without the wall time and paths): counts, the accuracies (fused, and each modality's own
    head by name: ``held_out_test_modality_accuracy``), completeness, configuration."""
    from edge_runtime.ops.report import TERMS

    totals = fleet["totals"]
    return {
        "devices": totals["devices"],
        "samples_total": stream["samples_total"],
        "samples_sent": totals["sent"],
        "samples_resent": totals["resent"],
        "samples_acked": totals["acked"],
        "samples_unanswered": totals["unanswered"],
        "stream_complete": stream["complete"],
        "stream": stream,
        "verdicts": node["verdicts"],
        "device_verdicts": totals["verdicts"],
        PREQUENTIAL_ACCURACY: node[PREQUENTIAL_ACCURACY],
        EVAL_ACCURACY: node[EVAL_ACCURACY],
        HELD_OUT_TEST_ACCURACY: held_out["accuracy"],
        "held_out_test_modality_accuracy": dict(held_out["modality_accuracy"]),
        "held_out_test_per_class_accuracy": {str(c): a for c, a in held_out["per_class_accuracy"].items()},
        "held_out_test_samples": held_out["n"],
        "chance": 1.0 / config.model.num_classes,
        "descriptions": {
            PREQUENTIAL_ACCURACY: f"prequential: {TERMS['prequential']}",
            EVAL_ACCURACY: f"streamed eval: {TERMS['streamed eval']}",
            HELD_OUT_TEST_ACCURACY: f"held-out test: {TERMS['held-out test']} All {config.model.num_classes} classes.",
            "stream": "completeness: samples streamed of the stream's total, classes streamed and learned; "
                      "cut names why the stream was not sent whole (null when it was)",
        },
        BUFFER_ITEMS: node[BUFFER_ITEMS],
        BUFFER_BYTES: node[BUFFER_BYTES],
        "buffer_classes": node["buffer_classes"],
        UPDATES: node[UPDATES],
        "policy": config.selection.policy,
        "policies": describe_policies(config),
        "config": settings,
        "configuration": config.model_dump(mode="json"),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def stream_line(s: dict[str, Any]) -> str:
    """Completeness in one line: samples streamed / total, classes streamed and learned."""
    return (f"{s['samples_streamed']:,} of {s['samples_total']:,} samples; classes streamed {len(s['classes_streamed'])} of "
            f"{s['classes_total']} ({class_ranges(s['classes_streamed']) or 'none'}), learned from "
            f"{len(s['classes_learned'])}")


def html_summary(r: dict[str, Any]) -> dict[str, Any]:
    """What the HTML report shows above the plots: the headline accuracy, the cut or completeness, two tables."""
    s = r["stream"]
    n_classes = s["classes_total"]
    return {
        "title": "edge-node demo report",
        "headline": (f"held-out test accuracy, all {n_classes} classes", _fmt(r[HELD_OUT_TEST_ACCURACY]),
                     f"on {r['held_out_test_samples']:,} held-out test samples never streamed; chance {r['chance']:.3f}"),
        "cut": s["cut"],
        "complete": s["complete"],
        "tables": [
            ("Accuracy", [
                (f"held-out test, all {n_classes} classes", _fmt(r[HELD_OUT_TEST_ACCURACY])),
                modality_line(r["held_out_test_modality_accuracy"]),
                ("prequential (cumulative)", _fmt(r[PREQUENTIAL_ACCURACY])),
                ("streamed eval (cumulative)", _fmt(r[EVAL_ACCURACY])),
                ("chance", f"{r['chance']:.3f}"),
            ]),
            ("Completeness", [
                ("samples streamed / total", f"{s['samples_streamed']:,} / {s['samples_total']:,}"),
                ("stream complete", "yes" if s["complete"] else "no (see the cut above)"),
                ("classes streamed", f"{len(s['classes_streamed'])} of {n_classes} ({class_ranges(s['classes_streamed']) or 'none'})"),
                ("classes never streamed", class_ranges(s["classes_never_streamed"]) or "none"),
                ("classes learned from", f"{len(s['classes_learned'])} ({class_ranges(s['classes_learned']) or 'none'})"),
                ("tasks (class order)", " ".join("{" + ",".join(map(str, t)) + "}" for t in s["tasks"])),
                ("samples resent / unanswered", f"{r['samples_resent']:,} / {r['samples_unanswered']:,}"),
                ("wall time", f"{r['wall_seconds']:.1f} s"),
            ]),
            ("Configuration", list(r["config"].items())),
        ],
    }


def _print_table(r: dict[str, Any]) -> None:
    s = r["stream"]
    rows = [
        ("devices", f"{r['devices']} simulated UAVs over tcp://127.0.0.1"),
        ("stream", stream_line(s)),
        ("samples sent / acked", f"{r['samples_sent']:,} / {r['samples_acked']:,} ({r['samples_resent']:,} resent, "
                                 f"{r['samples_unanswered']:,} unanswered)"),
        ("verdicts", ", ".join(f"{k} {v}" for k, v in sorted(r["verdicts"].items()))),
        ("prequential accuracy", _fmt(r[PREQUENTIAL_ACCURACY])),
        ("streamed eval accuracy", _fmt(r[EVAL_ACCURACY])),
        (f"held-out test accuracy, all {s['classes_total']} classes", f"{_fmt(r[HELD_OUT_TEST_ACCURACY])}  (chance {r['chance']:.3f})"),
        modality_line(r["held_out_test_modality_accuracy"]),
        ("replay buffer", f"{r[BUFFER_ITEMS]} items, {r[BUFFER_BYTES] / 1024:.0f} KiB, per class {r['buffer_classes']}"),
        ("policies", r["policies"]),
        ("updates", str(r[UPDATES])),
        ("wall time", f"{r['wall_seconds']:.1f} s"),
        ("report (HTML)", r["html_report"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nedge-node demo summary")
    if s["cut"]:
        print(f"  STREAM CUT: {s['cut']}")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
