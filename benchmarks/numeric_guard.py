"""Cost of the learner's numeric guard (issue 24, G2) per update: guard on versus off, interleaved.

Two learners with the same configuration and seed learn the same synthetic stream in micro-batches,
one with ``Learner.numeric_guard`` on (snapshot, finite checks of outputs / loss / gradients /
state, the default) and one with it off. The machine is noisy, so they alternate micro-batch by
micro-batch (A B B A A B ...: the order flips every batch to cancel drift) and each repeat starts
both from scratch. Reported per repeat: the median time of one ``observe`` (one micro-batch, one
optimiser update with the default ``training.replay_steps: 1``) with the guard on and off, and the
overhead: the median over batches of (on - off) on the same batch, run back to back, in ms and in
percent of the median time off; then the median, min and max of those over the repeats.
At the end of each repeat the two models must be bitwise equal: on finite data the guard changes nothing.

Usage: python benchmarks/numeric_guard.py [--batches 60] [--batch-size 32] [--repeats 5] [--set KEY=VALUE ...] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset
from edge_runtime.core.config import load_config
from edge_runtime.learning.learner import Learner


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_repeat(args: argparse.Namespace, samples: list) -> dict:
    """Both learners from scratch over the stream; median seconds per observe of each."""
    overrides = list(args.set) + [f"device={args.device}"]
    on, off = Learner(load_config(None, overrides)), Learner(load_config(None, overrides))
    off.numeric_guard = False
    times: dict[str, list[float]] = {"on": [], "off": []}
    warmup = 3
    for b in range(args.batches):
        chunk = samples[b * args.batch_size : (b + 1) * args.batch_size]
        order = [("on", on), ("off", off)] if b % 2 == 0 else [("off", off), ("on", on)]
        for name, learner in order:
            _sync(learner.device)
            t0 = time.perf_counter()
            learner.observe(chunk)
            _sync(learner.device)
            if b >= warmup:
                times[name].append(time.perf_counter() - t0)
    same = all(torch.equal(a, b) for a, b in zip(on.model.state_dict().values(), off.model.state_dict().values()))
    med_on, med_off = statistics.median(times["on"]), statistics.median(times["off"])
    paired = statistics.median(a - b for a, b in zip(times["on"], times["off"]))  # same batch, adjacent in time
    return {"on_ms": 1e3 * med_on, "off_ms": 1e3 * med_off, "overhead_ms": 1e3 * paired,
            "overhead_pct": 100.0 * paired / med_off, "updates": on.stats.updates, "models_equal": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=60, help="micro-batches per repeat (the first 3 are warm-up)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = ap.parse_args(argv)
    if args.batches <= 3:
        ap.error("--batches must be more than the 3 warm-up batches")
    data = SyntheticDataset(SyntheticConfig(size=args.batches * args.batch_size, seed=0))
    samples = [data.sample(i) for i in range(args.batches * args.batch_size)]
    for i, s in enumerate(samples):
        s.device, s.seq = "bench", i
    rows = []
    for r in range(args.repeats):
        row = one_repeat(args, samples)
        rows.append(row)
        print(f"repeat {r}: guard on {row['on_ms']:.2f} ms, off {row['off_ms']:.2f} ms per update; overhead "
              f"{row['overhead_ms']:+.3f} ms ({row['overhead_pct']:+.1f} %); models equal: {row['models_equal']}", flush=True)
    summary = {"device": args.device, "batch_size": args.batch_size, "batches": args.batches, "repeats": args.repeats,
               "torch_threads": torch.get_num_threads()}
    for key in ("on_ms", "off_ms", "overhead_ms", "overhead_pct"):
        values = [row[key] for row in rows]
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    summary["models_equal"] = all(row["models_equal"] for row in rows)
    print(json.dumps(summary, indent=1))
    return 0 if summary["models_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
