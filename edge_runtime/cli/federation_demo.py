"""``edge-node federation-demo``: three edge boxes on loopback learn as one on Flower.

1. three ``edge-node run`` daemons (federation enabled, each with its own state folder under
   ``--out``) and beside each a ``device-sim run`` fleet streaming only its share of the classes of
   the synthetic audio-visual data set (node 0: classes 0-2, node 1: 3-5, node 2: 6-9);
2. when the fleets are done, every node's model is read over its control channel and evaluated
   on held-out samples of ALL classes: the isolated accuracy;
3. one SuperLink, one SuperNode per node and ``flwr run`` of the edge-runtime app; each fleet
   streams a second pass, slowly, while the rounds run (nodes learn between rounds); the fleets
   stop before the last round, so every node ends on exactly the last round's global model;
4. after the last round every node's model is evaluated again: the federated accuracy. A table
   is printed and ``--out/report.json`` written (``rounds``, ``nodes``: ``name``,
   ``classes_streamed``, ``isolated_accuracy``, ``federated_accuracy``; plus Flower's per-round log).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from edge_runtime.cli.demo import synthetic_frame_size
from edge_runtime.core.config import Config

SPLIT = ((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))

#: A small model and short rounds (the settings of tests/federation/test_federation.py): about 3-4 minutes on a 2-core CPU.
DEMO_OVERRIDES: dict[str, Any] = {
    "model": {"embed_dim": 32, "audio_channels": 32, "tiny_channels": 8},
    "node": {"batch_size": 16, "batch_window_ms": 20.0, "checkpoint_every_s": 5.0},
    "buffer": {"max_items": 120},
    "selection": {"train_on": "all"},
    "training": {"replay_steps": 4, "lr": 0.003},
    "federation": {"enabled": True, "rounds": 3, "samples_per_round": 30, "round_interval_s": 10.0,
                   "min_nodes": 2, "control_timeout_s": 3.0, "round_timeout_s": 90.0},
    "num_threads": 1,
}


def node_config(base: Config, state_dir: Path, bind: str) -> dict[str, Any]:
    """A node's configuration: ``base`` plus its bind address and state folder (JSON-able dict)."""
    cfg = base.model_dump(mode="json")
    cfg["node"].update({"bind": bind, "state_dir": str(state_dir), "log_format": "json"})
    if cfg["node"]["frame_size"] is None:
        cfg["node"]["frame_size"] = synthetic_frame_size()
    cfg["federation"]["enabled"] = True
    return cfg


def start_node(cfg: dict[str, Any], path: Path, log: Path) -> subprocess.Popen:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "edge_runtime.cli.main", "run", "--config", str(path)], stdout=f, stderr=subprocess.STDOUT)


def wait_node(proc: subprocess.Popen, state_dir: Path, log: Path, since: float, timeout: float = 120.0) -> dict[str, Any]:
    """node.json once the node (started at ``since``) is listening."""
    info = state_dir / "node.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"edge-node exited with {proc.returncode}; see {log}")
        if info.exists() and info.stat().st_mtime >= since:
            return json.loads(info.read_text())
        time.sleep(0.05)
    raise RuntimeError(f"edge-node did not start within {timeout:.0f} s; see {log}")


def fleet_command(endpoint: str, classes: Sequence[int], samples: int, seed: int, prefix: str, devices: int = 2,
                  rate: float | None = None, summary: Path | None = None) -> list[str]:
    """``device-sim run`` streaming only ``classes`` of the synthetic data set (every 10th sample eval)."""
    cmd = [sys.executable, "-m", "device_sim.cli", "run", "--endpoint", endpoint, "--devices", str(devices),
           "--dataset", "synthetic", "--scenario", "iid", "--classes", ",".join(map(str, classes)), "--samples", str(samples),
           "--seed", str(seed), "--device-prefix", prefix, "--eval-every", "10", "--no-progress"]
    if rate:
        cmd += ["--rate", str(rate)]
    if summary is not None:
        cmd += ["--summary", str(summary)]
    return cmd


def held_out(config: Config, samples: int, seed: int, n: int) -> list:
    """``n`` held-out samples of every class, past the streamed ones (same generator as the fleets)."""
    from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset

    mc = config.model
    ds = SyntheticDataset(SyntheticConfig(num_classes=mc.num_classes, audio_features=mc.audio_features,
                                          channels=mc.visual_channels, seed=seed, size=samples))
    return ds.test_set(n)


class Evaluator:
    """Accuracy of a node's shared weights on held-out samples (a Learner in this process, CPU)."""

    def __init__(self, config: Config, samples: list) -> None:
        from edge_runtime.learning.learner import Learner

        self.learner = Learner(config.model_copy(update={"device": "cpu"}))
        self.samples = samples

    def evaluate(self, arrays: dict) -> dict[str, Any]:
        """``Learner.evaluate`` of these arrays: accuracy, per-class accuracy, unimodal accuracies."""
        from edge_runtime.federation.node_link import apply_global

        apply_global(self.learner, arrays)
        return self.learner.evaluate(self.samples)

    def accuracy(self, arrays: dict) -> float:
        return float(self.evaluate(arrays)["accuracy"])


