"""What a running node publishes for its operator, besides ``/metrics``.

* ``state_dir/status.json`` every ``node.status_every_s`` (and a final one at stop): the snapshot
  ``edge-node status`` shows (:mod:`edge_runtime.ops.snapshot`), with the per-device table (samples
  decided, last seen, rate) that the metrics leave out to keep their labels low-cardinality;
* ``state_dir/history.csv`` every ``node.history_every_s`` (:mod:`edge_runtime.ops.history`).

Threads: the node's learner thread calls :meth:`NodeObserver.on_batch`, ``on_checkpoint`` and
``on_model``, which update in-memory tallies under a lock and set a few gauges; a daemon thread of
the observer writes the files, so neither the IO nor the learner thread waits on a file. The
writer takes the learner-side values first (under the lock: one consistent micro-batch boundary)
and reads the IO-side series (received, queue, in flight, connected) after them, so every file
has ``received >= decided`` and per-device samples adding up to ``decided``.

Durations (uptime, checkpoint age, time since a device was last seen, rate intervals) come from
``time.monotonic()``, so that a wall clock set back or forward (NTP, an operator) cannot make them
negative or huge; the times shown to people (``*_at``, ``last_seen``, the history's ``time``) stay
wall-clock. ``status.json`` carries the durations as of its ``written_at`` and the monotonic reading
they were taken at (``clock``), from which :func:`~edge_runtime.ops.snapshot.with_ages` advances them.

A write that fails (a full disk) never stops the node: :attr:`NodeObserver.disk`
(:class:`~edge_runtime.ops.disk.DiskWrites`, shared with the learner thread for checkpoints and
commits) logs it once per episode and sets the next attempt with backoff; ``status.json`` carries
the condition under ``disk``. When its temporary file cannot be created, ``status.json`` is
overwritten in place within the blocks it already holds, so ``edge-node status`` still shows the
condition on a disk with no free block.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, Iterable

from edge_runtime.core.atomic import atomic_write_json, overwrite_in_place
from edge_runtime.core.names import (LOGGER_NODE, BUFFER_BYTES, BUFFER_ITEMS, EVAL_ACCURACY, MODALITY_EVAL_ACCURACY, PREQUENTIAL_ACCURACY,
                                     SAMPLES_SEEN, UPDATES)
from edge_runtime.ops.disk import DiskWrites
from edge_runtime.ops.history import HistoryWriter, modality_column, verdict_kinds
from edge_runtime.ops.metrics import NodeMetrics
from edge_runtime.ops.snapshot import accuracy_view, boot_id, from_metrics, metric_values, newest_checkpoint, with_rates

log = logging.getLogger(LOGGER_NODE)

TOP_DEVICES = 50  # devices listed in status.json, most samples first
RATE_WINDOW_S = 10.0  # rates in status.json are over (about) the last this many seconds
MAX_TRACKED = 10_000  # per-device tallies kept; past it the least recently seen quarter is dropped
STATUS_FILE = "status.json"


class _Latency:
    """Count, sum and max of update latencies since the last :meth:`take`."""

    def __init__(self) -> None:
        self.n, self.total, self.max = 0, 0.0, 0.0

    def add(self, seconds: float) -> None:
        self.n += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def take(self) -> tuple[int, float | None, float | None]:
        out = (self.n, self.total / self.n if self.n else None, self.max if self.n else None)
        self.n, self.total, self.max = 0, 0.0, 0.0
        return out


class NodeObserver:
    """Tallies the learner side of a node and writes status.json / history.csv from its own thread."""

    def __init__(self, state_dir: Path, metrics: NodeMetrics, num_classes: int, status_every_s: float,
                 history_every_s: float | None, modalities: Iterable[str] = ()) -> None:
        self.state_dir = Path(state_dir)
        self.metrics = metrics
        self.status_every_s = status_every_s
        self.history_every_s = history_every_s
        self.num_classes = num_classes
        self.history = HistoryWriter(self.state_dir, num_classes, tuple(modalities)) if history_every_s else None
        #: failing writes to the state folder (this observer's files, and the learner thread's checkpoints and commits)
        self.disk = DiskWrites(metrics)
        self._lock = threading.Lock()
        self._devices: dict[str, int] = {}  # device -> samples decided this run (learner thread)
        #: device -> time.monotonic() of its newest sample message; the node's IO thread writes it
        self.arrivals: dict[str, float] = {}
        self._known: Callable[[], int] = lambda: len(self._devices)
        self._last_update_s: float | None = None
        self._verdicts: Counter = Counter()  # this run, by kind
        self._summary: dict[str, Any] = {}
        self._latency = _Latency()
        #: (path, unix time written, time.monotonic() written) of the newest checkpoint
        self._checkpoint: tuple[str, float, float] | None = None
        newest = newest_checkpoint(self.state_dir)
        if newest:  # a file's mtime is wall-clock: its age now, never negative, becomes a monotonic reading
            self._checkpoint = (newest[0], newest[1], time.monotonic() - max(0.0, time.time() - newest[1]))
        self._model_version: int | None = None
        self._buffer_labels: set[str] = set()
        self._stop = threading.Event()
        #: earlier snapshots (time.monotonic() taken, snapshot, per-device tallies), for rates
        self._window: deque[tuple[float, dict[str, Any], dict[str, int]]] = deque()
        self._thread: threading.Thread | None = None
        self._info: dict[str, Any] = {}
        self._started = time.time()  # unix time (shown as started_at); uptime is from _started_mono
        self._started_mono = time.monotonic()
        self._wall_minus_mono = time.time() - time.monotonic()

    # ------------------------------------------------------------------ learner thread
    def on_batch(self, decided: Iterable[tuple[str, str]], summary: dict[str, Any], seconds: float) -> None:
        """After a micro-batch is committed: ``decided`` holds (device, verdict) per newly decided sample,
        ``summary`` is the learner's summary, ``seconds`` the batch's learner time."""
        m = self.metrics
        with self._lock:
            for device, verdict in decided:
                self._devices[device] = self._devices.get(device, 0) + 1
                self._verdicts[verdict.split(":", 1)[0]] += 1
            if len(self._devices) > MAX_TRACKED or len(self.arrivals) > 2 * MAX_TRACKED:
                self._forget()
            self._summary = summary
            self._latency.add(seconds)
            self._last_update_s = seconds
            classes = {str(c): n for c, n in summary.get("buffer_classes", {}).items()}
            for label in self._buffer_labels - set(classes):
                m.buffer_class_items.labels(label).set(0)
            for label, n in classes.items():
                m.buffer_class_items.labels(label).set(n)
            self._buffer_labels = set(classes)
            m.updates.set(summary.get(UPDATES, 0))
            m.samples_learned.set(summary.get(SAMPLES_SEEN, 0))
            m.devices_known.set(self._known())

    def _forget(self) -> None:
        """Drop the tallies of the least recently seen quarter of the devices (bounded memory for big fleets)."""
        arrivals = dict(self.arrivals)  # one C-level copy: the IO thread may add keys meanwhile
        keep = sorted(self._devices, key=lambda d: arrivals.get(d, 0.0), reverse=True)[: MAX_TRACKED * 3 // 4]
        self._devices = {d: self._devices[d] for d in keep}
        for device in arrivals.keys() - self._devices.keys():
            self.arrivals.pop(device, None)

    def on_checkpoint(self, path: Path) -> None:
        when = time.time()
        with self._lock:
            self._checkpoint = (str(path), when, time.monotonic())
        self.metrics.last_checkpoint.set(when)

    def on_model(self, version: int | None) -> None:
        if version:
            self._model_version = version
            self.metrics.model_version.set(version)

    # ------------------------------------------------------------------ files
    def start(self, info: dict[str, Any], known_devices: Callable[[], int] | None = None) -> None:
        """Begin writing (``info``: endpoint, metrics_port, pid, model_endpoint, as in node.json;
        ``known_devices``: how many devices the node has decided samples of, all runs)."""
        self._info = dict(info)
        self._started = time.time()
        self._started_mono = time.monotonic()
        if known_devices is not None:
            self._known = known_devices
        m = self.metrics
        m.start_time.set(self._started)
        m.devices_known.set(self._known())
        m.node_info.info({k: "" if v is None else str(v) for k, v in info.items()})
        if self._checkpoint:
            m.last_checkpoint.set(self._checkpoint[1])
        self._try_status(final=False)
        self._thread = threading.Thread(target=self._loop, name="observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write the final status (state ``stopped``) and history row; call after the learner thread ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._try_status(final=True)
        if self.history is not None:
            self._try_history()

    def _loop(self) -> None:
        next_status = time.monotonic() + self.status_every_s
        next_history = time.monotonic() + (self.history_every_s or float("inf"))
        while not self._stop.wait(max(0.0, min(next_status, next_history) - time.monotonic())):
            now = time.monotonic()
            try:
                if now >= next_status:
                    if self.disk.due("status"):
                        self._try_status(final=False)
                    next_status = now + self.status_every_s
                if now >= next_history:
                    if self.disk.due("history"):
                        self._try_history()
                    next_history = now + self.history_every_s  # type: ignore[operator]
            except Exception:  # a bug: log it and keep writing at the next interval (the files are a view)
                log.exception("status writer failed", extra={"event": "status_writer_failed"})

    def _try_status(self, final: bool) -> None:
        """Write status.json; a failure (a full disk) is reported to :attr:`disk`, never raised."""
        path = self.state_dir / STATUS_FILE
        snap = self.snapshot(final)
        try:
            atomic_write_json(path, snap, indent=1, durable=final)  # a view rewritten every second; the last one is kept
        except OSError as err:
            self.disk.failed("status", path, err)
            snap["disk"] = self.disk.view()
            try:  # the condition itself must still reach `edge-node status`: in place, in the blocks it holds
                overwrite_in_place(path, json.dumps(snap, indent=1).encode())
            except OSError:
                pass
        else:
            self.disk.succeeded("status")

    def _try_history(self) -> None:
        """Append a history row; a failure is reported to :attr:`disk` (that row is lost), never raised."""
        try:
            self._write_history()
        except OSError as err:
            self.disk.failed("history", self.history.path, err)  # type: ignore[union-attr]
        else:
            self.disk.succeeded("history")

    def snapshot(self, final: bool = False, wall: float | None = None, mono: float | None = None) -> dict[str, Any]:
        """The status snapshot as of now (learner side first, IO side after it; see the module docstring).

        ``wall`` / ``mono``: the ``time.time()`` / ``time.monotonic()`` readings to use (default: read now);
        timestamps come from the first, durations from the second only.
        """
        with self._lock:
            devices = dict(self._devices)
            arrivals = dict(self.arrivals)
            last_update = self._last_update_s
            verdicts = dict(sorted(self._verdicts.items()))
            summary = self._summary
            checkpoint = self._checkpoint
        snap = from_metrics(metric_values(self.metrics.registry.collect()))
        now = time.time() if wall is None else wall
        mono = time.monotonic() if mono is None else mono
        top = sorted(devices.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_DEVICES]
        while len(self._window) > 1 and mono - self._window[1][0] >= RATE_WINDOW_S:
            self._window.popleft()  # keep the newest snapshot that is at least the window old
        prev = self._window[0] if self._window else None
        dt = mono - prev[0] if prev else 0.0
        prev_devices = prev[2] if prev else {}
        snap["devices"]["known"] = self._known()
        snap["devices"]["top"] = [
            {"device": d, "samples": n, "last_seen": arrivals[d] + self._wall_minus_mono if d in arrivals else None,
             "last_seen_age_s": max(0.0, mono - arrivals[d]) if d in arrivals else None,
             "rate": (n - prev_devices.get(d, 0)) / dt if dt > 0 else None} for d, n in top]
        snap["devices"]["listed"] = len(top)
        snap["samples"]["verdicts"] = verdicts
        snap["samples"]["decided"] = sum(verdicts.values())
        if summary:
            snap["samples"]["learned"] = summary.get(SAMPLES_SEEN)
            snap["samples"]["learned_verdicts"] = verdict_kinds(summary.get("verdicts", {}))
            snap["accuracy"] = accuracy_view(summary)
            snap[UPDATES] = summary.get(UPDATES)
            snap["buffer"] = {"items": summary.get(BUFFER_ITEMS), "bytes": summary.get(BUFFER_BYTES),
                              "classes": {str(c): n for c, n in summary.get("buffer_classes", {}).items()}}
        if checkpoint:
            snap["checkpoint"].update(path=checkpoint[0], written_at=checkpoint[1], age_s=max(0.0, mono - checkpoint[2]))
        snap["model"]["version"] = self._model_version
        snap["update_last_s"] = last_update
        snap.update(uptime_s=max(0.0, mono - self._started_mono), clock={"monotonic": mono, "boot_id": boot_id()})
        snap.update(state="stopped" if final else "running", written_at=now, stopped_at=now if final else None,
                    pid=self._info.get("pid"), endpoint=self._info.get("endpoint"), metrics_port=self._info.get("metrics_port"))
        snap["model"]["endpoint"] = self._info.get("model_endpoint")
        snap["disk"] = self.disk.view()
        snap = with_rates(snap, prev[1] if prev else None, dt)
        self._window.append((mono, snap, devices))
        return snap

    def _write_history(self, wall: float | None = None, mono: float | None = None) -> None:
        """Append one history row (``wall`` / ``mono``: as in :meth:`snapshot`)."""
        wall = time.time() if wall is None else wall
        mono = time.monotonic() if mono is None else mono
        with self._lock:
            summary = self._summary
            decided = sum(self._verdicts.values())
            batches, mean, worst = self._latency.take()
        io = from_metrics(metric_values(self.metrics.registry.collect()))  # after the learner side, as in snapshot()
        row: dict[str, Any] = {
            "time": round(wall, 3), "pid": self._info.get("pid"), "uptime_s": round(max(0.0, mono - self._started_mono), 3),
            "samples_learned": summary.get(SAMPLES_SEEN), "received": io["samples"]["received"],
            "decided": decided, PREQUENTIAL_ACCURACY: summary.get(PREQUENTIAL_ACCURACY),
            EVAL_ACCURACY: summary.get(EVAL_ACCURACY), UPDATES: summary.get(UPDATES),
            BUFFER_ITEMS: summary.get(BUFFER_ITEMS), BUFFER_BYTES: summary.get(BUFFER_BYTES),
            **(verdict_kinds(summary.get("verdicts", {})) if summary else {}),
            "batches": batches, "update_mean_s": mean, "update_max_s": worst, "queue_depth": io["queue"]["depth"],
        }
        if summary:  # classes with no item read 0, not empty
            row.update({f"buffer_class_{c}": 0 for c in range(self.num_classes)})
            row.update({f"buffer_class_{c}": n for c, n in summary.get("buffer_classes", {}).items()})
            row.update({modality_column(name): acc for name, acc in (summary.get(MODALITY_EVAL_ACCURACY) or {}).items()})
        self.history.append(row)  # type: ignore[union-attr]
