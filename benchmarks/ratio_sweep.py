"""The MBS paper's Experiment B on AV-Digits: pre-train R epochs, score, keep a ratio, re-train, evaluate.

For each seed: one model is pre-trained on the full training split and snapshot at every R in
``--pretrain`` (default 5, 10, 15, 20 epochs); each snapshot scores every training sample with
EL2N (keep smallest), GraNd (keep largest), MBS (Algorithm 1, median centre) and optionally BMMAL
or any other registered admission policy, through the same ``build_policy(...).select`` as the
stream (``edge_runtime/learning/offline.py``); a fresh model is trained ``--epochs`` epochs on each
kept subset and evaluated on the test split.  Controls: BASE (all samples, the ``all`` policy) and
RANDOM (the ``random`` policy: a seeded uniform subset of the same size).

**The ratio is the KEPT fraction** (0.05 = keep 5 %, the most extreme pruning); the paper's tables
speak of pruning.  Defaults: kept 0.1 to 0.5 in steps of 0.05, plus 0.05 for extreme pruning.

Win scores (the paper's Tables 3-6), over the score-based strategies only, one win per cell for
the best mean accuracy:

* robustness: cells (R, ratio), a win weighted by the pruned fraction ``1 - ratio`` (winning
  under heavier pruning counts more);
* efficiency: cells (ratio, R), a win weighted by ``R_rev / 10`` where R_rev is R in reverse order
  (5 <-> 20, 10 <-> 15): winning after fewer pre-training epochs counts more.

``--dataset synthetic|avdigits|cremad|ave --root DIR --split train --test-split test``: the
data through device-sim's loaders (default AV-Digits; the class count from the data set).  One
``--out`` folder per data set (the rows do not name it).

Writes ``results.csv`` (resumable), ``wins.csv`` and ``accuracy_vs_ratio.png``.

Usage: python benchmarks/ratio_sweep.py --out docs/results/ratio_sweep [--jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ResumableCSV, add_data_options, check_data_options, load_data, mean_ci, plt_figure, run_jobs, save_figure  # noqa: E402

FIELDS = ["seed", "pretrain_epochs", "strategy", "keep_ratio", "kept", "accuracy", "audio_accuracy", "video_accuracy"]
KEY = ["seed", "pretrain_epochs", "strategy", "keep_ratio"]


def fields(modalities: list[str]) -> list[str]:
    """The CSV columns for a configuration's modalities: fused ``accuracy``, then ``<name>_accuracy`` of each
    modality's own head (:data:`FIELDS` for the default audio + video)."""
    return FIELDS[: FIELDS.index("accuracy") + 1] + [f"{name}_accuracy" for name in modalities]

def scored() -> list[str]:
    """Score-based strategies: every registered admission policy but the controls."""
    from edge_runtime.learning.offline import CONTROLS, strategies

    return [s for s in strategies() if s not in CONTROLS]

DEFAULT_RATIOS = "0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.45,0.5"


def run_seed(job: dict) -> list[dict]:
    import torch

    from edge_runtime.core.config import load_config
    from edge_runtime.learning.offline import run_protocol

    torch.set_num_threads(1)
    train_ds, test_ds = load_data(job.get("dataset", "avdigits"), job.get("root"), job.get("split", "train"), job.get("test_split", "test"))
    n = min(job.get("limit") or len(train_ds), len(train_ds))
    train = [train_ds.sample(i) for i in range(n)]
    test = [test_ds.sample(i, split="eval") for i in range(len(test_ds))]
    classes = f"model.num_classes={int(getattr(train_ds, 'num_classes', 10))}"
    config = load_config(job.get("config"), [classes, *(job.get("set") or [])])
    done = job["done"]
    return run_protocol(train, test, config, job["pretrain"], job["ratios"], job["strategies"], job["epochs"], seed=job["seed"],
                        skip=lambda key: tuple(str(key[k]) if not isinstance(key[k], float) else f"{key[k]:.6g}" for k in KEY) in done)


def wins(rows: list[dict], strategies: list[str], pretrain: list[int], ratios: list[float]) -> dict[str, dict[str, float]]:
    """Robustness and efficiency win scores per strategy (see the module docstring)."""
    mean = {}
    for s in strategies:
        for r in pretrain:
            for q in ratios:
                vals = [float(x["accuracy"]) for x in rows if x["strategy"] == s and int(x["pretrain_epochs"]) == r
                        and abs(float(x["keep_ratio"]) - q) < 1e-9]
                if vals:
                    mean[(s, r, q)] = float(np.mean(vals))
    rev = dict(zip(sorted(pretrain), sorted(pretrain, reverse=True)))
    score = {s: {"robustness": 0.0, "efficiency": 0.0, "cells_won": 0} for s in strategies}
    for r in pretrain:
        for q in ratios:
            cell = {s: mean[(s, r, q)] for s in strategies if (s, r, q) in mean}
            if not cell:
                continue
            best = max(cell.values())
            for s, v in cell.items():
                if v == best:
                    score[s]["robustness"] += 1 - q
                    score[s]["efficiency"] += rev[r] / 10
                    score[s]["cells_won"] += 1
    return score


