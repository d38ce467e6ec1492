"""Throughput in one table: node ingest vs raw pyzmq, learner step vs a plain loop, policy selection cost.

One run measures, on this machine and at the same time of day (the ratios are what matter; the
machines are shared and noisy):

* ingest: samples/s of the node (no-op learner, real SQLite ledger) and of raw PUSH/PULL of the
  same ~140 KB payload (benchmarks/ingest.py), ratio node/raw (bar: 0.6, aim 0.8);
* learner: samples/s of ``Learner.observe`` and of a plain PyTorch replay loop with the same
  model and data (benchmarks/learner_step.py), ratio (bar: 0.9) and the bookkeeping share;
* policy cost: selection and replay-planning time per sample relative to one forward pass, for
  every policy (benchmarks/policy_cost.py).

Writes ``throughput.csv`` (metric, value, unit) and ``throughput.png``.

Usage: python benchmarks/throughput.py --out docs/results/throughput [--quick]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import plt_figure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/results/throughput"))
    ap.add_argument("--quick", action="store_true", help="small runs (about a minute)")
    ap.add_argument("--ingest-samples", type=int, default=20000)
    ap.add_argument("--learner-samples", type=int, default=3000)
    ap.add_argument("--policy-samples", type=int, default=1280)
    args = ap.parse_args(argv)
    if args.quick:
        args.ingest_samples, args.learner_samples, args.policy_samples = 2000, 480, 160
    import torch
    from tqdm import tqdm

    from benchmarks import ingest, learner_step, policy_cost
    from edge_runtime.core.config import Config

    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows: list[tuple[str, float, str]] = []
    with tqdm(total=4, desc="throughput", unit="part") as bar:
        raw = ingest.raw_push_pull(args.ingest_samples)
        bar.update(1)
        with tempfile.TemporaryDirectory() as state:
            node, _ = ingest.node_ingest(args.ingest_samples, 1, 256, state)
        bar.update(1)
        rows += [("ingest raw PUSH/PULL", raw, "samples/s"), ("ingest node", node, "samples/s"), ("ingest ratio node/raw", node / raw, "x")]
        ls = learner_step.measure(Config(), args.learner_samples, progress=False)
        bar.update(1)
        rows += [("learner observe", ls["observe_per_s"], "samples/s"), ("plain replay loop", ls["plain_per_s"], "samples/s"),
                 ("learner ratio observe/plain", ls["ratio"], "x"), ("MBS bookkeeping share of step", ls["bookkeeping_share"], "fraction")]
        costs = policy_cost.measure(args.policy_samples, progress=False)
        bar.update(1)
    for c in costs:
        rows.append((f"policy {c['policy']}: (select+replay)/forward", c["total_ratio"], "x"))
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "throughput.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "value", "unit"])
        for name, value, unit in rows:
            w.writerow([name, f"{value:.4g}", unit])
    print(f"{'metric':<52} {'value':>10}  unit")
    for name, value, unit in rows:
        print(f"{name:<52} {value:>10.3g}  {unit}")

    plt, fig, axes = plt_figure(2, width=6.0, height=4.4)
    ax = axes[0]
    names = ["ingest\nnode/raw", "learner\nobserve/plain"]
    vals = [node / raw, ls["ratio"]]
    ax.bar(names, vals, color=["tab:blue", "tab:green"])
    for x, (v, bar_) in enumerate(zip(vals, (0.6, 0.9))):
        ax.hlines(bar_, x - 0.4, x + 0.4, colors="red", linestyles="--", label="target" if x == 0 else None)
        ax.text(x, v + 0.02, f"{v:.2f}", ha="center")
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("throughput ratio (same run, same payload)")
    ax.set_title("runtime vs bare baseline (higher is better)")
    ax.legend()
    ax = axes[1]
    labels = [c["policy"] for c in costs]
    ax.barh(labels, [c["total_ratio"] for c in costs], color="tab:orange")
    ax.set_xscale("log")
    ax.set_xlabel("selection + replay planning time / one forward pass (per sample, log scale)")
    ax.set_title("policy cost per incoming sample")
    ax.invert_yaxis()
    fig.suptitle("edge-runtime throughput on this machine (one run)")
    fig.tight_layout()
    fig.savefig(args.out / "throughput.png", dpi=85)
    plt.close(fig)
    print(f"wrote {args.out / 'throughput.csv'} and {args.out / 'throughput.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
