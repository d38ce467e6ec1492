"""Run a simulated fleet on Flower's Simulation Engine, and the two references it is judged against.

:func:`simulate` writes the fleet's files into ``sim_dir`` (``config.yaml``, ``plan.json``,
``shares.npz``), starts ``flwr.simulation.run_simulation`` with ``plan.nodes`` SuperNodes (Ray
backend, one CPU per ClientApp worker), prints one line per round and returns (and writes to
``simulation.json``) the per-round results: accuracy on all classes (mean and worst node), on the
nodes' own and unseen classes, bytes, seconds, nodes merged, peak memory.

:func:`reference` runs, in this process and through the same :class:`SimNode`, what federation is
compared with: ``isolated`` (each node alone on its own stream, never merged; over a sample of the
nodes when there are many) and ``single`` (one node that streams the union of all nodes' slices,
round by round: everything the fleet saw, in one place).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from edge_runtime.core.config import Config
from edge_runtime.federation.simulation.plan import FleetData, SimPlan, shares

log = logging.getLogger("edge_runtime.federation")

#: The simulation's defaults under the user's --config / --set: the federation demo's small model, and a
#: round timeout long enough for 100 nodes on two workers (the engine runs every message; none is lost).
SIM_OVERRIDES: dict[str, Any] = {
    "model": {"embed_dim": 32, "audio_channels": 32, "tiny_channels": 8},
    "node": {"batch_size": 16},
    "buffer": {"max_items": 100},
    "selection": {"train_on": "all"},
    "training": {"replay_steps": 2, "lr": 0.003},
    "federation": {"rounds": 10, "min_nodes": 1, "round_timeout_s": 3600.0},
    "num_threads": 1,
}


def prepare(config: Config, plan: SimPlan, sim_dir: Path, data: FleetData) -> None:
    """Write the files every worker reads: ``config.yaml``, ``plan.json``, ``shares.npz`` (a fresh ``nodes/``)."""
    if plan.num_classes != config.model.num_classes:
        raise ValueError(f"the plan has {plan.num_classes} classes, model.num_classes is {config.model.num_classes}")
    sim_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(sim_dir / "nodes", ignore_errors=True)
    for stale in ("rounds.json", "done.json", "global.npz", "simulation.json"):
        (sim_dir / stale).unlink(missing_ok=True)
    (sim_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    (sim_dir / "plan.json").write_text(plan.to_json())
    labels = data.labels()
    if len(labels) < plan.stream_size():
        raise ValueError(f"the data set's stream has {len(labels)} samples; this plan needs {plan.stream_size()}")
    np.savez(sim_dir / "shares.npz", **{f"node{k}": s for k, s in enumerate(shares(plan, labels))})


def summarise(entry: dict[str, Any]) -> dict[str, Any]:
    """One round of ``rounds.json`` reduced to what is printed and plotted."""
    nodes = entry.get("node_metrics", [])
    acc = [float(m["accuracy"]) for m in nodes]
    unseen = [float(m["accuracy-unseen"]) for m in nodes if not math.isnan(float(m["accuracy-unseen"]))]
    return {
        "round": entry["round"], "nodes_reporting": len(nodes),
        "merged": entry.get("merged_into", 0), "replies": entry.get("replies", 0), "failures": entry.get("failures", 0),
        "accuracy_mean": float(np.mean(acc)) if acc else None, "accuracy_worst": float(np.min(acc)) if acc else None,
        "unseen_mean": float(np.mean(unseen)) if unseen else None, "unseen_worst": float(np.min(unseen)) if unseen else None,
        "bytes": int(entry.get("bytes_up", 0) + entry.get("bytes_down", 0)), "seconds": float(entry.get("seconds", 0.0)),
        "worker_peak_rss_mb": max((float(m["peak-rss-mb"]) for m in nodes), default=None),
        "node_disk_bytes": max((int(m["disk-bytes"]) for m in nodes), default=None),
        "node_seconds_mean": float(np.mean([m["seconds"] for m in nodes])) if nodes else None,
    }


def round_line(s: dict[str, Any]) -> str:
    """One printed line per round."""
    def pct(v: float | None) -> str:
        return "  -  " if v is None else f"{100 * v:5.1f}"

    return (f"round {s['round']:>3}: accuracy on all classes mean {pct(s['accuracy_mean'])} % worst {pct(s['accuracy_worst'])} %"
            f" | unseen classes mean {pct(s['unseen_mean'])} % | merged {s['merged']}/{s['nodes_reporting']}"
            f" | {s['bytes'] / 2**20:7.2f} MiB | {s['seconds']:6.1f} s")


def _quiet_flower(verbose: bool) -> None:
    if not verbose:  # Flower logs every sampled node and a deprecation notice; the round lines say what matters
        logging.getLogger("flwr").setLevel(logging.ERROR)


def simulate(config: Config, plan: SimPlan, sim_dir: Path, data: FleetData, cpus: int | None = None, verbose: bool = False,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``plan`` on the Simulation Engine; returns and writes ``simulation.json``."""
    from flwr.simulation import run_simulation

    from edge_runtime.federation.simulation.apps import make_client_app, make_server_app

    sim_dir = Path(sim_dir).resolve()
    config = config.model_copy(update={"federation": config.federation.model_copy(update={"rounds": plan.rounds})})
    prepare(config, plan, sim_dir, data)
    cpus = cpus or os.cpu_count() or 1
    summaries: list[dict[str, Any]] = []

    def on_round(entry: dict[str, Any]) -> None:
        summaries.append(summarise(entry))
        echo(round_line(summaries[-1]))

    _quiet_flower(verbose)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs asked for: Ray's future default, without its warning
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "object_store_memory": 256 * 2**20,
                             "include_dashboard": False, "log_to_driver": verbose}}
    echo(f"federation-sim: {plan.nodes} nodes x {plan.rounds} rounds, {plan.samples_per_round} samples per node and round, "
         f"{plan.classes_per_node} of {plan.num_classes} classes each, dropout {plan.dropout}, stragglers {plan.stragglers}; "
         f"{cpus} Ray workers (starting)")
    started = time.monotonic()
    run_simulation(make_server_app(config, sim_dir, on_round), make_client_app(data), num_supernodes=plan.nodes, backend_config=backend,
                   verbose_logging=verbose)
    result = {"plan": json.loads(plan.to_json()), "workers": cpus, "wall_s": round(time.monotonic() - started, 1),
              "rounds": summaries}
    (sim_dir / "simulation.json").write_text(json.dumps(result, indent=2))
    return result


