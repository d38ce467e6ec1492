"""The learner thread: micro-batch after micro-batch, decide, commit, then hand the acks to the IO thread.

For each micro-batch it answers seqs decided before a restart from the ledger (never relearned),
runs the finiteness check and, for raw media, the feature computation, calls
``Learner.observe``, records every verdict in the SQLite ledger in the same transaction as the
replay buffer's admissions and evictions, commits, and only then appends the acks to the
:class:`~edge_runtime.node.handoff.Handoff` outbox, so an ``admitted`` ack always follows the commit
of its sample. A micro-batch that raises in the learner is decided sample by sample, so only a
culprit is refused. Between micro-batches it serves federation requests, publishes the model
and writes the periodic checkpoint; the final one when the node stops.

A full disk is a state, not a crash (issue 24 G7; :class:`~edge_runtime.ops.disk.DiskWrites` logs
once per episode, counts, backs off):

* a periodic checkpoint that fails (any ``OSError``: ENOSPC, EDQUOT, EMFILE) is retried with
  backoff while learning goes on from memory; the final one at stop is retried for
  ``STOP_GRACE_S``, then the node exits non-zero saying so (the ledger and replay store are intact:
  what is lost is the learning since the previous checkpoint);
* a ledger commit holds its micro-batch, transaction open and unacked, while the disk has less than
  ``COMMIT_MARGIN_BYTES`` + twice the batch's bytes free (SQLite answers a WAL that cannot grow by
  rolling the whole transaction back, so the commit waits before it would fail), and after a commit
  that failed leaving the transaction open: retried with backoff (the IO thread keeps serving;
  devices wait on their credit) until it succeeds, or, once the node is stopping, for
  ``STOP_GRACE_S``, after which the node exits non-zero without acking the batch (devices resend it
  to the next run). When SQLite rolled the transaction back all the same (the space went between the
  check and the commit), the memory is ahead of the ledger: the node stops at once, no ack, no final
  checkpoint (the restart resumes from the last checkpoint and the ledger, like after a kill);
* a storage error inside ``Learner.observe`` is not the samples' fault: it stops the node the same way.

Any other exception in the thread is a bug: it is logged with its traceback and the node stops
(the IO thread drains, sends the acks of committed batches, and ``edge-node run`` exits non-zero).

The learner is used only through :class:`LearnerLike`: the node knows nothing about losses.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import zmq

from edge_runtime.core import validation
from edge_runtime.core.config import Config
from edge_runtime.core.features import to_features
from edge_runtime.core.names import BUFFER_BYTES, BUFFER_ITEMS, EVAL_ACCURACY, MODALITY_EVAL_ACCURACY, PREQUENTIAL_ACCURACY, SAMPLES_SEEN
from edge_runtime.core.sample import Sample
from edge_runtime.learning.checkpoint import CheckpointManager
from edge_runtime.node.handoff import Handoff, Item
from edge_runtime.node.ledger import DECIDED, Ledger
from edge_runtime.node.logs import NODE_LOGGER
from edge_runtime.node.schema import raw_modalities
from edge_runtime.node.sessions import SeqTracker
from edge_runtime.ops.disk import describe
from edge_runtime.ops.metrics import NodeMetrics
from edge_runtime.ops.observe import NodeObserver

if TYPE_CHECKING:
    from edge_runtime.federation.node_link import FederationLink
    from edge_runtime.learning.buffer.sqlite import SqliteStore
    from edge_runtime.node.publish import ModelPublisher

log = logging.getLogger(NODE_LOGGER)

#: What the learner thread sends the IO thread after each committed micro-batch: "acks are ready".
WAKE = b"w"
#: Once the node is stopping, how long a failing ledger commit or final checkpoint is still retried.
STOP_GRACE_S = 10.0
#: Free space a ledger commit waits for, beyond twice its micro-batch's sample bytes: SQLite answers a
#: WAL that cannot grow by rolling the whole transaction back, so the commit is held before it fails.
COMMIT_MARGIN_BYTES = 256 << 10


class StateWriteError(RuntimeError):
    """The node could not make its state durable (a full disk when stopping, a ledger transaction rolled back)."""


class LearnerLike(Protocol):
    """What the node needs from a learner (``edge_runtime.learning.learner.Learner``, or a no-op one in benchmarks).

    The node uses nothing else: ``export_model`` and ``updates`` feed the model publisher,
    ``restore_from_store`` rebuilds the replay buffer from the durable store when no checkpoint exists.
    """

    def observe(self, samples: Sequence[Sample]) -> list[str]: ...
    def summary(self) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def export_model(self) -> Any: ...
    def restore_from_store(self) -> int: ...

    @property
    def updates(self) -> int: ...


def learned(it: Item) -> bool:
    """A labelled training sample the learner decided (federation counts these per class)."""
    return (it.sample is not None and it.sample.label is not None and it.sample.split == "train"
            and it.verdict is not None and not it.verdict.startswith("invalid:"))


class LearnerWorker:
    """The learner thread's state: decided seqs of active devices, the decided count, the checkpoints."""

    def __init__(self, config: Config, learner: LearnerLike, store: "SqliteStore", ledger: Ledger,
                 checkpoints: CheckpointManager, metrics: NodeMetrics, observer: NodeObserver, handoff: Handoff,
                 stop: threading.Event, federation: "FederationLink | None" = None) -> None:
        self.config = config
        self._max_abs = validation.max_abs_of(config)  # node.max_abs_value: raw waveforms are checked here, features by Learner.check
        self._raw_names = raw_modalities(config)  # the (audio, frames) modalities raw media become; None: no raw media (refused at hello)
        self.nc = config.node
        self.learner = learner
        self.store = store
        self.ledger = ledger
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.observer = observer
        self.handoff = handoff
        self._stop = stop
        self.federation = federation
        self.decided_total = 0
        self.error: BaseException | None = None  # set when the thread failed (a bug, not bad input)
        self.known_devices = len(ledger.next_seqs())  # devices with a ledger row (for edge-node status)
        self._trackers: dict[str, SeqTracker] = {}
        self._released: list[str] = []  # devices released in the open transaction
        self._last_checkpoint = time.monotonic()
        self._fresh: list[Item] = []  # the last micro-batch's items decided now (not answered from the ledger)
        self.disk = observer.disk  # failing writes (full disk): shared with the observer's status/history writes
        self.disk.retry_max_s = self.nc.disk_retry_max_s

    def checkpoint(self) -> Path:
        """Write a checkpoint of the learner (call from the learner thread, or when it is stopped)."""
        summary = self.learner.summary()
        path = self.checkpoints.save({"learner": self.learner.state_dict(), "node": {"decided": self.decided_total}},
                                     step=int(summary.get(SAMPLES_SEEN, 0)))
        self.metrics.checkpoints.inc()
        self.observer.on_checkpoint(path)
        log.info("checkpoint written", extra={"event": "checkpoint", "path": str(path)})
        return path

    def run(self, ctx: zmq.Context, wake_addr: str, publisher: "ModelPublisher | None") -> None:
        """The thread's body: micro-batches until the IO thread drains, then the final checkpoint.

        A failure is logged, kept in :attr:`error` and stops the node; what is committed stays.
        """
        wake = ctx.socket(zmq.PUSH)
        wake.connect(wake_addr)
        self._last_checkpoint = time.monotonic()
        federation = self.federation
        idle_work = federation.has_pending if federation is not None else None
        try:
            while True:
                batch = self.handoff.take_batch(idle_work)
                if batch is None:
                    break
                if batch:
                    self._decide(batch)
                    wake.send(WAKE)
                else:
                    self._apply_io_requests()
                    self._commit(0)
                self._after_batch(batch, publisher)
            self._apply_io_requests()
            self._commit(0)
            self._final_checkpoint()
        except StateWriteError as err:  # a full disk: not a bug, no traceback; stop with the reason
            log.error(f"the node stops: {err}", extra={"event": "learner_stopped", "reason": str(err)})
            self.error = err
            self._stop.set()
        except BaseException as err:  # a bug, not bad input: stop the node loudly, keep what is committed
            log.exception("learner thread failed; the node stops (drain, exit non-zero)", extra={"event": "learner_failed"})
            self.error = err
            self._stop.set()
        finally:
            wake.close(0)
            if publisher is not None:
                publisher.close()

    def _after_batch(self, batch: list[Item], publisher: "ModelPublisher | None") -> None:
        """Between micro-batches: federation get/put, publish the model, periodic checkpoint."""
        if self.federation is not None:  # between two micro-batches, never inside one
            # only what this batch decided now: a resend answered from the ledger was counted when first learned
            fresh, self._fresh = self._fresh, []
            self.federation.after_batch(it.sample.label for it in fresh if learned(it))  # type: ignore[union-attr]
        if publisher is not None and batch:
            self.observer.on_model(publisher.maybe_publish(self.learner.export_model(), self.learner.updates))
        if time.monotonic() - self._last_checkpoint >= self.nc.checkpoint_every_s and self.disk.due("checkpoint"):
            try:
                self.checkpoint()
            except OSError as err:  # a full disk: learning goes on from memory, retried with backoff
                self.disk.failed("checkpoint", self.checkpoints.directory, err)
            else:
                self.disk.succeeded("checkpoint")
                self._last_checkpoint = time.monotonic()

    def _final_checkpoint(self) -> None:
        """The checkpoint at stop; on a failing disk retried for ``STOP_GRACE_S``, then :class:`StateWriteError`."""
        deadline = time.monotonic() + STOP_GRACE_S
        while True:
            try:
                self.checkpoint()
            except OSError as err:
                self.disk.failed("checkpoint", self.checkpoints.directory, err)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StateWriteError(
                        f"the final checkpoint cannot be written to {self.checkpoints.directory} ({describe(err)}); "
                        "every acked sample is in the ledger and replay store, but the learning since the previous "
                        "checkpoint is lost; free space in node.state_dir") from err
                time.sleep(min(self.disk.delay("checkpoint"), left))
            else:
                self.disk.succeeded("checkpoint")
                return

    def _free_bytes(self) -> int | None:
        """Free bytes on the file system of ``state.db`` (what root may use, when root); None when unknown."""
        try:
            st = os.statvfs(self.store.path.parent)
        except OSError:
            return None
        return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize

    def _wait_out(self, stop_deadline: float | None, reason: str, held: int) -> float | None:
        """One backoff step of a write that waits for disk space; after a stop request at most ``STOP_GRACE_S`` in all."""
        if not self._stop.is_set():
            self._stop.wait(self.disk.delay("ledger"))
            return stop_deadline
        stop_deadline = stop_deadline or time.monotonic() + STOP_GRACE_S
        left = stop_deadline - time.monotonic()
        if left <= 0:
            raise StateWriteError(f"stopping while the ledger cannot be written ({reason}): {held} sample(s) not acked "
                                  "(devices resend them to the next run); free space in node.state_dir")
        time.sleep(min(self.disk.delay("ledger"), left))
        return stop_deadline

    def _low_space(self, need: int) -> str | None:
        """Why a write of ``need`` bytes should wait (the disk's free bytes), or None."""
        free = self._free_bytes()
        return None if free is None or free >= need else f"{free} bytes free, the batch waits for {need}"

    def _wait_for_room(self, held: int, nbytes: int) -> None:
        """Before a batch is written (the store's inserts may spill into the WAL before the commit): wait with
        backoff while the disk has less than ``COMMIT_MARGIN_BYTES`` + 2 x ``nbytes`` free."""
        stop_deadline: float | None = None
        while (reason := self._low_space(COMMIT_MARGIN_BYTES + 2 * nbytes)) is not None:
            self.disk.failed("ledger", self.store.path, OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({reason})"))
            stop_deadline = self._wait_out(stop_deadline, reason, held)

    def _commit(self, held: int, nbytes: int = 0) -> None:
        """Commit the open transaction before any ack of it leaves (``held``: samples whose acks wait on it,
        ``nbytes``: their bytes).

        On a disk with less than ``COMMIT_MARGIN_BYTES`` + 2 x ``nbytes`` free, and after a failing commit
        that left the transaction open, the transaction is kept open and the commit retried with backoff;
        see the module docstring for when it gives up (:class:`StateWriteError`)."""
        stop_deadline: float | None = None
        need = COMMIT_MARGIN_BYTES + 2 * nbytes
        while True:
            reason = self._low_space(need) if self.store.conn.in_transaction else None
            if reason is not None:
                self.disk.failed("ledger", self.store.path, OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({reason})"))
            else:
                try:
                    self.store.commit()
                except sqlite3.OperationalError as err:  # SQLITE_FULL, SQLITE_IOERR, SQLITE_CANTOPEN (no descriptor)
                    reason = describe(err)
                    if not self.store.conn.in_transaction:
                        raise StateWriteError(
                            f"the ledger commit failed ({reason}) and SQLite rolled the transaction back: {held} sample(s) "
                            "not acked (devices resend them to the next run); free space in node.state_dir") from err
                    self.disk.failed("ledger", self.store.path, err)
                else:
                    self.disk.succeeded("ledger")
                    while self._released:
                        self.handoff.releasing.discard(self._released.pop())
                    return
            stop_deadline = self._wait_out(stop_deadline, reason, held)

    def _apply_io_requests(self) -> None:
        """Key bindings to persist and freed devices to forget, as the IO thread asked (joins the open transaction)."""
        handoff = self.handoff
        while handoff.to_bind:
            device, key = handoff.to_bind.popleft()
            self.ledger.bind_key(device, key)
            if key is None:
                self._released.append(device)  # the IO thread answers its hellos busy until this commits
        while handoff.forget:
            self._trackers.pop(handoff.forget.popleft(), None)

    def _tracker(self, device: str) -> SeqTracker:
        """The decided seqs of ``device`` (loaded from the ledger on first use)."""
        tracker = self._trackers.get(device)
        if tracker is None:
            tracker = self._trackers[device] = SeqTracker(self.ledger.next_seq(device), self.ledger.decided_above(device))
            if tracker.next_seq == 0 and not tracker.above:
                self.known_devices += 1  # first time this device reaches the ledger
        return tracker

    def _decide(self, batch: list[Item]) -> None:
        started = time.perf_counter()
        self._apply_io_requests()
        fresh: list[Item] = []
        for it in batch:
            if it.seq in self._tracker(it.device):  # decided before a restart: answer, never relearn
                it.verdict = self.ledger.verdict(it.device, it.seq) or DECIDED
                self.metrics.duplicates.inc()
            else:
                fresh.append(it)
        learnable = [it for it in fresh if it.verdict is None]
        max_abs = self._max_abs
        for it in learnable:
            problem = validation.check_finite(it.sample.tensors, max_abs)  # type: ignore[union-attr]
            if problem is not None:
                it.verdict = problem.verdict
            elif it.raw:
                try:  # the same function the device runs with --send features
                    if self._raw_names is None:
                        raise ValueError("raw media needs exactly one audio and one frames modality")
                    audio, video = self._raw_names
                    it.sample.tensors = to_features(it.sample.tensors, self.config.features, audio, video)  # type: ignore[union-attr]
                except (ValueError, RuntimeError) as err:
                    it.verdict = "invalid:features"
                    log.warning("cannot compute features", extra={"event": "bad_raw", "device": it.device, "seq": it.seq, "reason": str(err)})
        self._wait_for_room(len(fresh), sum(it.nbytes for it in fresh))  # before the store's inserts, not only at the commit
        self._observe([it for it in learnable if it.verdict is None])
        self._record(fresh)
        self._commit(len(fresh), sum(it.nbytes for it in fresh))  # acks only after this: an admitted verdict is durable
        self.handoff.outbox.append([(it.rid, it.seq, it.verdict) for it in batch])  # type: ignore[misc]
        self.decided_total += len(fresh)
        self._fresh = fresh
        self._observe_metrics(batch, fresh, time.perf_counter() - started)

    def _observe(self, items: list[Item]) -> None:
        """``learner.observe`` on the batch; if it raises, on each sample alone, so only a culprit is refused."""
        if not items:
            return
        try:
            verdicts = self.learner.observe([it.sample for it in items])  # type: ignore[misc]
        except (sqlite3.Error, OSError) as err:  # the store's disk, not the samples: refusing them would be a lie
            raise StateWriteError(f"the replay store cannot be written ({describe(err)}); the micro-batch's "
                                  f"{len(items)} sample(s) not acked; free space in node.state_dir") from err
        except Exception:
            log.exception("micro-batch raised in the learner; deciding its samples one by one", extra={"event": "batch_failed"})
            verdicts = []
            for it in items:
                try:
                    verdicts.extend(self.learner.observe([it.sample]))  # type: ignore[list-item]
                except (sqlite3.Error, OSError) as err:
                    raise StateWriteError(f"the replay store cannot be written ({describe(err)}); "
                                          "free space in node.state_dir") from err
                except Exception as err:
                    log.warning("sample raised in the learner", extra={"event": "sample_failed", "device": it.device,
                                                                        "seq": it.seq, "error": repr(err)})
                    verdicts.append("invalid:model_error")
        for it, v in zip(items, verdicts):
            it.verdict = v

    def _record(self, fresh: list[Item]) -> None:
        """Verdicts, resume points, compaction and the evictions window, all in the open transaction."""
        self.ledger.record_verdicts([(it.device, it.seq, it.verdict) for it in fresh])  # type: ignore[misc]
        touched = set()
        for it in fresh:
            self._tracker(it.device).add(it.seq)
            touched.add(it.device)
        for device in touched:
            next_seq = self._trackers[device].next_seq
            self.ledger.set_next_seq(device, next_seq)
            self.ledger.compact(device, next_seq - self.nc.ledger_retention)
        self.store.trim_evictions(self.nc.evictions_keep)

    def _observe_metrics(self, batch: list[Item], fresh: list[Item], seconds: float) -> None:
        m = self.metrics
        m.update_seconds.observe(seconds)
        m.batch_size.observe(len(batch))
        for verdict, n in Counter(it.verdict for it in fresh).items():
            kind, _, reason = verdict.partition(":")  # type: ignore[union-attr]
            m.decided.labels(kind).inc(n)
            if kind == "invalid":
                m.invalid.labels(reason).inc(n)
        s = self.learner.summary()
        if s.get(PREQUENTIAL_ACCURACY) is not None:
            m.prequential_accuracy.set(s[PREQUENTIAL_ACCURACY])
        if s.get(EVAL_ACCURACY) is not None:
            m.eval_accuracy.set(s[EVAL_ACCURACY])
        for name, acc in (s.get(MODALITY_EVAL_ACCURACY) or {}).items():  # a series per modality from its first eval sample
            if acc is not None:
                m.modality_eval_accuracy.labels(name).set(acc)
        if BUFFER_ITEMS in s:
            m.buffer_items.set(s[BUFFER_ITEMS])
            m.buffer_bytes.set(s[BUFFER_BYTES])
        self.observer.on_batch([(it.device, it.verdict) for it in fresh], s, seconds)  # type: ignore[misc]
