"""``EdgeNode``: the daemon of the edge box, speaking the wire protocol v1 (docs/protocol.md).

Two threads and one rule each:

* the IO thread (the caller of :meth:`EdgeNode.run`) owns the ROUTER socket: it decodes and
  validates messages, answers hellos and pings, de-duplicates by (device, seq), enforces each
  device's credit window and the bounded ingest queue, and sends the acks the learner thread
  hands back (:mod:`edge_runtime.node.sessions`);
* the learner thread takes micro-batches from the queue (by size, or after a time window), calls
  ``Learner.observe``, records every verdict in the SQLite ledger in the same transaction as the
  buffer's admissions and evictions, commits, and only then hands the acks to the IO thread
  (:mod:`edge_runtime.node.worker`). It also writes the periodic and final checkpoints.

An ``admitted`` ack therefore always follows the commit of the sample, and a resent seq is
answered from the ledger with its first verdict and never learned from twice. The node knows
nothing about losses: it uses the learner only through :class:`~edge_runtime.node.worker.LearnerLike`.

Nothing a device sends may stop the node: every sample is checked against the model's input
contract (:mod:`edge_runtime.core.validation`) before it is queued (the finiteness and magnitude
scan, ``node.max_abs_value``, runs on the learner thread, and an update that still makes the model
non-finite is rolled back: :mod:`edge_runtime.learning.guard`), frames have one size per node, set by its configuration and never by a device
(:mod:`edge_runtime.node.schema`), and a micro-batch that still raises in the learner is decided
sample by sample. A hello is required on every new connection; with CURVE
(:mod:`edge_runtime.node.security`) a device id belongs to the key that first registered it. Per-device
state is freed on bye and after ``node.device_idle_s``; the ledger is compacted below
``next_seq - ledger_retention``. Open connections are capped (``node.max_connections``, under the
descriptor limit, which ``edge-node run`` raises to its hard limit); one message's frames are each
bounded by MAXMSGSIZE, set to the largest frame the node's schema can need (libzmq assembles a
multipart message before the node sees it, so the frames of one message are not bounded in number
before it is read: docs/operations.md, "Bounds"). An exception while handling one message answers
that message; a failure of the IO loop itself stops the node (drain, checkpoint) and exits 1 naming it.

This module builds the parts, restores the learner, and runs the IO thread's poll loop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from edge_runtime import wire
from edge_runtime.core.atomic import atomic_write_text
from edge_runtime.core.config import Config, NodeConfig
from edge_runtime.core.names import BUFFER_ITEMS
from edge_runtime.learning.buffer.sqlite import SqliteStore
from edge_runtime.learning.checkpoint import CheckpointError, CheckpointManager
from edge_runtime.node.compat import checkpoint_problem, stored_state_problem
from edge_runtime.node.handoff import Handoff
from edge_runtime.node.ledger import Ledger
from edge_runtime.node.limits import connection_cap, raise_nofile
from edge_runtime.node.logs import NODE_LOGGER, setup_logging
from edge_runtime.node.schema import SchemaNegotiator, first_frames, node_frame_size, stored_frame_size
from edge_runtime.node.security import secure_socket
from edge_runtime.node.sessions import Sessions
from edge_runtime.node.startup import StartupError, StateLock, lock_state_dir, metrics_port_message, state_write_error
from edge_runtime.node.worker import LearnerLike, LearnerWorker
from edge_runtime.ops.metrics import NodeMetrics
from edge_runtime.ops.observe import NodeObserver

if TYPE_CHECKING:
    from edge_runtime.node.publish import ModelPublisher

__all__ = ["EdgeNode", "LearnerLike", "serve"]

log = logging.getLogger(NODE_LOGGER)

RECV_BURST = 256  # messages read before the IO thread looks at acks again
CURVE_FRAME_OVERHEAD = 64  # bytes: a CURVE MESSAGE command adds 33 to a frame (flags, nonce, MAC), rounded up


class NetworkLoopError(RuntimeError):
    """The IO thread's loop itself failed (not one message): the node stopped; the message says why."""


class LearnerStoppedError(RuntimeError):
    """The learner thread stopped on an error (logged with its traceback): the node stopped; the message says why."""


