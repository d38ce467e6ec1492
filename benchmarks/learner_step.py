"""Speed of ``Learner.observe`` on CPU, and where its step time goes.

Streams pre-generated synthetic samples (class-incremental, micro-batches) through the learner
with the default configuration and prints, from one run:

* samples/s of ``observe``;
* the share of step time spent in MBS bookkeeping (prototypes + scoring + selection, and buffer
  sampling + admission) versus the model (forward, backward, optimiser) and collation;
* the same model and data in a plain PyTorch replay loop (CE on every sample, random replay of
  the same size, no scoring), as the reference the learner is measured against (ratio).

Usage: python benchmarks/learner_step.py [--samples 3000] [--batch-size 32] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from device_sim.datasets.synthetic import SyntheticConfig, SyntheticDataset
from device_sim.scenario import class_incremental
from edge_runtime.batch import collate
from edge_runtime.config import load_config
from edge_runtime.learner import Learner
from edge_runtime.model import build_model


def plain_replay_loop(config, samples, batch_size: int) -> float:
    """Reference: same model and data, CE on all incoming + a random replay batch; returns seconds."""
    torch.manual_seed(config.training.seed)
    model = build_model(config.model)
    opt = torch.optim.Adam(model.parameters(), lr=config.training.lr)
    memory: list = []
    rng = random.Random(0)
    cap, k = config.buffer.max_items, config.buffer.replay_batch_size
    start = time.perf_counter()
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        b = collate(chunk)
        loss = F.cross_entropy(model(*b.inputs()).logits, b.labels)
        if memory and k:
            rb = collate(rng.sample(memory, min(k, len(memory))))
            loss = loss + F.cross_entropy(model(*rb.inputs()).logits, rb.labels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        for s in chunk:  # reservoir-style fill, no scoring
            if len(memory) < cap:
                memory.append(s)
            else:
                memory[rng.randrange(len(memory))] = s
    return time.perf_counter() - start


def measure(config, n: int = 3000, batch_size: int = 32, progress: bool = True) -> dict:
    """Observe vs plain loop on ``n`` class-incremental synthetic samples: samples/s, ratio, step shares."""
    mc = config.model
    ds = SyntheticDataset(SyntheticConfig(num_classes=mc.num_classes, audio_features=mc.audio_features, channels=mc.visual_channels, size=n))
    order = class_incremental(ds.labels(), 2, seed=0)
    samples = [ds.sample(int(i)) for i in tqdm(order.indices, desc="generating", unit="sample", disable=not progress)]
    for seq, s in enumerate(samples):
        s.device, s.seq = "bench", seq
    warm = Learner(config)  # first calls pay for allocator / kernel warm-up: keep them out of the timing
    for i in range(0, min(len(samples), 4 * batch_size), batch_size):
        warm.observe(samples[i : i + batch_size])
    learner = Learner(config)
    start = time.perf_counter()
    for i in tqdm(range(0, len(samples), batch_size), desc="observe", unit="batch", disable=not progress):
        learner.observe(samples[i : i + batch_size])
    observe_s = time.perf_counter() - start
    plain_s = plain_replay_loop(config, samples, batch_size)
    t = learner.times.as_dict()
    step = sum(t.values())
    return {"samples": len(samples), "observe_per_s": len(samples) / observe_s, "plain_per_s": len(samples) / plain_s,
            "ratio": plain_s / observe_s, "shares": {k: v / step for k, v in t.items()},
            "bookkeeping_share": (t["select"] + t["buffer"]) / step}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    config = load_config(args.config, args.set)
    r = measure(config, args.samples, args.batch_size)
    print(f"\nlearner_step: {r['samples']} samples, batch {args.batch_size}, policy {config.selection.policy}, torch threads {torch.get_num_threads()}")
    print(f"  observe            {r['observe_per_s']:8.0f} samples/s")
    print(f"  plain replay loop  {r['plain_per_s']:8.0f} samples/s   (ratio observe/plain = {r['ratio']:.2f})")
    print("  share of step time:")
    for name, label in (("model", "forward/backward/step"), ("data", "collation"), ("select", "prototypes+scoring+selection"), ("buffer", "buffer sample+admit")):
        print(f"    {label:<30} {100 * r['shares'][name]:5.1f} %")
    print(f"  MBS bookkeeping (scoring+selection+buffer): {100 * r['bookkeeping_share']:.1f} % of the step (goal < 10 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
