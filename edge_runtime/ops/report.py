"""What ``edge-node report STATE_DIR --out DIR`` writes: how learning went, from ``STATE_DIR/history.csv``.

Writes four PNG plots (accuracy over samples, replay-buffer composition over time, verdict mix
over samples, update latency over time) and ``index.html``, one page that shows them with the
numbers (final values, verdict totals, latency percentiles). Restarts of the node (a new ``pid``
in the history) are marked on the time axes. matplotlib is a dependency of the package, so that
``edge-node demo`` from the Quick start writes this report too.
"""

from __future__ import annotations

import html
import math
import time
from pathlib import Path
from typing import Any

from edge_runtime.core.names import BUFFER_BYTES, BUFFER_ITEMS, EVAL_ACCURACY, PREQUENTIAL_ACCURACY, UPDATES
from edge_runtime.ops.history import read_history
from edge_runtime.ops.snapshot import VERDICT_KINDS

PLOTS = {  # file -> caption on the page
    "accuracy.png": "Cumulative prequential accuracy (every labelled train sample is predicted before it is learned) "
                    "and accuracy on the samples streamed as split eval, against samples learned.",
    "buffer.png": "Items of each class in the replay buffer over time (stacked); dotted lines mark node restarts.",
    "verdicts.png": "Share of each verdict among the samples decided in each history interval.",
    "latency.png": "Learner time per micro-batch (observe + ledger commit): mean and slowest of each history interval.",
}


# ----------------------------------------------------------------------------------- numbers


def _col(rows: list[dict[str, float | None]], name: str) -> list[float | None]:
    return [r.get(name) for r in rows]


def _pairs(xs: list[float | None], ys: list[float | None]) -> tuple[list[float], list[float]]:
    keep = [(x, y) for x, y in zip(xs, ys) if x is not None and y is not None]
    return [x for x, _ in keep], [y for _, y in keep]


def class_columns(rows: list[dict[str, float | None]]) -> list[str]:
    return [k for k in rows[0] if k.startswith("buffer_class_")]


def restarts(rows: list[dict[str, float | None]]) -> list[int]:
    """Indices of rows whose ``pid`` differs from the row before (the node was restarted)."""
    return [i for i in range(1, len(rows)) if rows[i].get("pid") != rows[i - 1].get("pid")]


def verdict_intervals(rows: list[dict[str, float | None]]) -> list[tuple[float, dict[str, float]]]:
    """(samples learned at the interval's end, verdicts decided in the interval by kind) for each row
    interval in which something was decided; counters that went back (a restore from an older
    checkpoint) start a new base instead of giving negative counts."""
    out = []
    prev: dict[str, float] | None = None
    for r in rows:
        if r.get("samples_learned") is None:
            continue
        cur = {k: r.get(k) or 0.0 for k in VERDICT_KINDS}
        if prev is not None:
            delta = {k: cur[k] - prev[k] for k in VERDICT_KINDS}
            if all(v >= 0 for v in delta.values()) and sum(delta.values()) > 0:
                out.append((float(r["samples_learned"]), delta))  # type: ignore[arg-type]
        prev = cur
    return out


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


def _elapsed(rows: list[dict[str, float | None]]) -> tuple[list[float], str]:
    """Time since the first row, in seconds, minutes or hours (whichever reads best), and the axis label."""
    t0 = rows[0]["time"] or 0.0
    secs = [(r["time"] or t0) - t0 for r in rows]
    span = secs[-1] if secs else 0.0
    unit, div = ("seconds", 1.0) if span < 180 else ("minutes", 60.0) if span < 3 * 3600 else ("hours", 3600.0)
    return [t / div for t in secs], f"{unit} since the first history row"


def _mark_restarts(ax: Any, rows: list[dict[str, float | None]], xs: list[float]) -> None:
    for i, idx in enumerate(restarts(rows)):
        ax.axvline(xs[idx], color="0.4", linestyle=":", linewidth=1, label="node restart" if i == 0 else None)


