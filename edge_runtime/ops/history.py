"""The node's learning history: ``state_dir/history.csv``, one row every ``node.history_every_s``.

A CSV rather than a table in the state DB, so that appending a row never competes with the
learner's write transactions, and the file can be read (or copied off the box) with anything.
Counts of the learner (samples, verdicts, updates, accuracy, and after the buffer's per-class columns
``modality_eval_accuracy_<name>``: the streamed eval accuracy of each modality's own head, in the
configuration's order) are cumulative over all runs of the state_dir, as the checkpoint carries them;
``received``/``decided`` count this run (``pid`` changes at a restart); latency is over the row's
interval. ``edge-node report`` plots it. A file with another header (another model, other
modalities, or one written before the per-modality columns) is moved aside at start.

A crash (or a full disk) mid-write can leave the last row cut, without its newline: the writer then
starts a new line before its next row, and the reader skips a malformed row (wrong number of fields,
a cell that is not a number) with a warning naming its line, keeping every other row.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

from edge_runtime.core.names import (LOGGER_HISTORY, BUFFER_BYTES, BUFFER_ITEMS, EVAL_ACCURACY, MODALITY_EVAL_ACCURACY,
                                     PREQUENTIAL_ACCURACY, UPDATES)
from edge_runtime.ops.snapshot import VERDICT_KINDS

log = logging.getLogger(LOGGER_HISTORY)

FILENAME = "history.csv"
MAX_WARNINGS = 5  # malformed rows warned about one by one when reading; the rest in one count
BASE_COLUMNS = [
    "time", "pid", "uptime_s", "samples_learned", "received", "decided", PREQUENTIAL_ACCURACY, EVAL_ACCURACY,
    UPDATES, BUFFER_ITEMS, BUFFER_BYTES, *VERDICT_KINDS, "batches", "update_mean_s", "update_max_s", "queue_depth",
]


def modality_column(name: str) -> str:
    """The history column of modality ``name``'s own head's streamed eval accuracy."""
    return f"{MODALITY_EVAL_ACCURACY}_{name}"


def columns(num_classes: int, modalities: Sequence[str] = ()) -> list[str]:
    """Header of a history file for a model with ``num_classes`` classes and these modalities (the configuration's order)."""
    return BASE_COLUMNS + [f"buffer_class_{c}" for c in range(num_classes)] + [modality_column(n) for n in modalities]


def verdict_kinds(verdicts: dict[str, int]) -> dict[str, int]:
    """Counts per verdict kind: every ``invalid:<reason>`` under ``invalid``."""
    out = dict.fromkeys(VERDICT_KINDS, 0)
    for verdict, n in verdicts.items():
        kind = verdict.split(":", 1)[0]
        out[kind] = out.get(kind, 0) + int(n)
    return out


class HistoryWriter:
    """Appends rows to ``state_dir/history.csv``; a file with another header is moved aside first."""

    def __init__(self, state_dir: Path, num_classes: int, modalities: Sequence[str] = ()) -> None:
        self.path = Path(state_dir) / FILENAME
        self.columns = columns(num_classes, modalities)
        if self.path.exists():
            try:
                with open(self.path, newline="", errors="replace") as f:
                    header = next(csv.reader(f), None)
            except csv.Error:  # a NUL byte in the header: not a history file this writer can append to
                header = None
            if header != self.columns:
                aside = self.path.with_name(f"history.{int(time.time())}.csv")
                os.replace(self.path, aside)
                log.warning("history.csv has other columns (another model, other modalities, or written by an older "
                            "edge-runtime); moved aside",
                            extra={"event": "history_moved", "path": str(aside)})

    def append(self, row: dict[str, Any]) -> None:
        """Write one row (missing columns empty, None empty) and flush it to the OS; a file whose last row
        was cut (no newline at its end) gets a newline first, so the cut row stays a line of its own."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        cut = size > 0 and not self._ends_in_newline()
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            if cut:
                f.write("\r\n")  # csv's line terminator
                log.warning(f"{self.path} ended in a cut row (a crash mid-write?); starting a new line after it "
                            "(edge-node report skips the cut row)", extra={"event": "history_cut_row", "path": str(self.path)})
            if size == 0:
                writer.writeheader()
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})

    def _ends_in_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


def read_history(state_dir: str | Path, skipped: list[tuple[int, str]] | None = None) -> list[dict[str, float | None]]:
    """The rows of ``state_dir/history.csv`` as floats (empty cells: None), oldest first.

    A malformed row (cut by a crash, two rows run together on one line, not numbers) is left out with a
    warning; ``skipped``, when given, receives (line number, reason) of each.
    """
    path = Path(state_dir) / FILENAME
    if not path.exists():
        raise ValueError(f"{path} does not exist: the node writes it every node.history_every_s seconds while it runs "
                         "(run the node with this edge-runtime, or give the node's node.state_dir)")
    with open(path, newline="", errors="replace") as f:
        lines = f.read().split("\n")
    header: list[str] | None = None
    rows = []
    bad: list[tuple[int, str]] = []
    for lineno, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            fields = next(csv.reader([line]))
        except csv.Error as err:  # a NUL byte, a stray quote
            bad.append((lineno, f"not CSV ({err})"))
            continue
        if header is None:
            header = fields
            continue
        if len(fields) != len(header):
            bad.append((lineno, f"{len(fields)} fields where the header has {len(header)} (a row cut by a crash?)"))
            continue
        try:
            rows.append({k: (float(v) if v != "" else None) for k, v in zip(header, fields)})
        except ValueError as err:
            bad.append((lineno, str(err)))
    for lineno, reason in bad[:MAX_WARNINGS]:
        log.warning(f"{path} line {lineno}: skipping a malformed row: {reason}",
                    extra={"event": "history_row_skipped", "path": str(path), "line": lineno, "reason": reason})
    if len(bad) > MAX_WARNINGS:
        log.warning(f"{path}: {len(bad) - MAX_WARNINGS} more malformed rows skipped ({len(bad)} in all)",
                    extra={"event": "history_rows_skipped", "path": str(path), "count": len(bad)})
    if skipped is not None:
        skipped.extend(bad)
    if not rows:
        if bad:
            raise ValueError(f"{path} has no readable row ({len(bad)} malformed); the file is damaged "
                             "(move it aside to start a new one)")
        raise ValueError(f"{path} has no rows yet: the first is written node.history_every_s seconds after the node starts")
    return rows
