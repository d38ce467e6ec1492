"""Federation of 3 edge nodes on AV-Digits: accuracy on all 10 digits per node vs round, bytes and seconds per round.

Splits: ``class`` (node 0 streams digits 0-3, node 1 digits 3-6, node 2 digits 6-9: every node
misses most digits) and ``iid`` (random thirds). Arms, on the same streams:

* ``federated``: the 3 nodes learn their streams in ``--rounds`` equal slices; after each slice the
  nodes' shared arrays (weights, prototypes, per-class counts) are averaged with Flower's own
  ``aggregate_arrayrecords`` (FedAvg weighted by samples learned in the round), prototypes merged
  per class by counts, and put back into every node;
* ``isolated``: the same 3 nodes, never merged (the lower reference);
* ``single``: one node that receives the union of the three streams (the upper reference).

The learners run in this process, through the same code the daemons use for a get / put
(``edge_runtime.federation.node_link.learner_arrays`` / ``apply_global``, ``arrays.merge_prototypes``);
the Flower processes (SuperLink, SuperNodes, ClientApps) are left out because they only move these
arrays, and their overhead on this machine (seconds per round of polling and process start-up) is
reported by ``tests/federation/test_federation.py`` and docs/federation.md instead. ``bytes_round`` is what a round
moves over Flower: each node's arrays up and the global arrays down.

    .venv/bin/python benchmarks/federation.py --out benchmarks/out/federation          # full (minutes)
    .venv/bin/python benchmarks/federation.py --quick --out /tmp/fed                   # seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import ResumableCSV, load_avdigits, plt_figure  # noqa: E402

FIELDS = ["split", "arm", "round", "node", "classes", "samples", "accuracy", "bytes_round", "seconds_round"]
CLASS_SPLIT = [(0, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9)]


def shares(labels: np.ndarray, split: str, seed: int, limit: int | None) -> list[np.ndarray]:
    """Stream indices of each of the 3 nodes (shuffled; ``class``: overlapping digit ranges, ``iid``: thirds)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    if split == "iid":
        parts = [order[i::3] for i in range(3)]
    else:
        parts = []
        for k, classes in enumerate(CLASS_SPLIT):
            mine = order[np.isin(labels[order], classes)]
            # a shared digit is split between its two nodes, so no sample is streamed twice
            shared = [c for c in classes if any(c in other for j, other in enumerate(CLASS_SPLIT) if j != k)]
            keep = np.ones(len(mine), dtype=bool)
            for c in shared:
                pos = np.nonzero(labels[mine] == c)[0]
                first_owner = min(j for j, other in enumerate(CLASS_SPLIT) if c in other)
                keep[pos[1::2] if k == first_owner else pos[0::2]] = False
            parts.append(mine[keep])
    return [p[:limit] if limit else p for p in parts]


def make_learner(config_path: str, overrides: list[str], seed: int):
    import torch
    import yaml

    from edge_runtime.core.config import _merge, config_from_dict, parse_overrides
    from edge_runtime.learning.learner import Learner

    torch.set_num_threads(1)
    base = yaml.safe_load(Path(config_path).read_text()) if config_path else {}
    cfg = _merge(_merge(base or {}, {"training": {"seed": seed}}), parse_overrides(overrides))
    return Learner(config_from_dict(cfg, source="benchmarks/federation.py"))


def learn(learner, dataset, indices: np.ndarray, counts: np.ndarray, device: str, offset: int) -> int:
    """One pass of ``indices`` in micro-batches of 32 (seqs from ``offset``); counts labels per class."""
    for i in range(0, len(indices), 32):
        chunk = []
        for j, idx in enumerate(indices[i : i + 32].tolist()):
            s = dataset.sample(int(idx))
            s.device, s.seq = device, offset + i + j
            chunk.append(s)
            counts[s.label] += 1
        learner.observe(chunk)
    return len(indices)


