"""A full disk is a state, not a crash (issue 24 G7): failing writes to the state folder, tracked per kind.

The node writes four kinds of things to ``node.state_dir`` while it serves: the periodic checkpoint,
the ledger's SQLite commit, ``status.json`` and ``history.csv``. When one fails with an ``OSError``
(ENOSPC, EDQUOT, EMFILE, EIO) or SQLite's "database or disk is full", the caller reports it here and
keeps serving from memory; :class:`DiskWrites` then

* logs the first failure of an episode (one warning per kind, naming the path, the error and the
  fix), never each retry;
* says when the next attempt is due, with exponential backoff from ``RETRY_MIN_S`` up to
  ``node.disk_retry_max_s``;
* counts every failure in ``edge_disk_errors_total{what}`` and holds ``edge_disk_failing{what}`` at 1
  while the kind fails; ``status.json`` carries the same under ``disk`` (:meth:`view`);
* logs one "disk writable again" line when the last failing kind succeeds again.

Thread-safe: the learner thread reports checkpoints and commits, the observer's thread the files.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.core.names import LOGGER_NODE
from edge_runtime.ops.metrics import NodeMetrics

log = logging.getLogger(LOGGER_NODE)

RETRY_MIN_S = 0.5  # the first retry after a failure; doubled after each further failure


@dataclass
class _Episode:
    path: str
    error: str
    since: float  # unix time of the first failure (shown to people)
    since_mono: float
    errors: int = 1
    delay: float = RETRY_MIN_S
    next_try: float = 0.0  # time.monotonic() from which the next attempt is due


def describe(err: BaseException) -> str:
    """A short reason: the OS error's text and code (``No space left on device [ENOSPC]``), else the message."""
    import errno

    code = getattr(err, "errno", None)
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return f"{text} [{errno.errorcode.get(code, code)}]" if isinstance(code, int) else text


class DiskWrites:
    """Episodes of failing writes, one per kind (``checkpoint``, ``ledger``, ``status``, ``history``)."""

    def __init__(self, metrics: NodeMetrics | None = None, retry_max_s: float = 30.0) -> None:
        self.metrics = metrics
        self.retry_max_s = retry_max_s
        self._lock = threading.Lock()
        self._failing: dict[str, _Episode] = {}
        self._totals: dict[str, int] = {}
        self._episode_errors = 0  # failures since the disk was last writable, all kinds

    def due(self, what: str) -> bool:
        """Whether a write of ``what`` should be tried now (always, unless it failed and its backoff runs)."""
        with self._lock:
            ep = self._failing.get(what)
            return ep is None or time.monotonic() >= ep.next_try

    def delay(self, what: str) -> float:
        """Seconds until the next attempt of ``what`` is due (0 when it is not failing)."""
        with self._lock:
            ep = self._failing.get(what)
            return 0.0 if ep is None else max(0.0, ep.next_try - time.monotonic())

    def failing(self, what: str | None = None) -> bool:
        """Whether ``what`` (or any kind) is failing now."""
        with self._lock:
            return bool(self._failing) if what is None else what in self._failing

    def failed(self, what: str, path: str | Path, err: BaseException) -> None:
        """A write of ``what`` to ``path`` failed with ``err``: count it, back off, warn once per episode."""
        now = time.monotonic()
        reason = describe(err)
        with self._lock:
            self._totals[what] = self._totals.get(what, 0) + 1
            self._episode_errors += 1
            ep = self._failing.get(what)
            first = ep is None
            if ep is None:
                ep = self._failing[what] = _Episode(str(path), reason, time.time(), now)
            else:
                ep.errors += 1
                ep.delay = min(self.retry_max_s, ep.delay * 2)
                ep.path, ep.error = str(path), reason
            ep.delay = min(ep.delay, self.retry_max_s)
            ep.next_try = now + ep.delay
        if self.metrics is not None:
            self.metrics.disk_errors.labels(what).inc()
            self.metrics.disk_failing.labels(what).set(1)
        if first:
            folder = Path(path).parent if Path(path).suffix else Path(path)
            log.warning(f"cannot write the {what} ({path}): {reason}; the node keeps serving and retries with backoff "
                        f"(up to every {self.retry_max_s:g} s); free space in {folder} (or fix its file system)",
                        extra={"event": "disk_write_failed", "what": what, "path": str(path), "reason": reason})

    def succeeded(self, what: str) -> None:
        """A write of ``what`` succeeded; ends its episode (and logs "disk writable again" after the last one)."""
        with self._lock:
            ep = self._failing.pop(what, None)
            if ep is None:
                return
            recovered = not self._failing
            errors, self._episode_errors = self._episode_errors, (0 if recovered else self._episode_errors)
        if self.metrics is not None:
            self.metrics.disk_failing.labels(what).set(0)
        if recovered:
            seconds = time.monotonic() - ep.since_mono
            log.warning(f"disk writable again ({what} written after {errors} failed write(s) over {seconds:.1f} s)",
                        extra={"event": "disk_writable", "what": what, "failed_writes": errors, "seconds": round(seconds, 3)})

    def view(self) -> dict[str, Any]:
        """What ``status.json`` carries under ``disk``: the failing kinds (path, error, since, count) and the totals."""
        with self._lock:
            failing = {what: {"path": ep.path, "error": ep.error, "since": ep.since, "errors": ep.errors,
                              "for_s": round(time.monotonic() - ep.since_mono, 3)} for what, ep in self._failing.items()}
            return {"ok": not failing, "failing": failing, "errors": dict(self._totals)}
