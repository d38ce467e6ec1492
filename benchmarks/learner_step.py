"""Speed of ``Learner.observe`` on CPU against a plain PyTorch replay loop, and where its step time goes.

Streams pre-generated synthetic samples (class-incremental, micro-batches) through the learner
with the default configuration and, in the same process, through a plain PyTorch replay loop with
the same model and data (CE on every sample, random replay of the same size, no scoring): the
reference the learner is measured against.  The machine is noisy, so the two loops alternate in
chunks of the stream (A B A B ...: observe a chunk, then the plain loop on the same chunk), each
repeat starts both from scratch, and the ratio plain/observe time is reported per repeat with the
median, min and max over ``--repeats`` (default 5).  Also printed: samples/s of each (medians) and
the share of the learner's step time in MBS bookkeeping (prototypes + scoring + selection, buffer
sampling + admission) versus the model (forward, backward, optimiser) and collation.

Usage: python benchmarks/learner_step.py [--samples 3000] [--repeats 5] [--chunks 10] [--set KEY=VALUE ...] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset
from device_sim.scenario import class_incremental
from edge_runtime.learning.batch import collate
from edge_runtime.core.config import load_config
from edge_runtime.learning.learner import Learner, make_optimizer
from edge_runtime.learning.model import build_model


class PlainReplayLoop:
    """Reference: same model and data, CE on all incoming + a random replay batch, reservoir-style memory."""

    def __init__(self, config) -> None:
        torch.manual_seed(config.training.seed)
        self.model = build_model(config.model)
        self.opt = make_optimizer(config.training, self.model.parameters())
        self.memory: list = []
        self.rng = random.Random(0)
        self.cap, self.k = config.buffer.max_items, config.buffer.replay_batch_size

    def observe(self, chunk: list) -> None:
        """One micro-batch: one optimiser step."""
        b = collate(chunk)
        loss = F.cross_entropy(self.model(*b.inputs()).logits, b.labels)
        if self.memory and self.k:
            rb = collate(self.rng.sample(self.memory, min(self.k, len(self.memory))))
            loss = loss + F.cross_entropy(self.model(*rb.inputs()).logits, rb.labels)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.opt.step()
        for s in chunk:  # reservoir-style fill, no scoring
            if len(self.memory) < self.cap:
                self.memory.append(s)
            else:
                self.memory[self.rng.randrange(len(self.memory))] = s


def _timed(loop, batches: list[list]) -> float:
    start = time.perf_counter()
    for b in batches:
        loop.observe(b)
    return time.perf_counter() - start


def measure(config, n: int = 3000, batch_size: int = 32, progress: bool = True, repeats: int = 1, chunks: int = 10) -> dict:
    """Observe vs plain loop on ``n`` class-incremental synthetic samples, alternated in ``chunks`` per repeat.

    Returns the median ``ratio`` (plain seconds / observe seconds; 1.0 = as fast) with ``ratio_min``,
    ``ratio_max`` and every repeat's ``ratios``, median samples/s of each loop and the learner's step shares.
    """
    mc = config.model
    ds = SyntheticDataset(SyntheticConfig(num_classes=mc.num_classes, audio_features=mc.audio_features, channels=mc.visual_channels, size=n))
    order = class_incremental(ds.labels(), 2, seed=0)
    samples = [ds.sample(int(i)) for i in tqdm(order.indices, desc="generating", unit="sample", disable=not progress)]
    for seq, s in enumerate(samples):
        s.device, s.seq = "bench", seq
    batches = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
    per_chunk = max(1, -(-len(batches) // max(1, chunks)))
    parts = [batches[i : i + per_chunk] for i in range(0, len(batches), per_chunk)]
    warm = Learner(config)  # first calls pay for allocator / kernel warm-up: keep them out of the timing
    warm_plain = PlainReplayLoop(config)
    for b in batches[:4]:
        warm.observe(b)
        warm_plain.observe(b)
    ratios, observe_rates, plain_rates = [], [], []
    learner = None
    bar = tqdm(total=repeats * len(parts), desc="A/B chunks", unit="chunk", disable=not progress)
    for _ in range(repeats):
        learner, plain = Learner(config), PlainReplayLoop(config)
        observe_s = plain_s = 0.0
        for part in parts:  # A B A B ...
            observe_s += _timed(learner, part)
            plain_s += _timed(plain, part)
            bar.update(1)
        ratios.append(plain_s / observe_s)
        observe_rates.append(len(samples) / observe_s)
        plain_rates.append(len(samples) / plain_s)
    bar.close()
    t = learner.times.as_dict()
    step = sum(t.values())
    return {"samples": len(samples), "repeats": repeats, "chunks": len(parts), "observe_per_s": statistics.median(observe_rates),
            "plain_per_s": statistics.median(plain_rates), "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "ratios": ratios, "shares": {k: v / step for k, v in t.items()},
            "bookkeeping_share": (t["select"] + t["buffer"]) / step}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="repeats, each from scratch (median, min, max reported)")
    ap.add_argument("--chunks", type=int, default=10, help="chunks per repeat in which the two loops alternate")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="also write learner_step.json (every figure printed, and each repeat's ratio) here")
    ap.add_argument("--quick", action="store_true", help="320 samples, 2 repeats x 4 chunks: a smoke run, not a measurement")
    args = ap.parse_args(argv)
    config = load_config(args.config, args.set)
    if args.quick:
        args.samples, args.repeats, args.chunks = 320, 2, 4
    if args.repeats < 1 or args.chunks < 1:
        ap.error("--repeats and --chunks must be >= 1")
    r = measure(config, args.samples, args.batch_size, repeats=args.repeats, chunks=args.chunks)
    print(f"\nlearner_step: {r['samples']} samples, batch {args.batch_size}, policy {config.selection.policy}, "
          f"kd_lambda {config.training.kd_lambda}, torch threads {torch.get_num_threads()}, "
          f"{r['repeats']} repeats x {r['chunks']} alternating chunks")
    print(f"  observe            {r['observe_per_s']:8.0f} samples/s (median)")
    print(f"  plain replay loop  {r['plain_per_s']:8.0f} samples/s (median)")
    print(f"  ratio observe/plain: median {r['ratio']:.3f}  min {r['ratio_min']:.3f}  max {r['ratio_max']:.3f}  "
          f"(each: {', '.join(f'{x:.3f}' for x in r['ratios'])})")
    print("  share of step time:")
    for name, label in (("model", "forward/backward/step"), ("data", "collation"), ("select", "prototypes+scoring+selection"), ("buffer", "buffer sample+admit")):
        print(f"    {label:<30} {100 * r['shares'][name]:5.1f} %")
    print(f"  MBS bookkeeping (scoring+selection+buffer): {100 * r['bookkeeping_share']:.1f} % of the step (goal < 10 %)")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        record = {**r, "batch_size": args.batch_size, "policy": config.selection.policy, "torch_threads": torch.get_num_threads()}
        (args.out / "learner_step.json").write_text(json.dumps(record, indent=2))
        print(f"  wrote {args.out / 'learner_step.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