def node_evaluation(evaluator: Evaluator, endpoint: str, timeout: float = 30.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """(evaluation, status header) of the node behind ``endpoint``, read with a control-channel get."""
    from edge_runtime.federation.control import ControlClient

    header, arrays = ControlClient(endpoint, timeout_s=timeout).get()
    return evaluator.evaluate(arrays), header


def node_accuracy(evaluator: Evaluator, endpoint: str, timeout: float = 30.0) -> tuple[float, dict[str, Any]]:
    """(accuracy on all classes, status header) of the node behind ``endpoint``."""
    result, header = node_evaluation(evaluator, endpoint, timeout)
    return float(result["accuracy"]), header


def wait_round(endpoints: Sequence[str], round_: int, timeout: float) -> None:
    """Until every node reports federation round >= ``round_``."""
    from edge_runtime.federation.control import ControlClient, ControlError

    deadline = time.monotonic() + timeout
    pending = list(endpoints)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes {pending} did not reach round {round_} within {timeout:.0f} s")
        try:
            pending = [e for e in pending if ControlClient(e, timeout_s=2.0).status()["round"] < round_]
        except ControlError:
            pass
        time.sleep(0.2)


def run_federation_demo(config: Config, out: Path, samples: int = 720, test_samples: int = 400, seed: int = 3,
                        rate: float = 1.5) -> dict[str, Any]:
    """Run the demo (module docstring); returns the report, also written to ``out/report.json``."""
    from edge_runtime.federation.launch import Federation, free_port, wait_for_rounds

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    fc = config.federation
    names = [f"box{i}" for i in range(len(SPLIT))]
    procs: dict[str, subprocess.Popen] = {}
    fleets: list[subprocess.Popen] = []
    fed = Federation(out / "flower")
    started = time.monotonic()
    try:
        infos = {}
        for name in names:
            state = out / f"{name}-state"
            if state.exists():
                import shutil

                shutil.rmtree(state)
            cfg = node_config(config, state, f"tcp://127.0.0.1:{free_port()}")
            procs[name] = start_node(cfg, out / f"{name}.yaml", out / f"{name}.log")
        for name in names:
            infos[name] = wait_node(procs[name], out / f"{name}-state", out / f"{name}.log", since=0.0)
        print("streaming: " + ", ".join(f"{n} <- classes {list(c)}" for n, c in zip(names, SPLIT)), flush=True)
        for name, classes in zip(names, SPLIT):
            fleets.append(subprocess.Popen(fleet_command(infos[name]["endpoint"], classes, samples, seed, f"{name}-a"),
                                           stdout=subprocess.DEVNULL))
        for f in fleets:
            f.wait(600)
        evaluator = Evaluator(config, held_out(config, samples, seed, test_samples))
        isolated = {n: node_accuracy(evaluator, infos[n]["control_endpoint"])[0] for n in names}
        print("isolated: " + ", ".join(f"{n} {a:.3f}" for n, a in isolated.items()), flush=True)

        fed.start_superlink()
        for name in names:
            fed.start_supernode(name, infos[name]["control_endpoint"])
        cfg_path = out / f"{names[0]}.yaml"
        rounds_dir = out / "rounds"
        fed.run({"config-file": str(cfg_path), "out-dir": str(rounds_dir)})
        wait_round([infos[n]["control_endpoint"] for n in names], 1, fc.round_timeout_s * 2)
        fleets = [subprocess.Popen(fleet_command(infos[n]["endpoint"], c, samples, seed, f"{n}-b", rate=rate), stdout=subprocess.DEVNULL)
                  for n, c in zip(names, SPLIT)]
        # the fleets stop before the last round: after the last merge nothing is learned, and every
        # node is evaluated on exactly the global model it received
        wait_round([infos[n]["control_endpoint"] for n in names], fc.rounds - 1, fc.rounds * (fc.round_timeout_s + fc.round_interval_s))
        for f in fleets:
            f.terminate()
        log = wait_for_rounds(rounds_dir, fc.rounds, 120, fed)
        federated = {n: node_accuracy(evaluator, infos[n]["control_endpoint"])[0] for n in names}
    finally:
        for f in fleets:
            if f.poll() is None:
                f.terminate()
                f.wait(30)
        fed.close()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait(60)
    report = {
        "rounds": fc.rounds,
        "strategy": fc.strategy,
        "nodes": [{"name": n, "classes_streamed": list(c), "isolated_accuracy": round(isolated[n], 4),
                   "federated_accuracy": round(federated[n], 4)} for n, c in zip(names, SPLIT)],
        "round_log": log["rounds"],
        "wall_seconds": round(time.monotonic() - started, 1),
        "chance": 1.0 / config.model.num_classes,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    return report


def print_table(report: dict[str, Any]) -> None:
    print(f"\nfederation demo: {len(report['nodes'])} edge nodes, {report['rounds']} rounds of {report['strategy']} on Flower "
          f"(held-out accuracy on ALL classes, chance {report['chance']:.2f})")
    print(f"  {'node':<6} {'classes streamed':<18} {'isolated':>9} {'federated':>10}")
    for n in report["nodes"]:
        print(f"  {n['name']:<6} {','.join(map(str, n['classes_streamed'])):<18} {n['isolated_accuracy']:>9.3f} {n['federated_accuracy']:>10.3f}")
    for r in report["round_log"]:
        print(f"  round {r['round']}: {r['replies']} replies, {r['failures']} failed, "
              f"{(r['bytes_up'] + r['bytes_down']) / 1024:.0f} KiB moved, {r['seconds']:.1f} s")
    print(f"  wall time {report['wall_seconds']:.0f} s")


def demo_config(path: str | None, overrides: list[str]) -> Config:
    """The demo's defaults (:data:`DEMO_OVERRIDES`) under ``--config`` / ``--set``."""
    from edge_runtime.core.config import load_config

    return load_config(path, overrides, defaults=DEMO_OVERRIDES)
