"""What ``edge-node status`` shows: one screen of what a node is doing, from its state_dir or its /metrics.

Reads only what the node publishes (:mod:`edge_runtime.ops.snapshot`): never a write lock on the state
DB, never a socket to the node besides an HTTP scrape. :func:`render` draws the screen with ``rich``
(which draws no colour or cursor codes when stdout is not a terminal, e.g. piped over ssh); the
command itself (``--watch``, ``--json``) is :mod:`edge_runtime.cli.status`.
"""

from __future__ import annotations

import time
from typing import Any

from edge_runtime.core.names import UPDATES
from edge_runtime.ops.snapshot import read_metrics, read_state_dir


def read_snapshot(state_dir: str | None = None, metrics_url: str | None = None, interval: float = 2.0) -> dict[str, Any]:
    """The node's snapshot: scraped from ``metrics_url`` (two scrapes ``min(interval, 1)`` seconds apart,
    for the rates) when given, else read from ``state_dir`` (default ``edge-state``)."""
    if metrics_url:
        url = metrics_url if "://" in metrics_url else f"http://{metrics_url}"
        return read_metrics(url, interval=min(interval, 1.0))
    return read_state_dir(state_dir or "edge-state")


# ----------------------------------------------------------------------------------- formatting


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def _rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}/s"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def render(snap: dict[str, Any], top: int = 10, width: int = 80) -> Any:
    """The status screen of ``snap`` as a rich renderable: tables side by side from ``width`` 110 on, else stacked."""
    from rich import box
    from rich.bar import Bar
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    rates = snap.get("rates") or {}
    s, dev, q, buf = snap["samples"], snap["devices"], snap["queue"], snap["buffer"]
    ck, model = snap.get("checkpoint") or {}, snap.get("model") or {}
    state = snap.get("state", "unknown")
    head = Text()
    head.append("edge-node ", style="bold")
    head.append(state, style={"running": "bold green", "stopped": "yellow"}.get(state, "bold red"))
    head.append(f"  pid {snap.get('pid') or '-'}  up {_age(snap.get('uptime_s'))}  endpoint {snap.get('endpoint') or '-'}")
    head.append(f"\nsource: {snap.get('source', '-')}", style="dim")
    if ck.get("path"):
        head.append(f"\nlast checkpoint: {ck['path']}", style="dim")
    disk = snap.get("disk") or {}
    if disk.get("failing"):
        parts = []
        for what, ep in disk["failing"].items():
            detail = ", ".join(x for x in (ep.get("error"), f"for {_age(ep['for_s'])}" if ep.get("for_s") is not None else None,
                                          f"{ep['errors']} failed" if ep.get("errors") else None) if x)
            parts.append(f"{what} ({detail})" if detail else what)
        head.append(f"\ndisk: cannot write {'; '.join(parts)}: retrying with backoff, learning goes on from memory; "
                    "free space in the state folder", style="bold red")
    if state == "stale":
        head.append("\nthe process is gone and wrote no final status (killed or crashed): numbers are as of its last write",
                    style="red")

    def kv_table(title: str) -> Table:
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_header=False, pad_edge=False)
        t.add_column(style="bold", no_wrap=True)
        t.add_column(justify="right", no_wrap=True)
        t.add_column(justify="right", no_wrap=True, style="dim")
        return t

    flow = kv_table("samples (this run)")
    flow.add_row("received", _num(s.get("received")), _rate(rates.get("received")))  # resends included
    flow.add_row("decided", _num(s.get("decided")), _rate(rates.get("decided")))
    for verdict, n in (s.get("verdicts") or {}).items():
        flow.add_row(f"  {verdict}", _num(n), _rate((rates.get("verdicts") or {}).get(verdict)))
    flow.add_row("queue", f"{_num(q.get('depth'))} ({_bytes(q.get('bytes'))})", "")
    flow.add_row("credit in flight", _num(snap.get("credit_in_flight")), "")

    learn = kv_table("learning (all runs)")
    _accuracy_rows(learn, s, snap.get("accuracy") or {})
    learn.add_row("updates", _num(snap.get(UPDATES)), "")
    window = rates.get("interval_s")
    lat, how = rates.get("update_latency_s"), f"mean, last {window:.0f}s" if window else "mean"
    if lat is None and snap.get("update_last_s") is not None:
        lat, how = snap["update_last_s"], "last batch"
    learn.add_row("update latency", "-" if lat is None else f"{1000 * lat:.1f} ms", how)
    learn.add_row("checkpoint", _age(ck.get("age_s")) + " ago" if ck.get("age_s") is not None else "-", _num(ck.get("count")) + " this run")
    learn.add_row("model version", _num(model.get("version")), model.get("endpoint") or "")
    fed = snap.get("federation")
    learn.add_row("federation", _federation(fed), "")


    devices = Table(title=f"devices: {_num(dev.get('connected'))} connected, {_num(dev.get('known'))} known",
                    title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("device", "left"), ("decided", "right"), ("rate", "right"), ("last seen", "right")):
        devices.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    listed = dev.get("top")
    if listed is None:
        devices.add_row("(no per-device table over --metrics: use --state-dir)", "", "", "")
    for d in (listed or [])[:top]:
        devices.add_row(d["device"], _num(d["samples"]), _rate(d.get("rate")), _age(d.get("last_seen_age_s")) + " ago")
    if listed and len(listed) > top:
        devices.add_row(f"... {len(listed) - top} more listed", "", "", "")

    classes = buf.get("classes") or {}
    hist = Table(title=f"replay buffer: {_num(buf.get('items'))} items, {_bytes(buf.get('bytes'))}",
                 title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    hist.add_column("class", justify="right", no_wrap=True)
    hist.add_column("items", justify="right", no_wrap=True)
    hist.add_column("", width=24)
    most = max(classes.values(), default=0) or 1
    for label, n in classes.items():
        hist.add_row(label, _num(n), Bar(most, 0, n, width=24))
    if not classes:
        hist.add_row("-", "0", "")
    if width < 110:
        return Group(head, flow, learn, devices, hist)
    upper, lower = Table.grid(padding=(0, 4)), Table.grid(padding=(0, 4))
    upper.add_row(flow, learn)
    lower.add_row(devices, hist)
    return Group(head, upper, lower)


def _accuracy_rows(table: Any, samples: dict[str, Any], acc: dict[str, Any]) -> None:
    """The learner's counts and its two accuracies, in the words README.md uses: *prequential* (each labelled
    train sample predicted before it is learned from) and *streamed eval* (the samples devices stream as split
    eval: predicted, never learned from), the latter also for each modality's own head (``<name> head``: the
    model's logits of that modality alone), by name. A *held-out test* set, never streamed, is not the node's
    to measure."""
    kinds = samples.get("learned_verdicts") or {}
    table.add_row("samples decided", _num(samples.get("learned")), "train + eval + invalid")
    if kinds:
        table.add_row("  learned from", _num(kinds.get("admitted", 0) + kinds.get("trained", 0)), "admitted + trained")
    table.add_row("prequential acc", _pct(acc.get("prequential")), "predict, then learn")
    evals = f"{kinds['eval']:,} eval samples" if kinds.get("eval") else "eval split, never learned"
    table.add_row("streamed eval acc", _pct(acc.get("streamed_eval", acc.get("held_out"))), evals)
    for name, value in (acc.get("modality_streamed_eval") or {}).items():  # each modality's own logits, same eval samples
        table.add_row(f"  {name} head", _pct(value), f"{name} alone")


def _federation(fed: dict[str, Any] | None) -> str:
    if not fed:
        return "-"
    parts = []
    if "round" in fed:
        parts.append(f"round {int(fed['round'])}")
    at = fed.get("round_timestamp_seconds") or fed.get("last_round_timestamp_seconds")
    if at:
        parts.append(f"{_age(time.time() - at)} ago")
    parts += [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in fed.items()
              if k not in ("round", "round_timestamp_seconds", "last_round_timestamp_seconds")]
    return ", ".join(parts)