def _plot_accuracy(plt: Any, rows: list, nums: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = _col(rows, "samples_learned")
    for name, label, style in ((PREQUENTIAL_ACCURACY, "prequential (predict, then learn)", "-"),
                               (EVAL_ACCURACY, "held-out (streamed eval split)", "--")):
        x, y = _pairs(xs, _col(rows, name))
        if x:
            ax.plot(x, y, style, linewidth=2, label=label)
    if nums["chance"]:
        ax.axhline(nums["chance"], color="0.6", linewidth=1, label=f"chance ({nums['chance']:.2f})")
    ax.set_ylim(0, 1)
    ax.set_xlabel("samples learned")
    ax.set_ylabel("accuracy (cumulative)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    _save(plt, fig, ax, "Accuracy over samples learned", path)


def _plot_buffer(plt: Any, rows: list, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    cols = class_columns(rows)
    keep = [i for i, r in enumerate(rows) if r.get(BUFFER_ITEMS) is not None]
    xs_all, xlabel = _elapsed(rows)
    xs = [xs_all[i] for i in keep]
    if keep and cols:
        cmap = plt.get_cmap("tab10" if len(cols) <= 10 else "tab20")
        series = [[rows[i].get(c) or 0.0 for i in keep] for c in cols]
        ax.stackplot(xs, series, labels=[c.removeprefix("buffer_class_") for c in cols],
                     colors=[cmap(k % cmap.N) for k in range(len(cols))], alpha=0.9)
        ax.legend(title="class", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, title_fontsize=8,
                  ncol=1 if len(cols) <= 12 else 2)
    _mark_restarts(ax, rows, xs_all)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("items in the buffer")
    ax.grid(alpha=0.3)
    _save(plt, fig, ax, "Replay buffer composition over time", path)


def _plot_verdicts(plt: Any, rows: list, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    intervals = verdict_intervals(rows)
    if intervals:
        # One stacked bar per interval, from the previous interval's end to its own: a short run with a
        # single interval still shows its mix (an area plot needs two points).
        xs = [x for x, _ in intervals]
        widths = [b - a for a, b in zip(xs, xs[1:])]
        first = min(widths) if widths else xs[0]
        lefts = [xs[0] - first] + xs[:-1]
        widths = [first] + widths
        colors = {"admitted": "#2b8cbe", "trained": "#7bccc4", "skipped": "#bdbdbd", "eval": "#fdae6b", "invalid": "#e34a33"}
        bottom = [0.0] * len(intervals)
        for k in VERDICT_KINDS:
            share = [d[k] / sum(d.values()) for _, d in intervals]
            ax.bar(lefts, share, width=widths, bottom=bottom, align="edge", label=k, color=colors[k], linewidth=0)
            bottom = [b + v for b, v in zip(bottom, share)]
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("samples learned")
    ax.set_ylabel("share of the interval's verdicts")
    ax.grid(alpha=0.3)
    _save(plt, fig, ax, "Verdict mix over samples learned", path)


def _plot_latency(plt: Any, rows: list, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs, xlabel = _elapsed(rows)
    for name, label, style in (("update_max_s", "slowest batch of the interval", dict(color="#fdae6b", linewidth=1.2)),
                               ("update_mean_s", "mean of the interval", dict(color="#2b8cbe", linewidth=2))):
        x, y = _pairs(xs, _col(rows, name))  # type: ignore[arg-type]
        if x:
            ax.plot(x, [1000 * v for v in y], marker=".", label=label, **style)
    _mark_restarts(ax, rows, xs)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ms per micro-batch")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    _save(plt, fig, ax, "Learner update latency (observe + commit) over time", path)


def _save(plt: Any, fig: Any, ax: Any, title: str, path: Path) -> None:
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------- page


def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:.1f} ms"


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"


def _page(state_dir: Path, n: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(n["first_time"] or 0))
    summary = _table([
        ("samples learned", f"{n['samples_learned']:,}"),
        ("prequential accuracy", _f(n[PREQUENTIAL_ACCURACY])),
        ("held-out accuracy (eval split)", _f(n[EVAL_ACCURACY])),
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
<html lang="en"><head><meta charset="utf-8"><title>edge-node report: {html.escape(str(state_dir))}</title>
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
</style></head><body>
<h1>edge-node learning report</h1>
<p class="sub">{html.escape(str(state_dir))} &middot; generated {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
&middot; accuracies are cumulative over the stream</p>
{body}
</body></html>
"""


def write_report(state_dir: Path, out: Path) -> Path:
    """Write the four plots and ``index.html`` of ``state_dir``'s history to ``out``; returns the page's path."""
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
    page.write_text(_page(state_dir, nums))
    return page
