"""``edge-node state reset``: its arguments and the command (the work is :mod:`edge_runtime.node.state_reset`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edge_runtime.cli.helptext import HelpFormatter, epilog

RESET_EXAMPLES = [
    "edge-node state reset --state-dir edge-state   # asks, then moves edge-state to edge-state.bak-<date>-<time>",
]


def add_state_parser(sub: Any) -> None:
    """Add ``state`` (with its sub-command ``reset``) to ``edge-node``'s sub-command parsers."""
    state = sub.add_parser(
        "state", help="manage a node's state folder (reset: move it aside to start fresh)", formatter_class=HelpFormatter,
        description="Commands on a node's state folder (node.state_dir).", epilog=epilog(RESET_EXAMPLES))
    actions = state.add_subparsers(dest="state_command", required=True, metavar="ACTION")
    reset = actions.add_parser(
        "reset", help="move the state folder aside (DIR.bak-YYYYmmdd-HHMMSS), so that the next run starts fresh",
        formatter_class=HelpFormatter, epilog=epilog(RESET_EXAMPLES),
        description="Rename the state folder to DIR.bak-YYYYmmdd-HHMMSS beside it (nothing is deleted: the replay "
        "buffer, ledger, checkpoints and history stay in the backup), so that the next `edge-node run` starts "
        "fresh there, e.g. with another model.num_classes or model. This is how a node's class count or model is "
        "changed on purpose: `edge-node run` refuses a configuration that does not fit the stored state. Refused "
        "while a node holds the folder (stop it first). Asks for confirmation on a terminal; --yes skips the question.")
    reset.add_argument("--state-dir", metavar="DIR", required=True, help="the node's node.state_dir")
    reset.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (needed when stdin is not a terminal)")


def _question(folder: Any, backup: str) -> str:
    newest = f", newest {folder.newest_checkpoint}" if folder.newest_checkpoint else ""
    return (f"move {folder.path} ({folder.checkpoints} checkpoint(s){newest}, state.db {folder.state_db_bytes / 2**20:.1f} MiB) "
            f"aside to {backup}? The next edge-node run on {folder.path} starts fresh. [y/N] ")


def _confirmed(folder: Any, backup: str) -> bool | None:
    """The user's answer (None when stdin is not a terminal: nobody to ask)."""
    if not sys.stdin.isatty():
        return None
    print(_question(folder, backup), end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")  # Ctrl-C: KeyboardInterrupt, exit 130, nothing moved


def run_state(args: argparse.Namespace) -> int:
    """``edge-node state reset``: 0 when moved; 2 when refused (missing, not a state folder, in use,
    no terminal to ask and no --yes); 1 when the user answers no."""
    from pathlib import Path

    from edge_runtime.node.state_reset import backup_path, describe, reset_state_dir

    path = Path(args.state_dir)
    folder = describe(path)
    if not args.yes:
        answer = _confirmed(folder, str(backup_path(path)))
        if answer is None:
            raise ValueError(f"state reset: stdin is not a terminal, so there is nobody to confirm; add --yes to move "
                             f"{path} aside; nothing moved")
        if not answer:
            print(f"edge-node state reset: {path} left as it was", file=sys.stderr)
            return 1
    backup = reset_state_dir(path)
    print(f"moved {path} to {backup} (nothing deleted); the next edge-node run on {path} starts fresh")
    return 0
