"""``edge-node report``: its arguments and the command (the plots and the page are :mod:`edge_runtime.ops.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_runtime.cli.helptext import HelpFormatter, epilog
from edge_runtime.ops.report import write_report

EXAMPLES = ["edge-node report --state-dir edge-state --out edge-report   # edge-report/index.html"]


def add_report_parser(sub: Any) -> None:
    """Add ``report`` to ``edge-node``'s sub-command parsers (the action of ``add_subparsers()``)."""
    p = sub.add_parser(
        "report", help="PNG plots + one HTML page of a node's learning history",
        description="Read STATE_DIR/history.csv (a row every node.history_every_s while the node runs) and write "
        "accuracy.png, buffer.png, verdicts.png, latency.png and index.html (the plots with their numbers) to --out.",
        formatter_class=HelpFormatter, epilog=epilog(EXAMPLES))
    p.add_argument("state_dir", metavar="STATE_DIR", nargs="?", default=None, help="the node's node.state_dir (or --state-dir)")
    p.add_argument("--state-dir", dest="state_dir_option", metavar="DIR", default=None,
                   help="the node's node.state_dir, as every command that reads a state folder spells it (default: edge-state)")
    p.add_argument("--out", metavar="DIR", default=None, help="folder for the report (default: STATE_DIR/report)")


def run_report(args: argparse.Namespace) -> int:
    """The sub-command: write the report, print where; exit 0 (2 when the state folder is given twice or the history is missing)."""
    if args.state_dir and args.state_dir_option and args.state_dir != args.state_dir_option:
        raise ValueError(f"report: two state folders given ({args.state_dir} and --state-dir {args.state_dir_option}); give one")
    state_dir = Path(args.state_dir or args.state_dir_option or "edge-state")
    out = Path(args.out) if args.out else state_dir / "report"
    page = write_report(state_dir, out)
    print(f"report written to {page}")
    return 0