def fedavg(parts: list[dict[str, np.ndarray]], weights: list[int]) -> dict[str, np.ndarray]:
    """Flower's own weighted aggregation (what FedAvg.aggregate_train calls) on the weights."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    records = [RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in p.items()}), "metrics": MetricRecord({"num-examples": max(w, 1)})})
               for p, w in zip(parts, weights)]
    return {k: v.numpy() for k, v in aggregate_arrayrecords(records, "num-examples").items()}


def run_split(split: str, args: argparse.Namespace, train, test_samples, csv: ResumableCSV) -> None:
    from edge_runtime.federation.arrays import merge_prototypes, nbytes, split as split_arrays
    from edge_runtime.federation.node_link import apply_global, learner_arrays

    labels = train.labels()
    parts = shares(labels, split, args.seed, args.limit)
    classes = ["".join(str(c) for c in sorted(set(labels[p].tolist()))) for p in parts]
    R = args.rounds
    slices = [np.array_split(p, R) for p in parts]

    def row(arm, rnd, node, cls, samples, acc, b, s):
        csv.add({"split": split, "arm": arm, "round": rnd, "node": node, "classes": cls, "samples": samples,
                 "accuracy": acc, "bytes_round": b, "seconds_round": s})

    # federated and isolated: the same three streams, slice by slice
    for arm in ("isolated", "federated"):
        if csv.has({"split": split, "arm": arm, "round": R, "node": 2, "classes": classes[2], "samples": 0, "accuracy": 0,
                    "bytes_round": 0, "seconds_round": 0}):
            continue
        learners = [make_learner(args.config, args.set, args.seed) for _ in range(3)]
        counts = [np.zeros(learners[0].num_classes, dtype=np.int64) for _ in range(3)]
        seen = [0, 0, 0]
        for r in range(1, R + 1):
            t0 = time.perf_counter()
            learned = [learn(learners[k], train, slices[k][r - 1], counts[k], f"node{k}", seen[k]) for k in range(3)]
            for k in range(3):
                seen[k] += learned[k]
            moved = 0
            if arm == "federated":
                shared = [learner_arrays(lr, c) for lr, c in zip(learners, counts)]
                weights = fedavg([split_arrays(a)[0] for a in shared], learned)
                glob = {**weights, **merge_prototypes([split_arrays(a)[1] for a in shared])}
                for lr in learners:
                    apply_global(lr, glob)
                moved = sum(nbytes(a) for a in shared) + 3 * nbytes(glob)
            seconds = time.perf_counter() - t0
            for k in range(3):
                acc = learners[k].evaluate(test_samples)["accuracy"]
                row(arm, r, k, classes[k], seen[k], acc, moved, seconds)
                print(f"{split:5s} {arm:9s} round {r} node {k} ({classes[k]}): {acc:.3f}", flush=True)

    # single: one node receives the union of the three streams, interleaved slice by slice
    key = {"split": split, "arm": "single", "round": R, "node": 0, "classes": "0123456789", "samples": 0, "accuracy": 0,
           "bytes_round": 0, "seconds_round": 0}
    if not csv.has(key):
        learner = make_learner(args.config, args.set, args.seed)
        c = np.zeros(learner.num_classes, dtype=np.int64)
        rng = np.random.default_rng(args.seed + 1)
        seen = 0
        for r in range(1, R + 1):
            t0 = time.perf_counter()
            union = rng.permutation(np.concatenate([s[r - 1] for s in slices]))
            seen += learn(learner, train, union, c, "single", seen)
            acc = learner.evaluate(test_samples)["accuracy"]
            row("single", r, 0, "0123456789", seen, acc, 0, time.perf_counter() - t0)
            print(f"{split:5s} single    round {r}: {acc:.3f}", flush=True)


DRIFT_ARMS = {  # name: (learner overrides, FedProx mu); the remedies of issue 25 item 5 for local drift
    "fedavg": ([], 0.0),
    "fedprox_mu10": ([], 10.0),  # the node's FedProx pull w <- w - min(lr*mu, 1)(w - w_global) after every micro-batch
    "lr_x0.3": (["training.lr=0.0003"], 0.0),
    "kd_global": (["training.kd_lambda=1.0", "training.teacher_every=null"], 0.0),  # distil the replay towards the global model
}


def run_drift(split: str, args: argparse.Namespace, train, test_samples, out: Path) -> list[dict]:
    """Per round and node: all-class accuracy right after the merge and right before the next one (drift).

    The FedProx pull ("Federated Optimization in Heterogeneous Networks") is applied as the node does
    (``FederationLink.after_batch``): ``w <- w - min(lr * mu, 1) (w - w_global)`` after every micro-batch.
    """
    import torch

    from edge_runtime.federation.arrays import merge_prototypes, split as split_arrays
    from edge_runtime.federation.node_link import apply_global, learner_arrays

    parts = shares(train.labels(), split, args.seed, args.limit)
    R = args.rounds
    slices = [np.array_split(p, R) for p in parts]
    rows = []
    for arm, (overrides, mu) in DRIFT_ARMS.items():
        learners = [make_learner(args.config, args.set + overrides, args.seed) for _ in range(3)]
        counts = [np.zeros(learners[0].num_classes, dtype=np.int64) for _ in range(3)]
        globals_: list[list[tuple]] = [[] for _ in range(3)]
        after = None
        for r in range(1, R + 1):
            learned = []
            for k, lr in enumerate(learners):
                step = min(lr.config.training.lr * mu, 1.0)
                n = 0
                for i in range(0, len(slices[k][r - 1]), 32):
                    n += learn(lr, train, slices[k][r - 1][i : i + 32], counts[k], f"node{k}", 100_000 * r + i)
                    if step > 0 and globals_[k]:
                        with torch.no_grad():
                            for p, g in globals_[k]:
                                p.sub_(step * (p - g))
                learned.append(n)
            before = [lr.evaluate(test_samples)["accuracy"] for lr in learners]
            shared = [learner_arrays(lr, c) for lr, c in zip(learners, counts)]
            glob = {**fedavg([split_arrays(a)[0] for a in shared], learned), **merge_prototypes([split_arrays(a)[1] for a in shared])}
            for k, lr in enumerate(learners):
                apply_global(lr, glob)
                globals_[k] = [(p, p.detach().clone()) for p in lr.model.parameters()]
            merged = learners[0].evaluate(test_samples)["accuracy"]  # every node holds the global model now
            for k in range(3):
                drift = (after - before[k]) if after is not None else None
                rows.append({"split": split, "arm": arm, "round": r, "node": k, "before_merge": round(before[k], 4),
                             "after_merge": round(merged, 4), "drop": None if drift is None else round(drift, 4)})
            print(f"{split:5s} {arm:13s} round {r}: before merge {np.mean(before):.3f} (nodes {' '.join(f'{b:.3f}' for b in before)}), "
                  f"after merge {merged:.3f}" + (f", drop since the last merge {after - np.mean(before):+.3f}" if after is not None else ""), flush=True)
            after = merged
    import csv

    with open(out / f"drift_{split}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def plot(rows: list[dict], out: Path) -> None:
    splits = sorted({r["split"] for r in rows})
    plt, fig, axes = plt_figure(ncols=len(splits))
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for ax, split in zip(axes, splits):
        sub = [r for r in rows if r["split"] == split]
        for arm, style in (("federated", "-"), ("isolated", ":")):
            for k in range(3):
                pts = sorted((int(r["round"]), float(r["accuracy"])) for r in sub if r["arm"] == arm and int(r["node"]) == k)
                if pts:
                    cls = next(r["classes"] for r in sub if r["arm"] == arm and int(r["node"]) == k)
                    ax.plot(*zip(*pts), style, marker="o", color=colors[k], label=f"{arm} node {k} ({cls})")
        pts = sorted((int(r["round"]), float(r["accuracy"])) for r in sub if r["arm"] == "single")
        if pts:
            ax.plot(*zip(*pts), "--", marker="s", color="black", label="single node, whole stream")
        ax.set_title(f"AV-Digits, 3 nodes, {split} split")
        ax.set_xlabel("round")
        ax.set_ylabel("accuracy on all 10 digits")
        ax.set_ylim(0, 1)
        ax.set_xticks(sorted({int(r["round"]) for r in sub}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "federation.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/out/federation", help="folder for federation.csv and federation.png")
    ap.add_argument("--config", default="configs/avdigits.yaml", help="base configuration of every learner")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every learner")
    ap.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    ap.add_argument("--splits", default="class,iid", help="comma-separated: class, iid (default both)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many stream samples per node")
    ap.add_argument("--test-limit", type=int, default=None, help="at most this many test samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a few seconds: 2 rounds, 96 samples per node, 200 test samples")
    ap.add_argument("--drift", action="store_true", help="instead: accuracy after each merge vs before the next, per remedy "
                    "(FedProx pull, lower local lr, KD towards the global model); writes drift_<split>.csv")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.limit, args.test_limit = 2, 96, 200
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1 (got {args.rounds})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_avdigits(0)
    n_test = len(test) if args.test_limit is None else min(args.test_limit, len(test))
    test_samples = [test.sample(i, split="eval") for i in range(n_test)]
    if args.drift:
        for split in args.splits.split(","):
            run_drift(split, args, train, test_samples, out)
        return 0
    csv = ResumableCSV(out / "federation.csv", FIELDS, ["split", "arm", "round", "node"])
    for split in args.splits.split(","):
        if split not in ("class", "iid"):
            raise SystemExit(f"--splits: unknown split {split!r}; use class and/or iid")
        run_split(split, args, train, test_samples, csv)
    plot(csv.rows, out)
    print(f"wrote {out / 'federation.csv'} and {out / 'federation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
