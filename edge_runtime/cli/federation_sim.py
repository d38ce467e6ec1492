"""``edge-node federation-sim``: a fleet of N simulated edge nodes federated on Flower's Simulation Engine.

Argument parsing and the printed summary; the work is in :mod:`edge_runtime.federation.simulation`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from edge_runtime.cli.helptext import HelpFormatter, epilog

#: tests/federation/test_simulation.py runs this example as written (the fleet scale runs: docs/federation.md)
EXAMPLES = [
    "edge-node federation-sim --nodes 5 --rounds 3 --samples-per-round 48 --dropout 0.15 --stragglers 0.15 --seed 26 "
    "--out fed-sim   # a few minutes on 2 cores",
]
INSTALL = "pip install -c constraints.txt -e '.[simulation]'"


def add_parser(sub: argparse._SubParsersAction, add_config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "federation-sim",
        help="N simulated edge nodes (each its own learner, buffer, prototypes) federated on Flower's Simulation Engine",
        description="Run --nodes simulated edge nodes on Flower's Simulation Engine (Ray): each streams --classes-per-node "
        "classes of the synthetic data set, --samples-per-round samples a round, keeps its learner, replay buffer, "
        "prototypes and KD teacher in OUT/nodes/node-K/ between rounds, and is merged by the same ServerApp round as "
        "`edge-node federate`. Prints per round the held-out accuracy on all classes (mean and worst node), bytes "
        "and seconds; then the references: isolated nodes (never merged) and one node that saw every stream. "
        f"Writes OUT/simulation.json. Needs Flower's simulation extra: {INSTALL}",
        formatter_class=HelpFormatter, epilog=epilog(EXAMPLES),
    )
    add_config_args(p)
    p.add_argument("--nodes", type=int, default=10, help="simulated edge nodes (default 10)")
    p.add_argument("--rounds", type=int, default=10, help="federated rounds (default 10)")
    p.add_argument("--samples-per-round", type=int, default=32, help="samples each node learns per round (default 32)")
    p.add_argument("--classes-per-node", type=int, default=2, help="classes each node streams (default 2 of 10)")
    p.add_argument("--dropout", type=float, default=0.0, help="chance a node is down in a round: no reply, no merge (default 0)")
    p.add_argument("--stragglers", type=float, default=0.0, help="chance a node's reply misses a round (default 0)")
    p.add_argument("--seed", type=int, default=0, help="data and availability seed (default 0)")
    p.add_argument("--test-samples", type=int, default=300, help="held-out samples of every class each node is measured on (default 300)")
    p.add_argument("--workers", type=int, default=None, help="Ray workers, one CPU each (default: the CPU count)")
    p.add_argument("--references", choices=["all", "isolated", "single", "none"], default="all",
                   help="also run the isolated nodes and the single node that saw everything (default all)")
    p.add_argument("--isolated-nodes", type=int, default=10, help="isolated reference over this many nodes (default 10; all if fewer)")
    p.add_argument("--out", metavar="DIR", default="federation-sim-out", help="node state folders and simulation.json (default federation-sim-out)")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")


def fleet_data(config: Any, plan: Any) -> Any:
    """The synthetic data set a fleet of ``plan`` streams: long enough for every node, the model's shapes."""
    from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset

    mc = config.model
    return SyntheticDataset(SyntheticConfig(num_classes=mc.num_classes, audio_features=mc.audio_features,
                                            channels=mc.visual_channels, seed=plan.seed, size=plan.stream_size()))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The closing table: federated (last round), isolated and single, mean and worst node."""
    last = result["rounds"][-1] if result["rounds"] else {}
    lines = [f"after {len(result['rounds'])} rounds, accuracy on all classes (held out):",
             f"  federated ({result['plan']['nodes']} nodes)   mean {_pct(last.get('accuracy_mean'))}   worst {_pct(last.get('accuracy_worst'))}"]
    refs = result.get("references", {})
    if "isolated" in refs:
        iso = refs["isolated"]["rounds"][-1]
        lines.append(f"  isolated ({iso['nodes']} nodes)     mean {_pct(iso['accuracy_mean'])}   worst {_pct(iso['accuracy_worst'])}")
    if "single" in refs:
        lines.append(f"  one node saw everything     {_pct(refs['single']['rounds'][-1]['accuracy_mean'])}")
    return lines


def run(args: argparse.Namespace) -> int:
    from edge_runtime.core.config import load_config
    from edge_runtime.federation.simulation.plan import SimPlan
    from edge_runtime.federation.simulation.run import SIM_OVERRIDES

    config = load_config(args.config, args.set, defaults=SIM_OVERRIDES)
    plan = SimPlan(nodes=args.nodes, rounds=args.rounds, samples_per_round=args.samples_per_round,
                   classes_per_node=args.classes_per_node, num_classes=config.model.num_classes, seed=args.seed,
                   dropout=args.dropout, stragglers=args.stragglers, test_samples=args.test_samples)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1 (got {args.workers})")
    try:
        import ray  # noqa: F401  (the Simulation Engine's backend)
    except ImportError:
        print(f"edge-node federation-sim: Flower's Simulation Engine is not installed; run: {INSTALL}", file=sys.stderr)
        return 2
    from edge_runtime.federation.simulation.run import reference, simulate

    out = Path(args.out).resolve()
    echo = lambda line: print(line, flush=True)  # noqa: E731
    started = time.monotonic()
    data = fleet_data(config, plan)
    result = simulate(config, plan, out, data, cpus=args.workers or os.cpu_count(), verbose=args.verbose, echo=echo)
    refs: dict[str, Any] = {}
    if args.references in ("all", "isolated"):
        refs["isolated"] = reference(config, plan, out, "isolated", data, nodes=list(range(min(args.isolated_nodes, plan.nodes))),
                                     echo=echo)
    if args.references in ("all", "single"):
        refs["single"] = reference(config, plan, out, "single", data, echo=lambda line: None)
    result["references"] = refs
    result["total_s"] = round(time.monotonic() - started, 1)
    (out / "simulation.json").write_text(json.dumps(result, indent=2))
    for line in summary_lines(result):
        print(line)
    print(f"{out / 'simulation.json'} written ({result['total_s']:.0f} s in all)")
    return 0
