"""Buffer size vs accuracy: data set x scenario x policy x buffer size x seed, through the node's ``Learner``.

Each run streams the training split of ``--dataset`` (default AV-Digits; ``cremad`` / ``ave``
read ``--root`` through device-sim's loaders, ``--split`` streamed, ``--test-split`` held out,
the class count from the data set) once, class-incrementally (tasks of 2 classes, seeded class
order), in micro-batches of 32 through ``Learner.observe`` (in-process, no sockets), and evaluates
on the test split every 240 samples.  ``corrupted`` streams the same data with Gaussian noise (2x
the frame's std) on the video of half of the training samples, chosen by seed (the test split
stays clean): modality imbalance on purpose.  Every stream of ``device_sim.scenario.STREAMS``
(corrupted audio, weak modalities, ...) is a scenario too, by its name.

Every run starts from ``--config`` (default configs/avdigits.yaml: 4 optimiser steps per
micro-batch, CE on every incoming sample, no KD) plus the policy's preset:

* ``reservoir``: train on every sample, reservoir buffer (experience replay);
* ``class-balanced``: train on every sample, class-balanced reservoir (CBRS);
* ``random``: keep a random half of each micro-batch, CBRS buffer;
* ``mbs`` / ``el2n`` / ``grand`` / ``bmmal``: keep half of each micro-batch by that criterion, CBRS buffer;
* ``bss`` / ``dus``: train on every sample, CBRS buffer, replay drawn by BSS / with DUS unimodal replay;
* any other registered admission policy by its name: keep half of each micro-batch by it, CBRS buffer.

Writes ``results.csv`` (one row per run; rows already there are skipped, so an interrupted sweep
resumes), ``paired.csv`` (each policy minus class-balanced, paired by seed, with 95 % intervals),
``curves.csv`` (accuracy vs samples seen) and the plots
``accuracy_vs_buffer.png``, ``unimodal_vs_buffer.png``, ``accuracy_vs_samples.png``.

Usage: python benchmarks/buffer_sweep.py --out docs/results/buffer_sweep [--jobs 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ResumableCSV, add_data_options, check_data_options, mean_ci, paired_differences, plt_figure, run_stream, run_sweep, save_figure, unimodal_fields  # noqa: E402
from edge_runtime.core.names import BUFFER_BYTES, PREQUENTIAL_ACCURACY, SAMPLES_SEEN, UPDATES  # noqa: E402

POLICIES: dict[str, dict] = {
    "reservoir": {"selection": {"policy": "all"}, "buffer": {"retention": "reservoir"}},
    "class-balanced": {"selection": {"policy": "all"}},
    "random": {"selection": {"policy": "random"}},
    "mbs": {"selection": {"policy": "mbs"}},
    "el2n": {"selection": {"policy": "el2n"}},
    "grand": {"selection": {"policy": "grand"}},
    "bmmal": {"selection": {"policy": "bmmal"}},
    "bss": {"selection": {"policy": "all"}, "replay": {"policy": "bss"}},
    "dus": {"selection": {"policy": "all"}, "replay": {"policy": "dus"}},
}
def _scenarios() -> tuple[str, ...]:
    from device_sim.scenario import STREAMS

    return ("class-incremental", "corrupted") + tuple(s for s in STREAMS if s not in ("clean", "corrupted-video-50"))


SCENARIOS = _scenarios()
HIGHLIGHT = ("mbs", "reservoir", "class-balanced")  # drawn solid with CI bands; the rest dashed
#: unimodal head columns of the default (audio-visual) configuration; another configuration's come from
#: :func:`benchmarks.common.unimodal_fields`
UNIMODAL = [("audio_only_accuracy", "audio-only head"), ("visual_only_accuracy", "visual-only head")]


def fields(unimodal: list[tuple[str, str]] = UNIMODAL) -> list[str]:
    """The results.csv columns, with one unimodal-accuracy column per modality."""
    return ["dataset", "scenario", "policy", "buffer_items", BUFFER_BYTES, "seed", "final_accuracy",
            "average_incremental_accuracy", "forgetting", *(col for col, _ in unimodal),
            PREQUENTIAL_ACCURACY, SAMPLES_SEEN, UPDATES, "seconds"]


FIELDS = fields()
KEY = ["dataset", "scenario", "policy", "buffer_items", "seed"]
CURVE_FIELDS = KEY + ["samples", "accuracy"]
EVAL_EVERY = 240

def preset(policy: str) -> dict:
    """The config overrides of a sweep policy: its preset, or ``selection.policy`` for any other registered admission policy."""
    return POLICIES.get(policy) or {"selection": {"policy": policy}}


def known_policies() -> list[str]:
    from edge_runtime.learning.policies.registry import names

    return list(POLICIES) + [n for n in names("selection") if n not in POLICIES and n != "all"]


#: scenario -> stream of :data:`device_sim.scenario.STREAMS` (the two historical names, then every stream by its own name).
STREAM_OF = {"class-incremental": "clean", "corrupted": "corrupted-video-50"}


def run_one(job: dict) -> tuple[dict, list[dict]]:
    """One stream through a fresh Learner (:func:`benchmarks.common.run_stream`); the row and its curve points."""
    metrics, points = run_stream({**job, "stream": STREAM_OF.get(job["scenario"], job["scenario"]), "preset": preset(job["policy"]),
                                  "eval_every": EVAL_EVERY})
    key = {k: job[k] for k in KEY}
    return {**key, **metrics}, [{**key, **p} for p in points]


def _line(ax, policy: str, x, m, h=None) -> None:
    """One policy's line: the highlighted policies solid with a CI band (when ``h`` is given), the rest dashed."""
    main = policy in HIGHLIGHT
    line, = ax.plot(x, m, marker="o" if main else ".", label=policy, linewidth=2.3 if main else 1.0,
                    linestyle="-" if main else "--", alpha=1.0 if main else 0.75)
    if main and h is not None:
        ax.fill_between(x, np.asarray(m) - h, np.asarray(m) + h, alpha=0.14, color=line.get_color())


