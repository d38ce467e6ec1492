"""The node's learning history: ``state_dir/history.csv``, one row every ``node.history_every_s``.

A CSV rather than a table in the state DB, so that appending a row never competes with the
learner's write transactions, and the file can be read (or copied off the box) with anything.
Counts of the learner (samples, verdicts, updates, accuracy) are cumulative over all runs of the
state_dir, as the checkpoint carries them; ``received``/``decided`` count this run (``pid``
changes at a restart); latency is over the row's interval. ``edge-node report`` plots it.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any

from edge_runtime.core.names import LOGGER_HISTORY, BUFFER_BYTES, BUFFER_ITEMS, EVAL_ACCURACY, PREQUENTIAL_ACCURACY, UPDATES
from edge_runtime.ops.snapshot import VERDICT_KINDS

log = logging.getLogger(LOGGER_HISTORY)

FILENAME = "history.csv"
BASE_COLUMNS = [
    "time", "pid", "uptime_s", "samples_learned", "received", "decided", PREQUENTIAL_ACCURACY, EVAL_ACCURACY,
    UPDATES, BUFFER_ITEMS, BUFFER_BYTES, *VERDICT_KINDS, "batches", "update_mean_s", "update_max_s", "queue_depth",
]


def columns(num_classes: int) -> list[str]:
    """Header of a history file for a model with ``num_classes`` classes."""
    return BASE_COLUMNS + [f"buffer_class_{c}" for c in range(num_classes)]


def verdict_kinds(verdicts: dict[str, int]) -> dict[str, int]:
    """Counts per verdict kind: every ``invalid:<reason>`` under ``invalid``."""
    out = dict.fromkeys(VERDICT_KINDS, 0)
    for verdict, n in verdicts.items():
        kind = verdict.split(":", 1)[0]
        out[kind] = out.get(kind, 0) + int(n)
    return out


class HistoryWriter:
    """Appends rows to ``state_dir/history.csv``; a file with another header is moved aside first."""

    def __init__(self, state_dir: Path, num_classes: int) -> None:
        self.path = Path(state_dir) / FILENAME
        self.columns = columns(num_classes)
        if self.path.exists():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            if header != self.columns:
                aside = self.path.with_name(f"history.{int(time.time())}.csv")
                os.replace(self.path, aside)
                log.warning("history.csv has other columns (another model?); moved aside",
                            extra={"event": "history_moved", "path": str(aside)})

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (missing columns empty, None empty) and flush it to the OS."""
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def read_history(state_dir: str | Path) -> list[dict[str, float | None]]:
    """The rows of ``state_dir/history.csv`` as floats (empty cells: None), oldest first."""
    path = Path(state_dir) / FILENAME
    if not path.exists():
        raise ValueError(f"{path} does not exist: the node writes it every node.history_every_s seconds while it runs "
                         "(run the node with this edge-runtime, or give the node's node.state_dir)")
    rows = []
    with open(path, newline="") as f:
        for lineno, raw in enumerate(csv.DictReader(f), start=2):
            try:
                rows.append({k: (float(v) if v not in ("", None) else None) for k, v in raw.items()})
            except ValueError as err:
                raise ValueError(f"{path} line {lineno}: {err}; the file is damaged (move it aside to start a new one)") from None
    if not rows:
        raise ValueError(f"{path} has no rows yet: the first is written node.history_every_s seconds after the node starts")
    return rows