class EdgeNode:
    """A ROUTER endpoint feeding one learner; see the module docstring for the threads."""

    def __init__(self, config: Config, learner: LearnerLike | None = None, state_lock: StateLock | None = None) -> None:
        self.config = config
        #: the lock on state_dir (``edge-node run`` takes it before anything else; in-process nodes may go without)
        self.state_lock = state_lock
        nc: NodeConfig = config.node
        self.nc = nc
        self.state_dir = Path(nc.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(self.state_dir / "state.db", synchronous=nc.sqlite_synchronous)
        self.ledger = Ledger(self.store)
        # Frames of one size only (every frames modality): every micro-batch and every replay batch must stack. The
        # size is node.frame_size, else the one the stored buffer holds, else features.image_size; never a device's.
        self.schema = SchemaNegotiator(config, node_frame_size(config, None if nc.frame_size else stored_frame_size(self.store, first_frames(config))))
        if learner is None:
            from edge_runtime.learning.learner import Learner  # torch import only when a real learner is needed

            learner = Learner(config, store=self.store)
        self.learner = learner
        self.checkpoints = CheckpointManager(self.state_dir / "checkpoints", keep=nc.checkpoint_keep)
        # Every check of the configuration against the stored state runs before anything in the folder
        # changes (node/compat.py): a refused start leaves it as it was.
        try:
            loaded = self.checkpoints.load_latest()
            problem = stored_state_problem(config, self.store, self.schema.frame_size, self.state_dir / "state.db")
            if problem is None and loaded is not None:
                model, theirs = getattr(learner, "model", None), loaded[0].get("learner", {}).get("model")
                if model is not None and theirs is not None:
                    problem = checkpoint_problem(model.state_dict(), theirs, loaded[1], getattr(model, "modalities", None))
            if problem is not None:
                raise StartupError(problem)
        except BaseException:
            self.store.close()
            raise
        self.store.evict_unfit(self.schema.stored_problem)
        self.metrics = NodeMetrics()
        self.observer = NodeObserver(self.state_dir, self.metrics, config.model.num_classes, nc.status_every_s, nc.history_every_s,
                                     tuple(config.modalities))
        self._restore(loaded)
        self._stop = threading.Event()
        self._handoff = Handoff(nc.batch_size, nc.batch_window_ms / 1000.0, nc.queue_max, nc.queue_max_bytes)
        self._federation = None
        if config.federation.enabled:  # a local control channel; the logic is in edge_runtime.federation.node_link
            from edge_runtime.federation.node_link import FederationLink

            self._federation = FederationLink(self.learner, self.state_dir, config.federation, self._handoff.wake,
                                              self.checkpoint, config.training.lr, curve=config.node.curve)
            link = self._federation
            self.metrics.add_federation(lambda: link.round, lambda: link.samples_since_round, lambda: link.round_at)
        self._worker = LearnerWorker(config, self.learner, self.store, self.ledger, self.checkpoints, self.metrics,
                                     self.observer, self._handoff, self._stop, self._federation)
        self._sessions = Sessions(nc, config.model.num_classes, self.metrics, self.schema, self._handoff, self.observer.arrivals)
        self.endpoint: str | None = None
        self.metrics_port: int | None = None
        self.nofile: int | None = None  # the descriptor limit, when serve() raised it (caps node.max_connections)
        #: MAXMSGSIZE: per frame, the largest the node's schema can need (never over node.max_message_bytes)
        # (+ CURVE_FRAME_OVERHEAD: libzmq checks MAXMSGSIZE against the encrypted frame, 33 bytes longer under CURVE)
        self.max_frame_bytes = min(nc.max_message_bytes,
                                   max(self.schema.largest_frame(), wire.Limits().max_header_bytes) + CURVE_FRAME_OVERHEAD)
        handoff = self._handoff
        self.metrics.queue_bytes.set_function(lambda: handoff.queued_bytes)  # read when scraped, no per-sample cost
        self.metrics.queue_depth.set_function(lambda: len(handoff.queue))  # the same: exact whenever it is read
        self.metrics.devices.set_function(self._sessions.connected)

    @property
    def decided_total(self) -> int:
        """Samples decided since this node started (duplicates of decided seqs not counted)."""
        return self._worker.decided_total

    # ------------------------------------------------------------------ restore / checkpoint
    def _restore(self, loaded: tuple[dict[str, Any], Path] | None) -> None:
        """Load the newest valid checkpoint (``loaded``) into the learner, else rebuild its replay buffer from the store."""
        if loaded is not None:
            state, path = loaded
            try:
                self.learner.load_state_dict(state["learner"])
            except Exception as err:
                raise CheckpointError(
                    f"checkpoint {path} does not fit this configuration ({err}); use the configuration it was "
                    f"written with, or, to start fresh, `edge-node state reset --state-dir {self.state_dir}` (a dated backup)") from err
            log.info("restored checkpoint", extra={"event": "restored", "path": str(path)})
        elif len(self.store):
            items = self.learner.restore_from_store()
            log.info("no checkpoint; replay buffer rebuilt from the store", extra={"event": "restored_store", BUFFER_ITEMS: items})

    def checkpoint(self) -> Path:
        """Write a checkpoint of the learner (call from the learner thread, or when it is stopped)."""
        return self._worker.checkpoint()

    # ------------------------------------------------------------------ socket
    def _make_socket(self, ctx: zmq.Context) -> zmq.Socket:
        """The ROUTER socket, bound to ``node.bind`` (a CURVE server when ``node.curve.enabled``)."""
        nc = self.nc
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Off (default): libzmq parks a second connection with a routing id in use until the first
        # is gone (closed, or silent past the heartbeat timeout). See docs/operations.md, "Device identity".
        sock.setsockopt(zmq.ROUTER_HANDOVER, int(nc.router_handover))
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)  # libzmq drops a connection sending a larger frame
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        if nc.heartbeat_ivl_ms:
            sock.setsockopt(zmq.HEARTBEAT_IVL, nc.heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, nc.heartbeat_timeout_ms)
            sock.setsockopt(zmq.HEARTBEAT_TTL, nc.heartbeat_timeout_ms)
        if nc.curve.enabled:
            self._sessions.curve = secure_socket(ctx, sock, nc.curve, time.monotonic())
        # Connection events (socket fds): a message's fd names its connection, and a closed fd may be
        # reused by the next connection, so a disconnect ends the hello done on that fd. (The event
        # is queued long before a new connection on the same fd can finish its handshake and hello.)
        # Accepted minus disconnected is the count node.max_connections caps: monitored before the
        # bind, so that no connection goes uncounted.
        self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._sessions.monitor = self._monitor
        bind = nc.bind
        try:
            sock.bind(bind)
        except zmq.ZMQError as err:
            sock.disable_monitor()
            self._monitor.close(0)
            sock.close(0)
            raise ValueError(f"node.bind: cannot bind {bind} ({err}); pick a free port or tcp://127.0.0.1:* for any") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.nofile is not None:
            self._sessions.max_connections = connection_cap(nc.max_connections, self.nofile)
        return sock

    # ------------------------------------------------------------------ run
    def request_stop(self, *_: Any) -> None:
        """Stop taking new samples, decide what is queued, checkpoint, return from :meth:`run` (signal-safe)."""
        self._stop.set()

    def run(self, ready: threading.Event | None = None) -> dict[str, Any]:
        """Serve until :meth:`request_stop`; returns the final summary (also written to state_dir/summary.json)."""
        ctx = zmq.Context()
        sock = self._make_socket(ctx)
        wake_rx = ctx.socket(zmq.PULL)
        wake_addr = f"inproc://edge-node-wake-{id(self)}"
        wake_rx.bind(wake_addr)

        def abandon_start() -> None:
            self.metrics.close()
            wake_rx.close(0)
            sock.disable_monitor()
            self._monitor.close(0)
            sock.close(0)
            ctx.term()

        if self.nc.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(self.nc.metrics_port, self.nc.metrics_host,
                                                       self.nc.metrics_timeout_s, self.nc.metrics_max_connections)
            except OSError as err:  # taken since the start-up check (edge_runtime.node.startup)
                abandon_start()
                raise StartupError(metrics_port_message(self.nc.metrics_host, self.nc.metrics_port, err)) from None
        publisher: ModelPublisher | None = None
        if self.nc.model_bind:
            from edge_runtime.node.publish import ModelPublisher

            publisher = ModelPublisher(ctx, self.nc.model_bind, self.nc.model_every, self.nc.model_resend_s,
                                         config=self.config)
        info = {"endpoint": self.endpoint, "metrics_port": self.metrics_port, "pid": os.getpid(),
                "model_endpoint": publisher.endpoint if publisher else None,
                "control_endpoint": self._federation.start() if self._federation else None}
        try:
            atomic_write_text(self.state_dir / "node.json", json.dumps(info))
        except OSError as err:  # the disk filled since preflight's probe
            if self._federation is not None:
                self._federation.stop()
            abandon_start()
            raise state_write_error(self.state_dir, err, "cannot write node.json") from None
        if self.state_lock is not None:
            self.state_lock.record(endpoint=self.endpoint)  # for the message of a second node refused on this folder
        log.info("listening", extra={"event": "listening", **info})
        worker = self._worker
        self.observer.start(info, known_devices=lambda: worker.known_devices)
        reader = self.ledger.reader()
        thread = threading.Thread(target=worker.run, args=(ctx, wake_addr, publisher), name="learner", daemon=True)
        thread.start()
        if ready is not None:
            ready.set()
        sessions = self._sessions
        monitor = self._monitor  # connection events, see _make_socket
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake_rx, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        loop_error: Exception | None = None
        try:
            try:
                self._loop(sock, wake_rx, monitor, poller, reader, thread)
            except Exception as err:  # the loop itself, not one message (those are answered in Sessions.handle)
                loop_error = err
                log.critical("the network loop failed; stopping the node (queued samples are decided, a checkpoint written)",
                             exc_info=True, extra={"event": "network_loop_failed", "error": repr(err)})
                self._stop.set()
                self._handoff.drain()
        finally:
            thread.join(timeout=60)
            self.observer.stop()
            reader.close()
            sock.disable_monitor()
            monitor.close(0)
            wake_rx.close(0)
            sock.close(linger=1000)
            if sessions.curve is not None:
                sessions.curve.stop()
            ctx.term()
            self.metrics.close()
            if self._federation is not None:
                self._federation.stop()
        if loop_error is not None:
            raise NetworkLoopError(f"the network loop failed ({type(loop_error).__name__}: {loop_error}); "
                                   "the node stopped after deciding the queued samples; see the log") from loop_error
        if worker.error is not None:
            raise LearnerStoppedError(f"the learner thread stopped ({type(worker.error).__name__}: {worker.error}); "
                                      "no sample without a committed verdict was acked; see the log") from worker.error
        summary = {**self.learner.summary(), "decided": worker.decided_total, "endpoint": self.endpoint}
        try:
            atomic_write_text(self.state_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        except OSError as err:  # a full disk at the very end: the checkpoint and the ledger hold the state
            log.error("cannot write summary.json", extra={"event": "summary_not_written", "error": str(err)})
        self.store.close()
        log.info("stopped", extra={"event": "stopped", "decided": worker.decided_total})
        return summary

    def _loop(self, sock: zmq.Socket, wake_rx: zmq.Socket, monitor: zmq.Socket, poller: zmq.Poller,
              reader: Any, thread: threading.Thread) -> None:
        """The IO thread's poll loop: until draining is done and the learner thread has stopped."""
        sessions = self._sessions
        next_sweep = time.monotonic() + 1.0
        while True:
            if self._stop.is_set() and not self._handoff.draining:
                self._handoff.drain()
                log.info("stopping: deciding queued samples", extra={"event": "draining", "queued": len(self._handoff.queue)})
            if self._handoff.draining and not thread.is_alive():
                break
            events = dict(poller.poll(100))
            if wake_rx in events:
                while True:
                    try:
                        wake_rx.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            sessions.send_acks(sock)
            sessions.retry_deferred_hellos(sock, reader)
            sessions.connection_events(monitor)
            if sock in events:
                for i in range(RECV_BURST):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if i % 16 == 15:
                        sessions.connection_events(monitor)
                    sessions.handle(sock, reader, frames)
                    del frames  # a refused large message is freed now, not when the next one arrives
            now = time.monotonic()
            if now >= next_sweep:
                sessions.sweep_idle(now)
                next_sweep = now + 1.0
            sessions.close_refused(monitor, now)
            if sessions.curve is not None:
                sessions.curve.maybe_reload(now)
        sessions.send_acks(sock)


def serve(config: Config) -> int:
    """``edge-node run``: serve until SIGTERM / SIGINT, then drain, checkpoint and exit 0."""
    # Held since preflight under `edge-node run` (then this returns the same lock); taken here otherwise.
    state_lock = lock_state_dir(Path(config.node.state_dir))
    setup_logging(config.node.log_format)
    nofile = raise_nofile()
    node = EdgeNode(config, state_lock=state_lock)
    node.nofile = nofile
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    try:
        node.run()
    except (NetworkLoopError, LearnerStoppedError) as err:
        print(f"edge-node: {err}", file=sys.stderr)
        return 1
    return 0
