"""Does modality balance earn its place? MBS variants x streams x buffer sizes, paired against CBRS (issue 14).

Every run is one class-incremental pass (tasks of 2 classes, seeded class order, micro-batches of
32) through ``Learner.observe``, from ``--config`` (default configs/avdigits.yaml) plus the
variant's preset; see :func:`benchmarks.common.run_stream`.  **Paired by seed**: seed s fixes the
class order, the order within tasks, which samples are corrupted and the model's initial
weights, so every variant of seed s sees the same stream; only the variant differs.

Variants (:data:`VARIANTS`): ``cbrs`` (train on all, class-balanced reservoir: the reference),
``mbs`` (Algorithm 1 around the batch median, split at the median), ``mbs-paper-split`` (split at 1
as the paper's lines 13-16 write it), ``mbs-abs-log`` (centre 1, log deviation), ``mbs-pooled``
and ``mbs-pooled-abs-log`` (the ``keep_ratio * n`` smallest deviations regardless of side),
``mbs-class`` (per class), ``cbrs-mbs-evict`` (admit all with their |log MBS|, evict the least
balanced of the largest class), ``all-mbs-retention`` (``selection.policy: all`` with
``buffer.retention: mbs``: the deviation is absent, so the rule ranks nothing), ``mbs-trim``
(drop only the 20 % most one-sided, |log MBS| around 1: suggested by the diagnosis, where the far
tail is two-thirds corrupted but the bulk overlaps), ``mbs-gap`` and ``mbs-gap-trim`` (keep the half,
or drop the fifth, of largest confidence gap ``|p_audio - p_video|``: balance without the ratio's
blow-up on hard samples, also suggested by the diagnosis) and ``random``
(keep a random half: the control for "keeping half").

Streams (:data:`device_sim.scenario.STREAMS`): clean, corrupted-video-25/50, corrupted-audio-25/50,
weak-video, weak-audio.

For every (stream, size, variant) the paired differences ``acc(variant, s) - acc(cbrs, s)`` over
the seeds both have: their mean and 95 % Student-t interval; a **win** only when the interval is
above zero, a **loss** when below, else a tie.  Writes ``results.csv`` (one row per run;
resumable), ``paired.csv``, ``paired_vs_buffer.png``, ``accuracy_vs_buffer.png`` and ``tables.md``
(the markdown tables it prints: one per stream, then who wins where and the issue's goal check;
``--table`` prints them from the CSV without running anything).

Usage: python benchmarks/balance_sweep.py --out docs/results/balance_sweep --jobs 2 [--seeds 10] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ResumableCSV, add_data_options, check_data_options, mean_ci, paired_differences, plt_figure, run_stream, run_sweep, save_figure, unimodal_fields  # noqa: E402
from edge_runtime.core.names import BUFFER_BYTES, PREQUENTIAL_ACCURACY, SAMPLES_SEEN, UPDATES  # noqa: E402

REFERENCE = "cbrs"
ABS_LOG = {"center": "one", "deviation": "log"}
VARIANTS: dict[str, dict] = {
    "cbrs": {"selection": {"policy": "all"}},
    "mbs": {"selection": {"policy": "mbs"}},
    "mbs-paper-split": {"selection": {"policy": "mbs", "split": "one"}},
    "mbs-abs-log": {"selection": {"policy": "mbs", **ABS_LOG}},
    "mbs-pooled": {"selection": {"policy": "mbs-pooled"}},
    "mbs-pooled-abs-log": {"selection": {"policy": "mbs-pooled", **ABS_LOG}},
    "mbs-class": {"selection": {"policy": "mbs-class"}},
    "cbrs-mbs-evict": {"selection": {"policy": "mbs-pooled", "keep_ratio": 1.0, **ABS_LOG}, "buffer": {"retention": "mbs"}},
    "all-mbs-retention": {"selection": {"policy": "all"}, "buffer": {"retention": "mbs"}},
    "mbs-trim": {"selection": {"policy": "mbs-pooled", "keep_ratio": 0.8, **ABS_LOG}},
    "mbs-gap": {"selection": {"policy": "mbs-gap", "keep_ratio": 0.5}},
    "mbs-gap-trim": {"selection": {"policy": "mbs-gap", "keep_ratio": 0.8}},
    "random": {"selection": {"policy": "random"}},
}
#: variants that use the MBS (the others are controls: ``random`` keeps a random half, ``all-mbs-retention``
#: ranks no deviation and so evicts the oldest item of the largest class)
MBS_FAMILY = ["mbs", "mbs-paper-split", "mbs-abs-log", "mbs-pooled", "mbs-pooled-abs-log", "mbs-class", "cbrs-mbs-evict", "mbs-trim", "mbs-gap", "mbs-gap-trim"]
#: the issue's goal: a win on both corrupted streams at 100 and 200 items, no loss on the clean stream there
GOAL_WIN = [(st, size) for st in ("corrupted-video-50", "corrupted-audio-50") for size in (100, 200)]
GOAL_NO_LOSS = [("clean", 100), ("clean", 200)]
SIZES = "50,100,200,500"
KEY = ["dataset", "stream", "variant", "buffer_items", "seed"]
def fields(unimodal_columns: tuple[str, ...] | list[str] = ("audio_only_accuracy", "visual_only_accuracy")) -> list[str]:
    """The results.csv columns, with one unimodal-accuracy column per modality (default: the audio-visual ones;
    another configuration's come from :func:`benchmarks.common.unimodal_fields`)."""
    return KEY + ["final_accuracy", "average_incremental_accuracy", "forgetting", *unimodal_columns,
                  PREQUENTIAL_ACCURACY, BUFFER_BYTES, SAMPLES_SEEN, UPDATES, "seconds"]


FIELDS = fields()
PAIRED_FIELDS = ["dataset", "stream", "buffer_items", "variant", "seeds", "mean_diff", "ci_low", "ci_high", "verdict",
                 "variant_mean", "reference_mean"]


def streams() -> list[str]:
    from device_sim.scenario import STREAMS

    return list(STREAMS)


def run_one(job: dict) -> dict:
    """One run: the results row."""
    metrics, _ = run_stream({**job, "preset": VARIANTS[job["variant"]]})
    return {**{k: job[k] for k in KEY}, **metrics}


def paired(rows: list[dict], field: str = "final_accuracy") -> list[dict]:
    """Paired differences against :data:`REFERENCE` per (dataset, stream, size, variant), seeds matched."""
    return paired_differences(rows, ("dataset", "stream", "buffer_items"), "variant", REFERENCE, field)


def tables(pairs: list[dict]) -> str:
    """One markdown table per stream: variants x sizes, cells ``+d [lo, hi]`` in points, wins in bold."""
    lines = []
    for dataset, stream in sorted({(p["dataset"], p["stream"]) for p in pairs}, key=lambda k: (k[0], streams().index(k[1]) if k[1] in streams() else 99)):
        cell = {(p["variant"], p["buffer_items"]): p for p in pairs if p["dataset"] == dataset and p["stream"] == stream}
        sizes = sorted({s for _, s in cell})
        variants = [v for v in VARIANTS if any(v == c[0] for c in cell)]
        # the reference's mean over the seeds of its best-paired variant (every seed it has, in a full sweep)
        ref = {s: max((p for (v, z), p in cell.items() if z == s), key=lambda p: p["seeds"])["reference_mean"] for s in sizes}
        lines += [f"**{dataset}, {stream}**: paired difference to {REFERENCE} (points), mean [95% CI] over seeds; "
                  f"**bold** = win (CI above 0), _italic_ = loss (CI below 0)", "",
                  "| variant | " + " | ".join(str(s) for s in sizes) + " |", "| --- |" + " --- |" * len(sizes),
                  f"| {REFERENCE} (accuracy %) | " + " | ".join(f"{100 * ref[s]:.1f}" for s in sizes) + " |"]
        for v in variants:
            cells = []
            for s in sizes:
                p = cell.get((v, s))
                if p is None:
                    cells.append("")
                    continue
                text = _cell(p)
                cells.append(f"**{text}**" if p["verdict"] == "win" else f"_{text}_" if p["verdict"] == "loss" else text)
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(p: dict) -> str:
    return f"{100 * p['mean_diff']:+.1f} [{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]"


def winners(pairs: list[dict]) -> str:
    """Where each variant wins: per (stream, size) the variants whose interval is above zero, or the
    best mean difference when none is; then the goal check over :data:`MBS_FAMILY`."""
    lines = [f"**Who beats {REFERENCE}** (paired difference in points, mean [95% CI]; _none_: no interval above 0, "
             "the best mean shown)", ""]
    keys = sorted({(p["dataset"], p["stream"]) for p in pairs}, key=lambda k: (k[0], streams().index(k[1]) if k[1] in streams() else 99))
    sizes = sorted({p["buffer_items"] for p in pairs})
    lines += ["| stream | " + " | ".join(str(s) for s in sizes) + " |", "| --- |" + " --- |" * len(sizes)]
    for dataset, stream in keys:
        cells = []
        for size in sizes:
            mine = [p for p in pairs if (p["dataset"], p["stream"], p["buffer_items"]) == (dataset, stream, size)]
            if not mine:
                cells.append("")
                continue
            wins = sorted((p for p in mine if p["verdict"] == "win"), key=lambda p: -p["mean_diff"])
            if wins:
                cells.append("; ".join(f"**{p['variant']}** {_cell(p)}" for p in wins))
            else:
                best = max(mine, key=lambda p: p["mean_diff"])
                cells.append(f"_none_ (best {best['variant']} {_cell(best)})")
        lines.append(f"| {stream} | " + " | ".join(cells) + " |")
    lines.append("")
    by = {(p["stream"], p["buffer_items"], p["variant"]): p for p in pairs}
    complete = [v for v in MBS_FAMILY if all((st, z, v) in by for st, z in GOAL_WIN + GOAL_NO_LOSS)]
    if not complete:
        return "\n".join(lines + ["Goal check: the sweep has not run the goal cells (corrupted-video-50, corrupted-audio-50 and clean at 100 and 200 items)."])
    met = [v for v in complete if all(by[(st, z, v)]["verdict"] == "win" for st, z in GOAL_WIN)
           and all(by[(st, z, v)]["verdict"] != "loss" for st, z in GOAL_NO_LOSS)]
    if met:
        lines.append("Goal check: **met** by " + ", ".join(met) + ".")
    else:
        # the closest: the variant whose worst corrupted-stream cell is least bad
        worst = {v: min((by[(st, z, v)] for st, z in GOAL_WIN), key=lambda p: p["mean_diff"]) for v in complete}
        v = max(worst, key=lambda v: worst[v]["mean_diff"])
        w = worst[v]
        lines.append(f"Goal check: **not met** by any MBS variant. Closest: {v}, whose worst goal cell is "
                     f"{w['stream']} at {w['buffer_items']} items, {_cell(w)} points "
                     f"({sum(by[(st, z, v)]['verdict'] == 'win' for st, z in GOAL_WIN)} of {len(GOAL_WIN)} corrupted cells won).")
    return "\n".join(lines)


PANELS_PER_ROW = 4
"""Stream panels per row of the figures (7 streams: two rows, the legend in the eighth cell)."""


def _colour(plt, variant: str):
    """The variant's colour in both figures: black for the reference, else its own tab20 colour (13 variants)."""
    return "black" if variant == REFERENCE else plt.get_cmap("tab20").colors[list(VARIANTS).index(variant) % 20]


def _legend(axes: list, used: int) -> None:
    """One legend for all panels: in the first spare cell of the grid, else on the last panel."""
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[used:]:
        ax.set_axis_off()
    if len(axes) > used:
        axes[used].legend(handles, labels, loc="center", fontsize=9, title="variant")
    else:
        axes[used - 1].legend(fontsize=6)


def _title(text: str, panels: int) -> str:
    """A figure title that fits its width: wrapped when the figure has a single panel."""
    return textwrap.fill(text, 46) if panels < 2 else text


def plot(rows: list[dict], pairs: list[dict], out: Path) -> list[Path]:
    """``paired_vs_buffer.png`` (differences with CIs, a panel per stream) and ``accuracy_vs_buffer.png``."""
    names = [s for s in streams() if any(p["stream"] == s for p in pairs)]
    written = []
    plt, fig, axes = plt_figure(len(names), width=4.4, height=4.0, wrap=PANELS_PER_ROW, sharey=True)
    for ax, stream in zip(axes, names):
        mine = [p for p in pairs if p["stream"] == stream]
        sizes = sorted({p["buffer_items"] for p in mine})
        variants = [v for v in VARIANTS if any(p["variant"] == v for p in mine)]
        for k, v in enumerate(variants):
            pts = sorted((p for p in mine if p["variant"] == v), key=lambda p: p["buffer_items"])
            x = np.array([sizes.index(p["buffer_items"]) for p in pts]) + (k - (len(variants) - 1) / 2) * 0.07
            m = np.array([100 * p["mean_diff"] for p in pts])
            err = np.array([[100 * (p["mean_diff"] - p["ci_low"]), 100 * (p["ci_high"] - p["mean_diff"])] for p in pts]).T
            ax.errorbar(x, m, yerr=np.nan_to_num(err), marker="o", markersize=3, capsize=2, linewidth=1, label=v,
                        color=_colour(plt, v))
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_xlabel("replay buffer size (items)")
        ax.set_ylabel(f"accuracy - {REFERENCE} (points)")
        ax.set_title(stream, fontsize=10)
        ax.grid(alpha=0.3)
    _legend(axes, len(names))
    written.append(save_figure(plt, fig, out / "paired_vs_buffer.png",
                               _title(f"Paired difference to {REFERENCE} (same seed = same stream), mean and 95% CI over seeds", len(names))))

    plt, fig, axes = plt_figure(len(names), width=4.4, height=4.0, wrap=PANELS_PER_ROW)
    for ax, stream in zip(axes, names):
        mine = [r for r in rows if r["stream"] == stream]
        sizes = sorted({int(r["buffer_items"]) for r in mine})
        for v in VARIANTS:
            ms = [mean_ci(float(r["final_accuracy"]) for r in mine if r["variant"] == v and int(r["buffer_items"]) == s)[0] for s in sizes]
            if any(np.isfinite(ms)):
                ax.plot(range(len(sizes)), 100 * np.array(ms), marker="o", markersize=3, label=v,
                        linewidth=2.2 if v == REFERENCE else 1.0, color=_colour(plt, v))
        ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_xlabel("replay buffer size (items)")
        ax.set_ylabel("final accuracy (%)")
        ax.set_title(stream, fontsize=10)
        ax.grid(alpha=0.3)
    _legend(axes, len(names))
    written.append(save_figure(plt, fig, out / "accuracy_vs_buffer.png",
                               _title("Final accuracy after one class-incremental pass (mean over seeds)", len(names))))
    return written


def _store(results: ResumableCSV, row: dict, bar) -> None:
    results.add(row)
    bar.set_postfix(variant=row["variant"], stream=row["stream"], acc=f"{row['final_accuracy']:.3f}", refresh=False)


def _csv_list(ap, text: str, choices: list[str], flag: str) -> list[str]:
    items = [x for x in text.split(",") if x]
    for x in items:
        if x not in choices:
            ap.error(f"{flag}: unknown {x!r}; choose from {', '.join(choices)}")
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/results/balance_sweep"), help="folder for CSVs and plots")
    ap.add_argument("--quick", action="store_true", help="cbrs and mbs-pooled x clean and weak-video x 50 items x 2 seeds on 256 samples (a smoke run)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS) + f" ({REFERENCE} is always run)")
    ap.add_argument("--streams", default=None, help="comma-separated subset of the streams (default: all)")
    ap.add_argument("--sizes", default=SIZES, help=f"buffer sizes in items (default {SIZES})")
    ap.add_argument("--seeds", type=int, default=10, help="seeds 0 .. N-1 (default 10; at least 2 for an interval)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel worker processes (one torch thread each)")
    ap.add_argument("--limit", type=int, default=None, help="samples streamed per run (default: the whole training split; rows are keyed without it, so give another --limit its own --out)")
    ap.add_argument("--config", default="configs/avdigits.yaml", help="base configuration of every run (default configs/avdigits.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    ap.add_argument("--order", choices=["class-incremental", "iid"], default="class-incremental",
                    help="stream order (default class-incremental; iid with --variants cbrs --sizes 500 calibrates the weak streams; own --out)")
    ap.add_argument("--table", action="store_true", help="only print the tables (and redraw the plots) from --out's results.csv")
    add_data_options(ap)
    args = ap.parse_args(argv)

    variants = _csv_list(ap, args.variants, list(VARIANTS), "--variants")
    names = _csv_list(ap, args.streams or ",".join(streams()), streams(), "--streams")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    seeds, limit = list(range(args.seeds)), args.limit
    if args.quick:
        variants, names, sizes, seeds, limit = ["cbrs", "mbs-pooled"], ["clean", "weak-video"], [50], [0, 1], 256
    if REFERENCE not in variants:
        variants = [REFERENCE] + variants
    args.out.mkdir(parents=True, exist_ok=True)
    results = ResumableCSV(args.out / "results.csv", fields([col for col, _ in unimodal_fields(args.config, args.set)]), KEY)
    if not args.table:
        check_data_options(ap, args)
        data = {"dataset": args.dataset, "root": args.root, "split": args.split, "test_split": args.test_split}
        jobs = [{**data, "stream": st, "variant": v, "buffer_items": size, "seed": seed, "limit": limit, "set": args.set, "config": args.config,
                 "order": args.order} for st in names for size in sizes for seed in seeds for v in variants]
        run_sweep("balance_sweep", jobs, results, run_one, args.jobs, lambda row, bar: _store(results, row, bar))
    mine = [r for r in results.rows if r["dataset"] == args.dataset and r["variant"] in variants and r["stream"] in names
            and int(r["buffer_items"]) in sizes and int(r["seed"]) in seeds]
    pairs = paired(mine)
    with open(args.out / "paired.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PAIRED_FIELDS)
        w.writeheader()
        for p in pairs:
            w.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in p.items()})
    report = tables(pairs) + "\n" + winners(pairs) + "\n"
    (args.out / "tables.md").write_text(report)
    print(report)
    if pairs:
        for path in plot(mine, pairs, args.out):
            print(f"wrote {path}")
    print(f"wrote {results.path} ({len(results.rows)} rows) and {args.out / 'paired.csv'} ({len(pairs)} cells)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
