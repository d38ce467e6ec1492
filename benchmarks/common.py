"""Shared pieces of the benchmarks: resumable CSV rows, confidence intervals, data loading, plots."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np


class ResumableCSV:
    """Rows appended one at a time (flushed), keyed by ``key_fields``: rows already present are skipped."""

    def __init__(self, path: Path, fields: Sequence[str], key_fields: Sequence[str]) -> None:
        self.path, self.fields, self.key_fields = path, list(fields), list(key_fields)
        self.rows: list[dict[str, str]] = []
        if path.exists() and path.stat().st_size:
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                if reader.fieldnames != self.fields:
                    raise SystemExit(f"{path}: its columns {reader.fieldnames} differ from this benchmark's {self.fields}; "
                                     "move it away or pass another --out")
                self.rows = list(reader)
        self._done = {self._key(r) for r in self.rows}

    def _key(self, row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(_fmt(row[k]) for k in self.key_fields)

    def has(self, row: dict[str, Any]) -> bool:
        return self._key(row) in self._done

    def add(self, row: dict[str, Any]) -> None:
        new = not self.path.exists() or not self.path.stat().st_size
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fields)
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row[k]) for k in self.fields})
        stored = {k: _fmt(row[k]) for k in self.fields}
        self.rows.append(stored)
        self._done.add(self._key(stored))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def run_jobs(fn: Callable[[Any], Any], jobs: list, workers: int) -> Iterator[Any]:
    """``fn(job)`` for every job, in worker processes (spawned, one torch thread each) when ``workers > 1``;
    results are yielded as they finish."""
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            yield from pool.imap_unordered(fn, jobs)
    else:
        for job in jobs:
            yield fn(job)


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for a single value)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), 0.0
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def load_avdigits(seed: int = 0):
    """(train, test) AV-Digits data sets (the README set-up installs the extra)."""
    from device_sim.datasets.avdigits import AVDigits

    return AVDigits("train", seed=seed), AVDigits("test", seed=seed)


def plt_figure(ncols: int = 1, width: float = 6.4, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return plt, fig, axes[0]