def plot(rows: list[dict], out: Path, strategies: list[str], pretrain: list[int], ratios: list[float], title: str = "AV-Digits") -> Path:
    plt, fig, axes = plt_figure(len(pretrain), width=4.4, height=4.0)
    base = [float(x["accuracy"]) for x in rows if x["strategy"] == "base"]
    for ax, r in zip(axes, pretrain):
        for s in strategies + ["random"]:
            xs, ms, hs = [], [], []
            for q in ratios:
                vals = [float(x["accuracy"]) for x in rows if x["strategy"] == s and abs(float(x["keep_ratio"]) - q) < 1e-9
                        and (s == "random" or int(x["pretrain_epochs"]) == r)]
                if vals:
                    m, h = mean_ci(vals)
                    xs.append(q), ms.append(100 * m), hs.append(100 * h)
            if xs:
                line, = ax.plot(xs, ms, marker="o", markersize=3, label=s.upper(), linestyle="--" if s == "random" else "-",
                                linewidth=2 if s == "mbs" else 1.2)
                ax.fill_between(xs, np.array(ms) - hs, np.array(ms) + hs, alpha=0.12, color=line.get_color())
        if base:
            ax.axhline(100 * np.mean(base), color="black", linewidth=1, label="BASE (all samples)")
        ax.set_title(f"scores after R = {r} pre-training epochs", fontsize=10)
        ax.set_xlabel("kept fraction of the training set")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="lower right")
    return save_figure(plt, fig, out / "accuracy_vs_ratio.png",
                       f"{title}, MBS paper Experiment B: accuracy of a model trained on the kept subset (mean, 95% CI over seeds)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/results/ratio_sweep"))
    ap.add_argument("--quick", action="store_true", help="R 1,2; kept 0.1, 0.3; 2 epochs on 600 samples; 1 seed")
    ap.add_argument("--pretrain", default="5,10,15,20", help="pre-training epochs R at which samples are scored")
    ap.add_argument("--ratios", default=DEFAULT_RATIOS, help="KEPT fractions")
    ap.add_argument("--strategies", default="el2n,grand,mbs", help="score-based strategies (registered admission policies: el2n, grand, mbs, bmmal, ...); RANDOM and BASE always run")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs on the kept subset (default 5)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 (default 3)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel worker processes, one per seed")
    ap.add_argument("--config", default="configs/avdigits.yaml", help="base configuration of every run (default configs/avdigits.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (model, training.lr)")
    add_data_options(ap)
    args = ap.parse_args(argv)
    from tqdm import tqdm

    pretrain = [int(x) for x in args.pretrain.split(",") if x]
    ratios = [float(x) for x in args.ratios.split(",") if x]
    strategies = [s for s in args.strategies.split(",") if s]
    seeds, limit = list(range(args.seeds)), None
    if args.quick:
        pretrain, ratios, seeds, limit, args.epochs = [1, 2], [0.1, 0.3], [0], 600, 2
    for s in strategies:
        if s not in scored():
            ap.error(f"--strategies: unknown strategy {s!r}; choose from {', '.join(scored())}")
    if any(not 0 < q <= 1 for q in ratios):
        ap.error("--ratios: kept fractions must be in (0, 1]")
    check_data_options(ap, args)
    args.out.mkdir(parents=True, exist_ok=True)
    from edge_runtime.core.config import load_config

    results = ResumableCSV(args.out / "results.csv", fields(list(load_config(args.config, args.set).modalities)), KEY)
    done = {tuple(r[k] for k in KEY) for r in results.rows}
    jobs = [{"seed": s, "pretrain": pretrain, "ratios": ratios, "strategies": strategies + ["random", "base"], "epochs": args.epochs,
             "limit": limit, "set": args.set, "config": args.config, "done": done,
             "dataset": args.dataset, "root": args.root, "split": args.split, "test_split": args.test_split} for s in seeds]
    per_seed = 1 + len(ratios) * (1 + len(strategies) * len(pretrain))
    print(f"ratio_sweep: {len(seeds)} seeds x {per_seed} trainings; {len(results.rows)} rows already in {results.path}", flush=True)
    bar = tqdm(total=len(seeds), unit="seed", desc="ratio sweep")
    for rows in run_jobs(run_seed, jobs, args.jobs):
        _store(results, rows, bar)
    bar.close()
    rows = [r for r in results.rows if int(r["seed"]) in seeds]
    score = wins(rows, strategies, pretrain, ratios)
    with open(args.out / "wins.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["strategy", "robustness_score", "efficiency_score", "cells_won", "cells"])
        for s in strategies:
            w.writerow([s, f"{score[s]['robustness']:.2f}", f"{score[s]['efficiency']:.2f}", score[s]["cells_won"], len(pretrain) * len(ratios)])
    print(f"{'strategy':<8} {'robustness':>10} {'efficiency':>10} {'cells won':>10}")
    for s in strategies:
        print(f"{s:<8} {score[s]['robustness']:>10.2f} {score[s]['efficiency']:>10.2f} {score[s]['cells_won']:>10}")
    print(f"wrote {plot(rows, args.out, strategies, pretrain, ratios, args.dataset)}")
    print(f"wrote {results.path} ({len(results.rows)} rows) and {args.out / 'wins.csv'}")
    return 0


def _store(results: ResumableCSV, rows: list[dict], bar) -> None:
    for row in rows:
        if not results.has(row):
            results.add(row)
    bar.update(1)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
