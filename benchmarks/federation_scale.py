"""Federation at fleet scale: N simulated edge nodes on Flower's Simulation Engine (issue 25 items 1-2).

For each N of ``--nodes`` and each dropout arm of ``--dropout``, runs ``edge-node federation-sim``'s
work (:func:`edge_runtime.federation.simulation.run.simulate`: synthetic data, each node 2 of 10
classes, ``--samples-per-round`` samples a round, ``--rounds`` rounds), then its references:
isolated nodes (each alone, never merged; ``--isolated-nodes`` of them) and one node that streamed
the union of every node's slices. A dropout arm ``p`` makes a node down with probability ``p`` and
late (its reply misses the round) with probability ``p / 2`` in each round.

Writes, into ``--out``:

* ``results.csv``: one row per (nodes, dropout, arm, round): held-out accuracy on all classes
  (mean and worst node), on the nodes' unseen classes, bytes and seconds of the round;
* ``scale.csv``: one row per (nodes, dropout): wall time, median seconds per round (round 1 holds
  the Ray workers' start), bytes per round, peak memory of a Ray worker and of this process
  (the ServerApp runs here), disk per node; and their extrapolation to 1,000 nodes;
* ``accuracy_vs_round.png`` (one panel per N), ``scale.png`` (seconds and MiB per round vs N).

Each (nodes, dropout) arm keeps its folder (``n<N>-d<p>/``); an arm whose ``simulation.json`` is
complete is not run again, so an interrupted run resumes.

    .venv/bin/python benchmarks/federation_scale.py --out docs/results/federation_scale
    .venv/bin/python benchmarks/federation_scale.py --quick --out /tmp/fs      # 4 nodes, 2 rounds
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import plt_figure  # noqa: E402

RESULT_FIELDS = ["nodes", "dropout", "arm", "round", "accuracy_mean", "accuracy_worst", "unseen_mean", "merged", "bytes", "seconds"]
SCALE_FIELDS = ["nodes", "dropout", "rounds", "wall_s", "seconds_round_median", "seconds_round_min", "seconds_round_max",
                "seconds_first_round", "mib_round", "worker_peak_rss_mb", "driver_peak_rss_mb", "node_disk_mb",
                "final_federated_mean", "final_federated_worst", "final_isolated_mean", "final_isolated_worst", "final_single"]


def run_arm(nodes: int, dropout: float, args: argparse.Namespace, out: Path) -> dict:
    """One (nodes, dropout) arm: the simulation and its references; cached in ``out/n<N>-d<p>/simulation.json``."""
    from edge_runtime.cli.federation_sim import fleet_data
    from edge_runtime.core.config import load_config
    from edge_runtime.federation.simulation.plan import SimPlan
    from edge_runtime.federation.simulation.run import SIM_OVERRIDES, reference, simulate

    folder = out / f"n{nodes}-d{dropout:g}"
    done = folder / "simulation.json"
    if done.exists():
        cached = json.loads(done.read_text())
        if "references" in cached:
            print(f"{folder.name}: done before, kept")
            return cached
    config = load_config(args.config, args.set, defaults=SIM_OVERRIDES)
    plan = SimPlan(nodes=nodes, rounds=args.rounds, samples_per_round=args.samples_per_round, seed=args.seed,
                   dropout=dropout, stragglers=dropout / 2, test_samples=args.test_samples)
    started = time.monotonic()
    data = fleet_data(config, plan)
    result = simulate(config, plan, folder, data, cpus=args.workers)
    refs = {"isolated": reference(config, plan, folder, "isolated", data, nodes=list(range(min(args.isolated_nodes, nodes)))),
            "single": reference(config, plan, folder, "single", data, echo=lambda line: None)}
    result["references"] = refs
    result["driver_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result["total_s"] = round(time.monotonic() - started, 1)
    done.write_text(json.dumps(result, indent=2))
    return result


def rows_of(nodes: int, dropout: float, result: dict) -> list[dict]:
    rows = [{"nodes": nodes, "dropout": dropout, "arm": "federated", "round": r["round"], "accuracy_mean": r["accuracy_mean"],
             "accuracy_worst": r["accuracy_worst"], "unseen_mean": r["unseen_mean"], "merged": r["merged"],
             "bytes": r["bytes"], "seconds": r["seconds"]} for r in result["rounds"]]
    for arm, ref in result["references"].items():
        rows += [{"nodes": nodes, "dropout": dropout, "arm": arm, "round": r["round"], "accuracy_mean": r["accuracy_mean"],
                  "accuracy_worst": r["accuracy_worst"], "unseen_mean": r.get("unseen_mean"), "merged": "", "bytes": "",
                  "seconds": ""} for r in ref["rounds"]]
    return rows


def scale_row(nodes: int, dropout: float, result: dict) -> dict:
    rounds = result["rounds"]
    later = [r["seconds"] for r in rounds[1:]] or [rounds[0]["seconds"]]
    iso, single = result["references"]["isolated"]["rounds"][-1], result["references"]["single"]["rounds"][-1]
    return {"nodes": nodes, "dropout": dropout, "rounds": len(rounds), "wall_s": result["wall_s"],
            "seconds_round_median": float(np.median(later)), "seconds_round_min": float(np.min(later)),
            "seconds_round_max": float(np.max(later)), "seconds_first_round": rounds[0]["seconds"],
            "mib_round": float(np.median([r["bytes"] for r in rounds])) / 2**20,
            "worker_peak_rss_mb": max(r["worker_peak_rss_mb"] or 0 for r in rounds),
            "driver_peak_rss_mb": result.get("driver_peak_rss_mb"),
            "node_disk_mb": max(r["node_disk_bytes"] or 0 for r in rounds) / 2**20,
            "final_federated_mean": rounds[-1]["accuracy_mean"], "final_federated_worst": rounds[-1]["accuracy_worst"],
            "final_isolated_mean": iso["accuracy_mean"], "final_isolated_worst": iso["accuracy_worst"],
            "final_single": single["accuracy_mean"]}


def extrapolate(scale: list[dict], target: int = 1000) -> dict:
    """Seconds and MiB per round at ``target`` nodes: a least-squares line through the measured N (no dropout)."""
    pts = [s for s in scale if s["dropout"] == 0]
    if len(pts) < 2:
        return {}
    n = np.array([s["nodes"] for s in pts], dtype=float)
    out = {"nodes": target}
    for key in ("seconds_round_median", "mib_round"):
        slope, icept = np.polyfit(n, [s[key] for s in pts], 1)
        out[key] = float(slope * target + icept)
    out["node_disk_mb_total"] = float(max(s["node_disk_mb"] for s in pts) * target)
    return out


def plot(rows: list[dict], scale: list[dict], extra: dict, out: Path) -> None:
    ns = sorted({r["nodes"] for r in rows})
    plt, fig, axes = plt_figure(len(ns), 4.2, 3.6)
    styles = {("federated", 0.0): ("C0", "-"), ("isolated", 0.0): ("C3", "-"), ("single", 0.0): ("k", ":")}
    for ax, n in zip(axes, ns):
        arms = sorted({(r["arm"], r["dropout"]) for r in rows if r["nodes"] == n})
        base = min(d for _, d in arms)
        for (arm, d) in arms:
            if arm != "federated" and d != base:
                continue  # the references never merge: the same in every dropout arm
            pts = [r for r in rows if r["nodes"] == n and r["arm"] == arm and r["dropout"] == d]
            x = [r["round"] for r in pts]
            color, ls = styles.get((arm, d), ("C2", "--"))
            label = arm if d == 0 else f"{arm}, down {d:g} + late {d / 2:g}"
            ax.plot(x, [100 * r["accuracy_mean"] for r in pts], color=color, ls=ls, marker="o", ms=3, label=f"{label} (mean)")
            if arm != "single":
                ax.plot(x, [100 * r["accuracy_worst"] for r in pts], color=color, ls=ls, alpha=0.45, lw=1, label=f"{label} (worst node)")
        ax.set_title(f"{n} nodes")
        ax.set_xlabel("round")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy on all 10 classes (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(len(labels), 4))
    fig.subplots_adjust(bottom=0.3)
    fig.suptitle("Federated vs isolated nodes (each streams 2 of 10 classes) vs one node that saw everything", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(out / "accuracy_vs_round.png", dpi=130)
    plt.close(fig)

    base = sorted((s for s in scale if s["dropout"] == 0), key=lambda s: s["nodes"])
    if not base:
        return
    plt, fig, axes = plt_figure(2, 4.5, 3.6)
    for ax, key, label in ((axes[0], "seconds_round_median", "seconds per round (median, rounds 2+)"),
                           (axes[1], "mib_round", "MiB moved per round")):
        ax.plot([s["nodes"] for s in base], [s[key] for s in base], "o-", label="measured (2 Ray workers)")
        if extra:
            ax.plot([base[-1]["nodes"], extra["nodes"]], [base[-1][key], extra[key]], "o--", color="C1", label="linear extrapolation")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Simulated fleet cost vs size (this 2-core machine)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=130)
    plt.close(fig)


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/out/federation_scale", help="folder for the CSVs, plots and node states")
    p.add_argument("--nodes", default="10,30,100", help="fleet sizes (default 10,30,100)")
    p.add_argument("--dropout", default="0,0.2", help="dropout arms: down with p, late with p/2 (default 0,0.2)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--samples-per-round", type=int, default=32)
    p.add_argument("--test-samples", type=int, default=300)
    p.add_argument("--isolated-nodes", type=int, default=10)
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: the CPU count)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--arms", default=None, metavar="N:P,...",
                   help="explicit (nodes:dropout) arms instead of every --nodes x --dropout pair, e.g. 10:0,100:0,10:0.2")
    p.add_argument("--quick", action="store_true", help="4 nodes, 2 rounds, no dropout arm (a smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.dropout, args.rounds = "4", "0", 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    scale: list[dict] = []
    if args.arms:
        arms = [(int(a.split(":")[0]), float(a.split(":")[1])) for a in args.arms.split(",")]
    else:
        arms = [(int(n), float(d)) for n in args.nodes.split(",") for d in args.dropout.split(",")]
    for nodes, dropout in arms:
        result = run_arm(nodes, dropout, args, out)
        rows += rows_of(nodes, dropout, result)
        scale.append(scale_row(nodes, dropout, result))
        write_csv(out / "results.csv", RESULT_FIELDS, rows)
        write_csv(out / "scale.csv", SCALE_FIELDS, scale)
    extra = extrapolate(scale)
    (out / "extrapolation.json").write_text(json.dumps(extra, indent=2))
    plot(rows, scale, extra, out)
    for s in scale:
        print(f"N={s['nodes']:>4} dropout {s['dropout']:.2f}: federated {100 * s['final_federated_mean']:.1f} % "
              f"(worst {100 * s['final_federated_worst']:.1f} %), isolated {100 * s['final_isolated_mean']:.1f} % "
              f"(worst {100 * s['final_isolated_worst']:.1f} %), single {100 * s['final_single']:.1f} %; "
              f"{s['seconds_round_median']:.1f} s and {s['mib_round']:.1f} MiB per round, {s['wall_s']:.0f} s in all")
    if extra:
        print(f"1,000 nodes (extrapolated): {extra['seconds_round_median']:.0f} s and {extra['mib_round']:.0f} MiB per round, "
              f"{extra['node_disk_mb_total']:.0f} MB of node state on disk")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
