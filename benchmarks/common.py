"""Shared pieces of the benchmarks: resumable CSV rows, confidence intervals, data loading, plots."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from edge_runtime.core.names import PREQUENTIAL_ACCURACY, SAMPLES_SEEN, UPDATES


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


def run_sweep(name: str, jobs: list[dict], results: ResumableCSV, fn: Callable[[Any], Any], workers: int,
              store: Callable[[Any, Any], None]) -> None:
    """Run the jobs that ``results`` does not have yet, ``workers`` at a time, with a progress bar;
    ``store(result, bar)`` records each result as it arrives (so an interrupted sweep resumes)."""
    from tqdm import tqdm

    todo = [j for j in jobs if not results.has(j)]
    print(f"{name}: {len(jobs)} runs, {len(jobs) - len(todo)} already in {results.path}, {len(todo)} to do", flush=True)
    bar = tqdm(total=len(todo), unit="run", desc=name.replace("_", " "))
    for result in run_jobs(fn, todo, workers):
        store(result, bar)
        bar.update(1)
    bar.close()


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


def paired_differences(rows: Iterable[dict], group: Sequence[str], variant: str, reference: str,
                       field: str = "final_accuracy", numeric: Sequence[str] = ("buffer_items",)) -> list[dict]:
    """Paired differences ``field(v, seed) - field(reference, seed)`` per ``group`` cell and variant, seeds matched.

    Each cell gets the mean difference, its 95 % Student-t interval and a verdict: ``win`` where the
    interval lies above 0, ``loss`` where below, else ``tie`` (``n/a`` for a single seed); plus the
    variant's and the reference's means over the matched seeds.
    """
    acc: dict[tuple, dict[str, float]] = {}
    for r in rows:
        cell = tuple(int(r[g]) if g in numeric else r[g] for g in group)
        acc.setdefault((*cell, r[variant]), {})[str(r["seed"])] = float(r[field])
    out = []
    for key, by_seed in sorted(acc.items()):
        *cell, name = key
        ref = acc.get((*cell, reference))
        if name == reference or not ref:
            continue
        seeds = sorted(set(by_seed) & set(ref), key=int)
        if not seeds:
            continue
        d = [by_seed[s] - ref[s] for s in seeds]
        m, h = mean_ci(d)
        lo, hi = (m - h, m + h) if len(d) > 1 else (float("nan"), float("nan"))
        verdict = "win" if lo > 0 else "loss" if hi < 0 else "tie" if len(d) > 1 else "n/a"
        out.append({**dict(zip(group, cell)), variant: name, "seeds": len(d), "mean_diff": m, "ci_low": lo, "ci_high": hi,
                    "verdict": verdict, f"{variant}_mean": float(np.mean([by_seed[s] for s in seeds])),
                    "reference_mean": float(np.mean([ref[s] for s in seeds]))})
    return out


def load_avdigits(seed: int = 0):
    """(train, test) AV-Digits data sets (the README's set-up installs the extra)."""
    from device_sim.datasets import registry

    return registry.build("avdigits", split="train", seed=seed), registry.build("avdigits", split="test", seed=seed)


_LOADED: dict[tuple, tuple] = {}


def load_data(dataset: str = "avdigits", root: str | None = None, split: str = "train", test_split: str = "test") -> tuple[Any, Any]:
    """(train, test) of a registered data set (:meth:`device_sim.datasets.base.Dataset.train_test`), cached per process.

    ``root`` (a user's copy) goes to the data sets that declare ``--root``.  A data set without
    splits (``synthetic``) decides itself what its held-out set is.  A missing ``root`` or split
    raises ValueError naming what to pass.
    """
    key = (dataset, root, split, test_split)
    if key not in _LOADED:
        import warnings

        from device_sim.datasets import registry
        from device_sim.datasets.base import MissingFilesWarning

        cls = registry.dataset_class(dataset)
        with warnings.catch_warnings():  # a listed clip without media is reported by the loader, once
            warnings.simplefilter("ignore", MissingFilesWarning)
            train, test = cls.train_test(split, test_split, **cls.option_values({"root": root}))
        if not len(train) or not len(test):
            raise ValueError(f"{dataset}: split {split!r} has {len(train)} samples and {test_split!r} {len(test)}; both must be non-empty")
        _LOADED[key] = (train, test)
    return _LOADED[key]


def add_data_options(ap) -> None:
    """``--dataset/--root/--split/--test-split`` of the streaming sweeps (the data sets are device-sim's registered ones).

    Of the options a data set declares, the sweeps take ``--root`` only: their jobs carry it to
    the worker processes.
    """
    from device_sim.datasets import registry

    takes_root = [name for option, users in registry.options() if option.flag == "--root" for name in users]
    ap.add_argument("--dataset", choices=registry.names(), default="avdigits", help="data set, read by device-sim's loaders (default avdigits)")
    ap.add_argument("--root", default=None, help=f"folder of your copy of the data set ({', '.join(takes_root)})")
    ap.add_argument("--split", default="train", help="split streamed for training (default train)")
    ap.add_argument("--test-split", default="test", help="split held out for evaluation (default test)")


def check_data_options(ap, args) -> None:
    """Load the data once in the parent so that a bad --root/--split is one clear error, not a crash per worker."""
    from device_sim.datasets import registry

    try:
        cls = registry.dataset_class(args.dataset)
    except (ValueError, ImportError) as err:
        ap.error(f"--dataset {args.dataset}: {err}")
    for option in cls.cli_options:
        if option.required and getattr(args, option.dest, None) in (None, ""):
            given = f"{option.flag} {option.metavar or option.dest.upper()}"
            ap.error(f"--dataset {args.dataset} needs {given}" + (f" ({option.missing})" if option.missing else ""))
    try:
        load_data(args.dataset, args.root, args.split, args.test_split)
    except (ValueError, OSError) as err:
        ap.error(f"--dataset {args.dataset}: {err}")


def run_stream(job: dict, probe: Callable[[Any, int, list], None] | None = None) -> tuple[dict, list[dict]]:
    """One class-incremental pass of ``job["stream"]`` through a fresh :class:`~edge_runtime.learning.learner.Learner`.

    ``job``: ``dataset``, ``root``, ``split``, ``test_split``, ``stream`` (a name of
    :data:`device_sim.scenario.STREAMS`), ``seed`` (class order, corruption, model), ``buffer_items``,
    ``preset`` (config overrides of the policy), ``config`` (base YAML), ``set`` (KEY=VALUE
    overrides), ``limit`` (samples streamed; None: all), ``eval_every`` (curve points; default 240).
    The stream order depends only on the data and the seed, so every policy of a seed sees the
    same samples in the same order.  ``probe(learner, samples_done, chunk)`` (optional) runs
    after every micro-batch of 32.  Returns the metrics row and the curve
    ``[{"samples", "accuracy"}, ...]``.
    """
    import time

    import torch
    import yaml

    from device_sim.scenario import make_order, make_stream
    from edge_runtime.core.config import _merge, config_from_dict, parse_overrides
    from edge_runtime.learning.evaluation import TaskAccuracy
    from edge_runtime.learning.learner import Learner

    torch.set_num_threads(1)
    seed, size = int(job["seed"]), int(job["buffer_items"])
    train, test = load_data(job.get("dataset", "avdigits"), job.get("root"), job.get("split", "train"), job.get("test_split", "test"))
    stream_ds, test_ds = make_stream(job.get("stream", "clean"), train, test, seed=seed)
    order = make_order(job.get("order", "class-incremental"), train.labels(), seed=seed, classes_per_task=job.get("classes_per_task", 2))
    indices = order.indices[: job.get("limit") or len(order.indices)]
    base = yaml.safe_load(Path(job["config"]).read_text()) if job.get("config") else {}
    overrides = _merge(base or {}, job.get("preset") or {})
    overrides = _merge(overrides, {"buffer": {"max_items": size}, "training": {"seed": seed},
                                   "model": {"num_classes": int(getattr(train, "num_classes", 10))}})
    overrides = _merge(overrides, parse_overrides(job.get("set")))
    learner = Learner(config_from_dict(overrides, source="benchmark"))
    test_samples = [test_ds.sample(i, split="eval") for i in range(len(test_ds))]
    n_tasks = len(order.task_classes)
    task_len = max(1, len(order.indices) // n_tasks)
    tasks = TaskAccuracy(order.task_classes)
    every = int(job.get("eval_every") or 240)
    curve = []
    start = time.perf_counter()
    for i in range(0, len(indices), 32):
        chunk = []
        for j, idx in enumerate(indices[i : i + 32].tolist()):
            s = stream_ds.sample(int(idx))
            s.device, s.seq = "bench", i + j
            chunk.append(s)
        learner.observe(chunk)
        done = min(i + 32, len(indices))
        if probe is not None:
            probe(learner, done, chunk)
        if done % every == 0 or done == len(indices):
            r = learner.evaluate(test_samples)
            curve.append({"samples": done, "accuracy": r["accuracy"]})
            if done % task_len == 0 or done == len(indices):
                tasks.update(r["per_class_accuracy"], tasks_seen=min(n_tasks, int(np.ceil(done / task_len))))
    seconds = time.perf_counter() - start
    final = learner.evaluate(test_samples)
    summary = learner.summary()
    row = {"buffer_bytes": summary["buffer_bytes"], "final_accuracy": final["accuracy"],
           "average_incremental_accuracy": tasks.average_incremental_accuracy, "forgetting": tasks.forgetting,
           **modality_columns(learner.config, final["modality_accuracy"]),
           PREQUENTIAL_ACCURACY: summary[PREQUENTIAL_ACCURACY], SAMPLES_SEEN: summary[SAMPLES_SEEN],
           UPDATES: summary[UPDATES], "seconds": seconds}
    return row, curve


def modality_columns(config: Any, accuracy: dict[str, float | None]) -> dict[str, Any]:
    """Each modality's own head's accuracy: ``<name>_only_accuracy`` per modality name, and ``modality_accuracy``
    (the dict). The sweeps' CSV columns name the head of the (first) frames modality ``visual_only_accuracy``
    (buffer_sweep, balance_sweep): given too when the configuration has one."""
    from edge_runtime.core.modalities import frames_modalities

    out: dict[str, Any] = {f"{name}_only_accuracy": acc for name, acc in accuracy.items()}
    out["modality_accuracy"] = dict(accuracy)
    frames = frames_modalities(config)
    if frames:
        out.setdefault("visual_only_accuracy", accuracy.get(frames[0]))
    return out


def unimodal_fields(config_path: str | Path | None, sets: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(CSV column, plot label) of each modality's own head in a sweep from this base configuration, in its
    order: ``<name>_only_accuracy``; the first frames modality keeps the column the audio-visual sweeps
    always had, ``visual_only_accuracy`` (see :func:`modality_columns`)."""
    from edge_runtime.core.config import load_config
    from edge_runtime.core.modalities import frames_modalities

    config = load_config(config_path, list(sets))
    frames = frames_modalities(config)
    out = []
    for name in config.modalities:
        visual = bool(frames) and name == frames[0]
        out.append(("visual_only_accuracy" if visual else f"{name}_only_accuracy", "visual-only head" if visual else f"{name}-only head"))
    return out


def save_figure(plt, fig, path: Path, title: str | None = None, dpi: int = 85) -> Path:
    """Title (optional), tight layout, save as PNG, close; returns ``path``."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plt_figure(ncols: int = 1, width: float = 6.4, height: float = 4.2, wrap: int | None = None, sharey: bool = False):
    """A figure of ``ncols`` panels, each ``width`` x ``height`` inches: ``(plt, fig, axes)``.

    Panels go ``wrap`` to a row (default: all in one); ``axes`` lists every cell of the grid row by
    row, so ``axes[ncols:]`` are the spare cells (for a legend, or ``set_axis_off()``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(ncols, wrap) if wrap else ncols
    rows = -(-ncols // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharey=sharey)
    return plt, fig, list(axes.flat)
