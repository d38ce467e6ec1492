"""``edge-node status``: its arguments and the command (the snapshot and the screen are :mod:`edge_runtime.ops.status`).

Plain text (``rich``, which draws no colour or cursor codes when stdout is not a terminal, e.g.
piped over ssh); ``--json`` for scripts; ``--watch`` redraws in place on a terminal, else prints
one screen (or JSON object) after another.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from edge_runtime.cli.helptext import HelpFormatter, epilog
from edge_runtime.ops.status import read_snapshot, render

EXAMPLES = [
    "edge-node status --state-dir edge-state   # one screen",
    "edge-node status --state-dir edge-state --watch   # redraws every 2 s until Ctrl-C",
    "edge-node status --metrics http://127.0.0.1:9100/metrics --json   # a node run with --set node.metrics_port=9100",
]


def add_status_parser(sub: Any) -> None:
    """Add ``status`` to ``edge-node``'s sub-command parsers (the action of ``add_subparsers()``)."""
    p = sub.add_parser(
        "status", help="one screen of what a running (or stopped) node is doing",
        description="Show uptime, endpoint, devices (connected, known, top by samples), samples/s received and "
        "decided by verdict, queue, credit in flight, replay buffer and its per-class histogram, accuracy, updates, "
        "last checkpoint, model version, federation round, and writes to the state folder that fail (a full disk). Reads STATE_DIR/status.json (refreshed by the node "
        "every node.status_every_s), summary.json and the state DB read-only, or scrapes a /metrics URL "
        "(no per-device table there). Accuracy: prequential (each labelled train sample predicted, then learned "
        "from) and streamed eval (the samples devices send as split eval: predicted, never learned from).",
        formatter_class=HelpFormatter, epilog=epilog(EXAMPLES))
    src = p.add_mutually_exclusive_group()
    src.add_argument("--state-dir", metavar="DIR", help="the node's node.state_dir (default: edge-state)")
    src.add_argument("--metrics", metavar="URL", help="the node's Prometheus endpoint, e.g. http://127.0.0.1:9100/metrics")
    p.add_argument("--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (and between the two scrapes of --metrics; default 2)")
    p.add_argument("--count", type=int, default=None, help="with --watch: stop after this many screens")
    p.add_argument("--top", type=int, default=10, help="devices listed, most samples first (default 10)")
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON (with --watch: one object per line)")


def _read(args: argparse.Namespace) -> dict[str, Any]:
    return read_snapshot(args.state_dir, args.metrics, args.interval)


def run_status(args: argparse.Namespace) -> int:
    """The sub-command; exit 0, or 2 with a one-line message when the source cannot be read."""
    if args.interval <= 0:
        raise ValueError(f"--interval must be > 0 (got {args.interval})")
    if args.top < 0 or (args.count is not None and args.count < 1):
        raise ValueError("--top must be >= 0 and --count >= 1")
    from rich.console import Console

    console = Console(highlight=False)
    if not args.watch:
        _show(console, _read(args), args)
        return 0
    shown = 0
    try:
        if args.json or not console.is_terminal:
            while args.count is None or shown < args.count:
                if shown:
                    time.sleep(args.interval)
                _show(console, _read(args), args)
                shown += 1
                sys.stdout.flush()
            return 0
        from rich.live import Live

        with Live(render(_read(args), args.top, console.width), console=console, auto_refresh=False, screen=False) as live:
            shown = 1
            while args.count is None or shown < args.count:
                time.sleep(args.interval)
                live.update(render(_read(args), args.top, console.width), refresh=True)
                shown += 1
    except KeyboardInterrupt:
        pass
    return 0


def _show(console: Any, snap: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(snap, sort_keys=True), flush=True)
    else:
        console.print(render(snap, args.top, console.width))
