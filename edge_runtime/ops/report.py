"""What ``edge-node report STATE_DIR --out DIR`` writes: how learning went, from ``STATE_DIR/history.csv``.

Writes four PNG plots (accuracy, replay-buffer composition, verdict mix and update latency, all
against the same time axis) and ``index.html``, one page that shows them with the numbers (final
values, verdict totals, latency percentiles; the streamed eval accuracy of each modality's own head,
by name, when the history has its columns). Restarts of the node (a new ``pid`` in the history)
are marked and break the lines; an interval in which no micro-batch was learned is a gap in the
per-interval lines (NaN), not a line drawn across it. ``edge-node demo`` passes a summary of its
run (held-out test accuracy, completeness with the cut if any, configuration) shown above the plots.

Vocabulary (:data:`TERMS`): *prequential*, *streamed eval*, *held-out test*. matplotlib is a dependency of the package, so that
``edge-node demo`` from the Quick start writes this report too.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any, Callable

from edge_runtime.core.names import BUFFER_BYTES, BUFFER_ITEMS, EVAL_ACCURACY, MODALITY_EVAL_ACCURACY, PREQUENTIAL_ACCURACY, UPDATES
from edge_runtime.ops.history import modality_column, read_history
from edge_runtime.ops.snapshot import VERDICT_KINDS

TERMS = {  # the three accuracies, one name each, on the screen, in the HTML and in report.json
    "prequential": "each labelled train sample is predicted by the model before the model learns from it "
                   "(predict, then learn); cumulative over the stream.",
    "streamed eval": "the samples the devices stream as split eval (every k-th sample of a device): predicted, never "
                     "learned from; cumulative over the stream, so early samples count with the classes seen so far.",
    "held-out test": "a separate test set, never streamed, scored once by the final checkpoint.",
}

PLOTS = {  # file -> caption on the page
    "accuracy.png": "Cumulative prequential accuracy (predict, then learn) and streamed eval accuracy (split eval, never "
                    "learned from) over time; a restart breaks the lines.",
    "buffer.png": "Items of each class in the replay buffer over time (stacked); dotted lines mark node restarts.",
    "verdicts.png": "Share of each verdict among the samples decided in each history interval; an interval with no "
                    "verdict is a gap.",
    "latency.png": "Learner time per micro-batch (observe + ledger commit): mean and slowest of each history interval; "
                   "an interval with no micro-batch is a gap.",
}


# ----------------------------------------------------------------------------------- numbers


def class_columns(rows: list[dict[str, float | None]]) -> list[str]:
    return [k for k in rows[0] if k.startswith("buffer_class_")]


def modality_columns(rows: list[dict[str, float | None]]) -> dict[str, str]:
    """Modality name -> its history column (its own head's streamed eval accuracy), in the file's order;
    empty for a history written before these columns existed."""
    prefix = modality_column("")
    return {k.removeprefix(prefix): k for k in rows[0] if k.startswith(prefix)}


def restarts(rows: list[dict[str, float | None]]) -> list[int]:
    """Indices of rows whose ``pid`` differs from the row before (the node was restarted)."""
    return [i for i in range(1, len(rows)) if rows[i].get("pid") != rows[i - 1].get("pid")]


def verdict_deltas(rows: list[dict[str, float | None]]) -> list[tuple[int, int, dict[str, float]]]:
    """(row index of the interval's start, of its end, verdicts decided in the interval by kind) for each
    interval between rows with learner values in which something was decided; counters that went back
    (a restore from an older checkpoint) start a new base instead of giving negative counts."""
    out = []
    prev: tuple[int, dict[str, float]] | None = None
    for i, r in enumerate(rows):
        if r.get("samples_learned") is None:
            continue
        cur = {k: r.get(k) or 0.0 for k in VERDICT_KINDS}
        if prev is not None:
            delta = {k: cur[k] - prev[1][k] for k in VERDICT_KINDS}
            if all(v >= 0 for v in delta.values()) and sum(delta.values()) > 0:
                out.append((prev[0], i, delta))
        prev = (i, cur)
    return out


def verdict_intervals(rows: list[dict[str, float | None]]) -> list[tuple[float, dict[str, float]]]:
    """(samples learned at the interval's end, verdicts decided in the interval by kind): see :func:`verdict_deltas`."""
    return [(float(rows[end]["samples_learned"]), d) for _, end, d in verdict_deltas(rows)]  # type: ignore[arg-type]


def _broken_series(rows: list[dict[str, float | None]], xs: list[float],
                   value: Callable[[dict[str, float | None]], float]) -> tuple[list[float], list[float]]:
    """x and y of ``value(row)`` per row, with a NaN point before each restart (no line across the downtime)."""
    breaks = set(restarts(rows))
    out_x: list[float] = []
    out_y: list[float] = []
    for i, (x, r) in enumerate(zip(xs, rows)):
        if i in breaks:
            out_x.append(x)
            out_y.append(math.nan)
        out_x.append(x)
        out_y.append(value(r))
    return out_x, out_y


def interval_series(rows: list[dict[str, float | None]], name: str, xs: list[float]) -> tuple[list[float], list[float]]:
    """x and y of the per-interval column ``name`` (a latency) for a line plot: NaN, a gap in the line, where
    the interval learned no micro-batch (``batches`` 0 or empty) or the value is missing, and a NaN point
    before each restart, so that no line is drawn across an idle interval or the node's downtime."""
    def value(r: dict[str, float | None]) -> float:
        v = r.get(name)
        return float(v) if (r.get("batches") or 0) > 0 and v is not None else math.nan

    return _broken_series(rows, xs, value)


def state_series(rows: list[dict[str, float | None]], name: str, xs: list[float]) -> tuple[list[float], list[float]]:
    """x and y of the cumulative column ``name`` (an accuracy): the value holds through an idle interval
    (nothing was learned, so it did not change); NaN before the first value and a NaN point at each
    restart, so that no line crosses the node's downtime."""
    def value(r: dict[str, float | None]) -> float:
        v = r.get(name)
        return math.nan if v is None else float(v)

    return _broken_series(rows, xs, value)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def numbers(rows: list[dict[str, float | None]]) -> dict[str, Any]:
    """The figures the page shows, from the history rows (the last row with learner values is the final state)."""
    learned = [r for r in rows if r.get("samples_learned") is not None]
    last = learned[-1] if learned else rows[-1]
    verdicts = {k: int(last.get(k) or 0) for k in VERDICT_KINDS}
    total = sum(verdicts.values())
    means = [r["update_mean_s"] for r in rows if r.get("update_mean_s") is not None]
    worst = [r["update_max_s"] for r in rows if r.get("update_max_s") is not None]
    batches = sum(int(r.get("batches") or 0) for r in rows)
    weighted = sum((r.get("update_mean_s") or 0.0) * (r.get("batches") or 0) for r in rows)
    classes = {c.removeprefix("buffer_class_"): int(last.get(c) or 0) for c in class_columns(rows)}
    return {
        "rows": len(rows),
        "runs": len(restarts(rows)) + 1,
        "span_s": (rows[-1]["time"] or 0) - (rows[0]["time"] or 0),
        "first_time": rows[0]["time"],
        "samples_learned": int(last.get("samples_learned") or 0),
        PREQUENTIAL_ACCURACY: last.get(PREQUENTIAL_ACCURACY),
        EVAL_ACCURACY: last.get(EVAL_ACCURACY),
        MODALITY_EVAL_ACCURACY: {name: last.get(col) for name, col in modality_columns(rows).items()},
        UPDATES: int(last.get(UPDATES) or 0),
        BUFFER_ITEMS: int(last.get(BUFFER_ITEMS) or 0),
        BUFFER_BYTES: int(last.get(BUFFER_BYTES) or 0),
        "buffer_classes": classes,
        "verdicts": verdicts,
        "verdict_share": {k: (v / total if total else None) for k, v in verdicts.items()},
        "batches": batches,
        "latency_mean_s": weighted / batches if batches else None,
        "latency_interval_median_s": _percentile(means, 0.5),
        "latency_interval_p95_s": _percentile(means, 0.95),
        "latency_max_s": max(worst) if worst else None,
        "chance": 1.0 / len(classes) if classes else None,
    }


# ----------------------------------------------------------------------------------- plots

AXES_BOX = {"left": 0.11, "right": 0.79, "bottom": 0.14, "top": 0.91}  # figure fractions, the same in every panel
LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 7, "framealpha": 0.9}  # right of the axes


def elapsed(rows: list[dict[str, float | None]]) -> tuple[list[float], str]:
    """Time since the first row, in seconds, minutes or hours (whichever reads best), and the axis label
    with its unit; every panel uses this one x axis."""
    t0 = rows[0]["time"] or 0.0
    secs = [(r["time"] or t0) - t0 for r in rows]
    span = secs[-1] if secs else 0.0
    unit, div = ("s", 1.0) if span < 180 else ("min", 60.0) if span < 3 * 3600 else ("h", 3600.0)
    return [t / div for t in secs], f"time since the first history row ({unit})"


def _time_axis(ax: Any, xs: list[float], label: str) -> None:
    """The shared x axis: from 0 to the last row, labelled with its unit."""
    ax.set_xlim(0, max(xs[-1] if xs else 0.0, 1e-9))
    ax.set_xlabel(label)


def _mark_restarts(ax: Any, rows: list[dict[str, float | None]], xs: list[float]) -> None:
    for i, idx in enumerate(restarts(rows)):
        ax.axvline(xs[idx], color="0.4", linestyle=":", linewidth=1, label="node restart" if i == 0 else None)


def _plot_accuracy(plt: Any, rows: list, nums: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs_all, xlabel = elapsed(rows)
    for name, label, style in ((PREQUENTIAL_ACCURACY, "prequential", "-"), (EVAL_ACCURACY, "streamed eval", "--")):
        x, y = state_series(rows, name, xs_all)
        if any(not math.isnan(v) for v in y):
            ax.plot(x, y, style, linewidth=2, label=label, drawstyle="steps-post")
    if nums["chance"]:
        ax.axhline(nums["chance"], color="0.6", linewidth=1, label=f"chance ({nums['chance']:.2f})")
    _mark_restarts(ax, rows, xs_all)
    ax.set_ylim(0, 1)
    _time_axis(ax, xs_all, xlabel)
    ax.set_ylabel("accuracy, cumulative (fraction)")
    ax.grid(alpha=0.3)
    ax.legend(**LEGEND)
    _save(plt, fig, ax, "Prequential and streamed eval accuracy over time", path)


def _plot_buffer(plt: Any, rows: list, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    cols = class_columns(rows)
    keep = [i for i, r in enumerate(rows) if r.get(BUFFER_ITEMS) is not None]
    xs_all, xlabel = elapsed(rows)
    xs = [xs_all[i] for i in keep]
    if keep and cols:
        cmap = plt.get_cmap("tab10" if len(cols) <= 10 else "tab20")
        series = [[rows[i].get(c) or 0.0 for i in keep] for c in cols]
        ax.stackplot(xs, series, labels=[c.removeprefix("buffer_class_") for c in cols],
                     colors=[cmap(k % cmap.N) for k in range(len(cols))], alpha=0.9)
        ax.legend(title="class", title_fontsize=8, ncol=1 if len(cols) <= 12 else 2, **LEGEND)
    _mark_restarts(ax, rows, xs_all)
    _time_axis(ax, xs_all, xlabel)
    ax.set_ylabel("items in the buffer (count)")
    ax.grid(alpha=0.3)
    _save(plt, fig, ax, "Replay buffer composition over time", path)


def _plot_verdicts(plt: Any, rows: list, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs_all, xlabel = elapsed(rows)
    intervals = [(start, end, d) for start, end, d in verdict_deltas(rows)]
    if intervals:
        # One stacked bar per history interval, from its start row to its end row: an interval with no
        # verdict has no bar (a gap), and a short run with a single interval still shows its mix.
        lefts = [xs_all[s] for s, _, _ in intervals]
        widths = [max(xs_all[e] - xs_all[s], 1e-9) for s, e, _ in intervals]
        colors = {"admitted": "#2b8cbe", "trained": "#7bccc4", "skipped": "#bdbdbd", "eval": "#fdae6b", "invalid": "#e34a33"}
        bottom = [0.0] * len(intervals)
        for k in VERDICT_KINDS:
            share = [d[k] / sum(d.values()) for _, _, d in intervals]
            ax.bar(lefts, share, width=widths, bottom=bottom, align="edge", label=k, color=colors[k], linewidth=0)
            bottom = [b + v for b, v in zip(bottom, share)]
        ax.legend(**LEGEND)
    _mark_restarts(ax, rows, xs_all)
    ax.set_ylim(0, 1)
    _time_axis(ax, xs_all, xlabel)
    ax.set_ylabel("share of the interval's verdicts (fraction)")
    ax.grid(alpha=0.3)
    _save(plt, fig, ax, "Verdict mix over time", path)


def _plot_latency(plt: Any, rows: list, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs, xlabel = elapsed(rows)
    for name, label, style in (("update_max_s", "slowest of\nthe interval", dict(color="#fdae6b", linewidth=1.2)),
                               ("update_mean_s", "mean of\nthe interval", dict(color="#2b8cbe", linewidth=2))):
        x, y = interval_series(rows, name, xs)
        if any(not math.isnan(v) for v in y):
            ax.plot(x, [1000 * v for v in y], marker="o", markersize=4, label=label, **style)  # an isolated interval is a dot
    _mark_restarts(ax, rows, xs)
    ax.set_ylim(bottom=0)
    _time_axis(ax, xs, xlabel)
    ax.set_ylabel("learner time per micro-batch (ms)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**LEGEND)
    _save(plt, fig, ax, "Learner update latency (observe + commit) over time", path)


def _save(plt: Any, fig: Any, ax: Any, title: str, path: Path) -> None:
    ax.set_title(title, fontsize=11)
    fig.subplots_adjust(**AXES_BOX)  # the same box in every panel, so that their x axes line up on the page
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------- page


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.1f} ms"


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"


def _glossary() -> str:
    return "<dl class=\"terms\">" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in TERMS.items()) + "</dl>"


def _run_block(run: dict[str, Any] | None) -> str:
    """The run's summary above the plots: the headline accuracy, the cut (or that the stream is complete),
    and the run's tables (accuracy, completeness, configuration) side by side."""
    if not run:
        return ""
    label, value, note = run["headline"]
    parts = [f'<div class="headline"><span class="label">{html.escape(label)}</span> '
             f'<span class="value">{html.escape(value)}</span><div class="note">{html.escape(note)}</div></div>']
    if run.get("cut"):
        parts.append(f'<p class="cut"><strong>Stream cut:</strong> {html.escape(run["cut"])}. The accuracies cover only what '
                     f'was streamed.</p>')
    elif run.get("complete"):
        parts.append('<p class="complete"><strong>Stream complete:</strong> every sample of the stream was sent and decided.</p>')
    tables = "".join(f'<div><h2>{html.escape(title)}</h2>{_table(rows)}</div>' for title, rows in run.get("tables", []))
    parts.append(f'<div class="runtables">{tables}</div>')
    return "".join(parts)


def _page(state_dir: Path, n: dict[str, Any], run: dict[str, Any] | None = None) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(n["first_time"] or 0))
    title = (run or {}).get("title", "edge-node learning report")
    summary = _table([
        ("samples learned", f"{n['samples_learned']:,}"),
        ("prequential accuracy", _f(n[PREQUENTIAL_ACCURACY])),
        ("streamed eval accuracy", _f(n[EVAL_ACCURACY])),
        *((f"streamed eval accuracy, {name} head", _f(v)) for name, v in n[MODALITY_EVAL_ACCURACY].items()),
        ("chance", _f(n["chance"])),
        ("updates", f"{n[UPDATES]:,}"),
        ("replay buffer", f"{n[BUFFER_ITEMS]:,} items, {n[BUFFER_BYTES] / 1024:,.0f} KiB"),
        ("history rows", f"{n['rows']:,} over {n['span_s'] / 60:.1f} min"),
        ("first row", started),
        ("runs of the node", str(n["runs"])),
        *([("malformed rows skipped", f"{n['skipped_rows']:,}")] if n.get("skipped_rows") else []),
    ])
    classes = _table([(f"class {c}", str(v)) for c, v in n["buffer_classes"].items()]) if n["buffer_classes"] else "<p>-</p>"
    verdicts = _table([(k, f"{v:,} ({_f(n['verdict_share'][k], '{:.1%}')})") for k, v in n["verdicts"].items()])
    latency = _table([
        ("micro-batches", f"{n['batches']:,}"),
        ("mean over all batches", _ms(n["latency_mean_s"])),
        ("median of interval means", _ms(n["latency_interval_median_s"])),
        ("95th percentile of interval means", _ms(n["latency_interval_p95_s"])),
        ("slowest batch", _ms(n["latency_max_s"])),
    ])
    figure = (
        '<figure><img src="{src}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
    )
    sections = [
        ("Accuracy", "accuracy.png", summary),
        ("Replay buffer", "buffer.png", classes),
        ("Verdicts", "verdicts.png", verdicts),
        ("Latency", "latency.png", latency),
    ]
    body = "".join(
        f'<section><h2>{title}</h2><div class="row">{figure.format(src=src, alt=html.escape(PLOTS[src]))}'
        f'<div class="nums">{nums}</div></div></section>' for title, src, nums in sections)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}: {html.escape(str(state_dir))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; }}
h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }} h2 {{ font-size: 1.1em; border-bottom: 1px solid #ddd; }}
.sub {{ color: #666; margin-top: 0; }}
.row {{ display: grid; grid-template-columns: minmax(0, 700px) minmax(300px, 1fr); gap: 1.5em; align-items: start; }}
@media (max-width: 1000px) {{ .row {{ grid-template-columns: 1fr; }} }}
figure {{ margin: 0; }} figure img {{ width: 100%; height: auto; border: 1px solid #eee; }}
figcaption {{ font-size: 0.85em; color: #666; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th {{ text-align: left; font-weight: normal; color: #555; padding: 2px 14px 2px 0; vertical-align: top; white-space: nowrap; }}
td {{ text-align: right; font-variant-numeric: tabular-nums; padding: 2px 0; white-space: nowrap; }}
.runtables td {{ text-align: left; white-space: normal; }}
.headline {{ margin: 0.8em 0; padding: 0.6em 1em; background: #f3f7fb; border-left: 5px solid #2b8cbe; }}
.headline .label {{ font-size: 1.1em; }} .headline .value {{ font-size: 2.2em; font-weight: bold; margin-left: 0.3em; }}
.headline .note {{ color: #555; font-size: 0.9em; }}
.cut {{ padding: 0.5em 1em; background: #fdecea; border-left: 5px solid #e34a33; }}
.complete {{ padding: 0.5em 1em; background: #eef7ee; border-left: 5px solid #41ab5d; }}
.runtables {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 0 2em; }}
dl.terms {{ font-size: 0.85em; color: #444; }} dl.terms dt {{ font-weight: bold; float: left; margin-right: 0.5em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="sub">{html.escape(str(state_dir))} &middot; generated {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
&middot; prequential and streamed eval accuracies are cumulative over the stream</p>
{_run_block(run)}
{_glossary()}
{body}
</body></html>
"""


def write_report(state_dir: Path, out: Path, run: dict[str, Any] | None = None) -> Path:
    """Write the four plots and ``index.html`` of ``state_dir``'s history to ``out``; returns the page's path.

    ``run`` (from ``edge-node demo``) is shown above the plots: ``title``, ``headline`` (label, value,
    note), ``cut`` (a sentence, or None), ``complete`` and ``tables`` (a list of (title, [(name, value)]))."""
    skipped: list[tuple[int, str]] = []
    rows = read_history(state_dir, skipped)  # malformed rows (a crash mid-write) left out, each with a warning
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    nums = numbers(rows)
    nums["skipped_rows"] = len(skipped)
    _plot_accuracy(plt, rows, nums, out / "accuracy.png")
    _plot_buffer(plt, rows, out / "buffer.png")
    _plot_verdicts(plt, rows, out / "verdicts.png")
    _plot_latency(plt, rows, out / "latency.png")
    page = out / "index.html"
    page.write_text(_page(state_dir, nums, run))
    return page