def _save(plt, fig, title: str, path: Path) -> Path:
    return save_figure(plt, fig, path, title, dpi=90)


def _log_sizes(ax, sizes: list[int]) -> None:
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sizes, [str(s) for s in sizes])


def plot(rows: list[dict], curves: list[dict], out: Path, curve_size: int,
         unimodal: list[tuple[str, str]] = UNIMODAL) -> list[Path]:
    """The three figures; returns their paths."""
    written = []
    policies = list(dict.fromkeys(r["policy"] for r in rows))  # first-seen order: the presets, then any other
    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in rows)]
    sizes = sorted({int(r["buffer_items"]) for r in rows})
    seeds = len({r["seed"] for r in rows})

    def series(scenario: str, policy: str, field: str):
        xs, ms, hs = [], [], []
        for size in sizes:
            vals = [float(r[field]) for r in rows if r["scenario"] == scenario and r["policy"] == policy and int(r["buffer_items"]) == size]
            if vals:
                m, h = mean_ci(vals)
                xs.append(size), ms.append(m), hs.append(h)
        return np.array(xs), np.array(ms), np.array(hs)

    plt, fig, axes = plt_figure(len(scenarios), height=5.0)
    for ax, scenario in zip(axes, scenarios):
        low = 100.0
        for policy in policies:
            x, m, h = series(scenario, policy, "final_accuracy")
            _line(ax, policy, x, 100 * m, 100 * h)
            low = min(low, float(np.nanmin(100 * (m - h))) if len(m) else low)
        _log_sizes(ax, sizes)
        ax.set_ylim(max(0.0, 5 * np.floor(low / 5) - 2), 100)
        ax.set_xlabel("replay buffer size (items)")
        ax.set_ylabel("final accuracy on all classes (%)")
        ax.set_title(f"{rows[0]['dataset']}, {scenario}: mean over {seeds} seeds\n(95% CI bands for the solid lines)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, loc="lower right")
    written.append(_save(plt, fig, "Final accuracy after one class-incremental pass (tasks of 2 classes)", out / "accuracy_vs_buffer.png"))

    n_uni = len(unimodal)
    plt, fig, axes = plt_figure(n_uni * len(scenarios), width=4.6, height=4.6)
    for s_i, scenario in enumerate(scenarios):
        for k, (field, name) in enumerate(unimodal):
            ax = axes[n_uni * s_i + k]
            low = 100.0
            for policy in policies:
                x, m, h = series(scenario, policy, field)
                low = min(low, float(np.nanmin(100 * (m - h))) if len(m) else low)
                _line(ax, policy, x, 100 * m, 100 * h)
            _log_sizes(ax, sizes)
            ax.set_ylim(max(0.0, 10 * np.floor(low / 10)), 100)
            ax.set_xlabel("replay buffer size (items)")
            ax.set_ylabel(f"{name} accuracy (%)")
            ax.set_title(f"{scenario}: {name}", fontsize=10)
            ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    written.append(_save(plt, fig, "Modality balance: accuracy of each unimodal head alone (mean; 95% CI bands for the solid lines)", out / "unimodal_vs_buffer.png"))

    plt, fig, axes = plt_figure(len(scenarios), height=5.0)
    for ax, scenario in zip(axes, scenarios):
        for policy in policies:
            pts = [c for c in curves if c["scenario"] == scenario and c["policy"] == policy and int(c["buffer_items"]) == curve_size]
            xs = sorted({int(c["samples"]) for c in pts})
            if not xs:
                continue
            ms = [100 * np.mean([float(c["accuracy"]) for c in pts if int(c["samples"]) == x]) for x in xs]
            _line(ax, policy, xs, ms)
        ax.set_xlabel("samples seen")
        ax.set_ylabel("accuracy on all classes (%)")
        ax.set_title(f"{scenario}, buffer {curve_size} items (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    written.append(_save(plt, fig, "Accuracy while streaming (at most 20% after task 1, 40% after task 2, ...)", out / "accuracy_vs_samples.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/results/buffer_sweep"), help="folder for CSVs and plots")
    ap.add_argument("--quick", action="store_true", help="2 policies x 2 sizes x 2 seeds on 960 samples (a smoke run, minutes)")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset of: " + ", ".join(POLICIES))
    ap.add_argument("--scenarios", default="class-incremental,corrupted",
                    help="comma-separated subset of: " + ", ".join(SCENARIOS) + " (default class-incremental,corrupted)")
    ap.add_argument("--sizes", default="50,100,200,500,1000", help="buffer sizes in items")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 (default 5)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel worker processes (one torch thread each)")
    ap.add_argument("--curve-size", type=int, default=200, help="buffer size of the accuracy-vs-samples plot")
    ap.add_argument("--config", default="configs/avdigits.yaml", help="base configuration of every run (default configs/avdigits.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    add_data_options(ap)
    args = ap.parse_args(argv)

    policies = [p for p in args.policies.split(",") if p]
    scenarios = [s for s in args.scenarios.split(",") if s]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    seeds = list(range(args.seeds))
    limit = None
    if args.quick:
        policies, scenarios, sizes, seeds, limit = ["reservoir", "mbs"], ["class-incremental"], [50, 200], [0, 1], 960
        args.curve_size = 200
    for p in policies:
        if p not in known_policies():
            ap.error(f"--policies: unknown policy {p!r}; choose from {', '.join(known_policies())}")
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"--scenarios: unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    check_data_options(ap, args)
    args.out.mkdir(parents=True, exist_ok=True)
    unimodal = unimodal_fields(args.config, args.set)
    results = ResumableCSV(args.out / "results.csv", fields(unimodal), KEY)
    curves = ResumableCSV(args.out / "curves.csv", CURVE_FIELDS, KEY + ["samples"])
    data = {"dataset": args.dataset, "root": args.root, "split": args.split, "test_split": args.test_split}
    jobs = [{**data, "scenario": sc, "policy": p, "buffer_items": size, "seed": seed, "limit": limit, "set": args.set, "config": args.config}
            for sc in scenarios for p in policies for size in sizes for seed in seeds]
    run_sweep("buffer_sweep", jobs, results, run_one, args.jobs, lambda result, bar: _store(results, curves, *result, bar))
    mine = [r for r in results.rows if r["dataset"] == args.dataset and r["policy"] in policies and r["scenario"] in scenarios and int(r["buffer_items"]) in sizes]
    for path in plot(mine, curves.rows, args.out, args.curve_size, unimodal):
        print(f"wrote {path}")
    print(f"wrote {results.path} ({len(results.rows)} rows)")
    if REFERENCE in policies:
        pairs = paired_differences(mine, ("dataset", "scenario", "buffer_items"), "policy", REFERENCE)
        write_paired(args.out / "paired.csv", pairs)
        print(f"wrote {args.out / 'paired.csv'} ({len(pairs)} cells: each policy minus {REFERENCE}, paired by seed)")
    return 0


#: The reference every other policy is paired against (paired.csv): class-balanced replay, the default.
REFERENCE = "class-balanced"
PAIRED_FIELDS = ["dataset", "scenario", "buffer_items", "policy", "seeds", "mean_diff", "ci_low", "ci_high", "verdict",
                 "policy_mean", "reference_mean"]


def write_paired(path: Path, pairs: list[dict]) -> None:
    """``paired.csv``: per (scenario, size, policy), the paired difference to :data:`REFERENCE` in accuracy, 95 % CI."""
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PAIRED_FIELDS)
        w.writeheader()
        for p in pairs:
            w.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in p.items()})


def _store(results: ResumableCSV, curves: ResumableCSV, row: dict, curve: list[dict], bar) -> None:
    for c in curve:
        if not curves.has(c):
            curves.add(c)
    results.add(row)
    bar.set_postfix(policy=row["policy"], size=row["buffer_items"], acc=f"{row['final_accuracy']:.3f}", refresh=False)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
