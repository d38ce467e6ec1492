"""Selection cost of every policy, per incoming sample, relative to one plain forward pass.

Streams the same class-incremental synthetic samples through a fresh ``Learner`` per policy (the
learner's own phase timers: ``select`` = prototypes + confidences + the policy's scoring and
selection; ``buffer`` = replay planning (BSS re-scoring, DUS) + admission) and, interleaved in the
same run, times a plain no-grad forward of the same model on the same micro-batches.  Prints one
table: per policy, microseconds per sample of selection and replay planning, and the ratio to the
forward pass (1.0 = selection costs as much as one more forward of the sample).

Usage: python benchmarks/policy_cost.py [--samples 1280] [--batch-size 32] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from device_sim.datasets.synthetic import SyntheticDataset
from device_sim.scenario import class_incremental
from edge_runtime.learning.batch import collate
from edge_runtime.core.config import config_from_dict
from edge_runtime.learning.learner import Learner

#: (label, config overrides) of every policy the runtime ships.
POLICIES: list[tuple[str, dict]] = [
    ("all (BASE)", {"selection": {"policy": "all"}}),
    ("random", {"selection": {"policy": "random"}}),
    ("mbs", {"selection": {"policy": "mbs"}}),
    ("mbs running centre", {"selection": {"policy": "mbs", "center": "running"}}),
    ("el2n", {"selection": {"policy": "el2n"}}),
    ("grand last layer", {"selection": {"policy": "grand"}}),
    ("grand all params", {"selection": {"policy": "grand", "grad_params": "all"}}),
    ("bmmal", {"selection": {"policy": "bmmal"}}),
    ("bss heuristic (replay)", {"replay": {"policy": "bss"}}),
    ("bss learned (replay)", {"replay": {"policy": "bss", "variant": "learned"}}),
    ("dus (replay)", {"replay": {"policy": "dus"}}),
    ("reservoir retention", {"selection": {"policy": "all"}, "buffer": {"retention": "reservoir"}}),
]


def forward_seconds(learner: Learner, chunk: list) -> float:
    """Seconds of one no-grad forward of ``learner``'s model on ``chunk`` (collation included)."""
    start = time.perf_counter()
    with torch.no_grad():
        learner.model(*collate(chunk).inputs())
    return time.perf_counter() - start


def measure(n: int, batch_size: int = 32, progress: bool = True) -> list[dict]:
    """One row per policy: microseconds per sample of forward, selection and replay planning, and the ratios."""
    ds = SyntheticDataset(size=n)
    order = class_incremental(ds.labels(), 2, seed=0)
    samples = []
    for seq, i in enumerate(order.indices.tolist()):
        s = ds.sample(int(i))
        s.device, s.seq = "bench", seq
        samples.append(s)
    rows = []
    for label, overrides in tqdm(POLICIES, desc="policies", unit="policy", disable=not progress):
        learner = Learner(config_from_dict(overrides))
        fwd = 0.0
        for i in range(0, n, batch_size):
            chunk = samples[i : i + batch_size]
            fwd += forward_seconds(learner, chunk)
            learner.observe(chunk)
        t = learner.times
        rows.append({
            "policy": label,
            "forward_us": 1e6 * fwd / n,
            "select_us": 1e6 * t.select / n,
            "replay_buffer_us": 1e6 * t.buffer / n,
            "select_ratio": t.select / fwd,
            "total_ratio": (t.select + t.buffer) / fwd,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=1280, help="stream length per policy (default 1280)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None, help="also write policy_cost.csv here")
    ap.add_argument("--quick", action="store_true", help="320 samples per policy")
    args = ap.parse_args(argv)
    n = 320 if args.quick else args.samples
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = measure(n, args.batch_size)
    print(f"\npolicy_cost: {n} samples per policy, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'policy':<24} {'forward us/sample':>18} {'select us/sample':>17} {'replay+buffer us':>17} {'select/forward':>15} {'(select+buffer)/fwd':>20}")
    for r in rows:
        print(f"{r['policy']:<24} {r['forward_us']:>18.0f} {r['select_us']:>17.0f} {r['replay_buffer_us']:>17.0f} {r['select_ratio']:>15.2f} {r['total_ratio']:>20.2f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "policy_cost.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