def reference(config: Config, plan: SimPlan, sim_dir: Path, arm: str, data: FleetData, nodes: list[int] | None = None,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """``isolated`` (each of ``nodes`` alone) or ``single`` (the union of all slices): accuracy per round."""
    from edge_runtime.federation.simulation.apps import Setting
    from edge_runtime.federation.simulation.node import SimNode

    sim_dir = Path(sim_dir).resolve()
    if not (sim_dir / "shares.npz").exists():
        prepare(config, plan, sim_dir, data)
    st = Setting(sim_dir, data)
    base = sim_dir / "reference" / arm
    shutil.rmtree(base, ignore_errors=True)
    per_round: list[dict[str, Any]] = []
    if arm == "single":
        node = SimNode(st.config, base / "all", name="all")
        everyone = range(plan.nodes)
        for rnd in range(1, plan.rounds + 1):
            samples = [s for k in everyone for s in st.samples(k, rnd)]
            np.random.default_rng([plan.seed, rnd]).shuffle(samples)  # the union, interleaved
            node.learn(samples)
            acc = node.evaluate(st.test, range(plan.num_classes))["accuracy"]
            per_round.append({"round": rnd, "accuracy_mean": acc, "accuracy_worst": acc, "nodes": 1})
            echo(f"single node, round {rnd}: accuracy on all classes {100 * acc:.1f} %")
        return {"arm": arm, "rounds": per_round}
    if arm != "isolated":
        raise ValueError(f"unknown reference arm {arm!r} (isolated | single)")
    chosen = list(range(plan.nodes)) if nodes is None else nodes
    accs = {k: [] for k in chosen}
    unseen = {k: [] for k in chosen}
    for k in chosen:
        node = SimNode(st.config, base / f"node-{k}", name=f"node-{k}")
        for rnd in range(1, plan.rounds + 1):
            node.learn(st.samples(k, rnd))
            m = node.evaluate(st.test, plan.classes(k))
            accs[k].append(m["accuracy"])
            unseen[k].append(m["accuracy-unseen"])
    for r in range(plan.rounds):
        a = [accs[k][r] for k in chosen]
        u = [unseen[k][r] for k in chosen if not math.isnan(unseen[k][r])]
        per_round.append({"round": r + 1, "accuracy_mean": float(np.mean(a)), "accuracy_worst": float(np.min(a)),
                          "unseen_mean": float(np.mean(u)) if u else None, "nodes": len(chosen)})
    last = per_round[-1]
    echo(f"isolated ({len(chosen)} nodes), after round {plan.rounds}: accuracy on all classes mean "
         f"{100 * last['accuracy_mean']:.1f} % worst {100 * last['accuracy_worst']:.1f} %")
    return {"arm": arm, "nodes": chosen, "rounds": per_round, "unseen": {k: unseen[k] for k in chosen}}
