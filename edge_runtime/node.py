"""``EdgeNode``: the daemon of the edge box (DESIGN.md, "Wire protocol v1").

Two threads and one rule each:

* the IO thread (the caller of :meth:`EdgeNode.run`) owns the ROUTER socket: it decodes and
  validates messages, answers hellos and pings, de-duplicates by (device, seq), enforces each
  device's credit window and the bounded ingest queue, and sends the acks the learner thread
  hands back;
* the learner thread takes micro-batches from the queue (by size, or after a time window), calls
  ``Learner.observe``, records every verdict in the SQLite ledger in the same transaction as the
  buffer's admissions and evictions, commits, and only then hands the acks to the IO thread.
  It also writes the periodic and final checkpoints.

An ``admitted`` ack therefore always follows the commit of the sample, and a resent seq is
answered from the ledger with its first verdict and never learned from twice. The node knows
nothing about losses: it uses the learner only through :class:`LearnerLike`.

Nothing a device sends may stop the node: every sample is checked against the model's input
contract (:mod:`edge_runtime.validation`) before it is queued (the finiteness scan runs on the
learner thread), frames have one size per node (``node.frame_size``, or pinned by the stored
buffer or the first device), and a micro-batch that still raises in the learner is decided
sample by sample. A hello is required on every new connection (messages carry their socket fd);
with CURVE a device id belongs to the key that first registered it. Per-device state is freed on
bye and after ``node.device_idle_s``; the ledger is compacted below ``next_seq - ledger_retention``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from edge_runtime import validation, wire
from edge_runtime.buffer.ledger import DECIDED, Ledger
from edge_runtime.buffer.sqlite import SqliteStore
from edge_runtime.checkpoint import CheckpointError, CheckpointManager
from edge_runtime.config import Config, NodeConfig
from edge_runtime.features import to_features
from edge_runtime.metrics import NodeMetrics
from edge_runtime.observe import NodeObserver
from edge_runtime.startup import StartupError, metrics_port_message
from edge_runtime.validation import InputContract
from edge_runtime.sample import Sample
from edge_runtime.wire import TensorSpec

log = logging.getLogger("edge_runtime.node")

ACKS_PER_MESSAGE = 150  # keeps an ack header well inside wire.Limits.max_header_bytes
_WAKE = b"w"


class LearnerLike(Protocol):
    """What the node needs from a learner (``edge_runtime.learner.Learner``, or a no-op one in benchmarks).

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


#: What a device sending ``--send raw`` declares: a mono waveform at ``features.sample_rate`` and RGB frames.
RAW_SCHEMA: dict[str, TensorSpec] = validation.raw_schema()


def node_schema(config: Config) -> dict[str, TensorSpec]:
    """The tensors the node's model takes: audio (T, F) and video (T, C, H, W) float32 (H, W: see ``node.frame_size``)."""
    return validation.feature_schema(config, config.node.frame_size)


class SeqTracker:
    """Decided sequence numbers of one device: a contiguous prefix ``[0, next_seq)`` plus the set above it.

    The set above is bounded by the caller: the node refuses a seq ``node.max_seq_gap`` or more
    above ``next_seq`` (``seq_gap``), so it never holds more than that many seqs.
    """

    __slots__ = ("next_seq", "above")

    def __init__(self, next_seq: int = 0, above: Iterable[int] = ()) -> None:
        self.next_seq = next_seq
        self.above: set[int] = set()
        for seq in above:
            self.add(seq)

    def __contains__(self, seq: int) -> bool:
        return seq < self.next_seq or seq in self.above

    def add(self, seq: int) -> None:
        if seq < self.next_seq:
            return
        self.above.add(seq)
        while self.next_seq in self.above:
            self.above.remove(self.next_seq)
            self.next_seq += 1


@dataclass
class DeviceState:
    """What the IO thread knows of one device id; created by a hello, freed on bye or after ``node.device_idle_s``."""

    device: str
    tracker: SeqTracker
    conn: int = -1  # the connection (socket fd) that said hello; -1: this device must say hello again
    key: str | None = None  # with CURVE: the public key (Z85) of that connection
    contract: InputContract | None = None  # what this connection was welcomed with (None: no hello yet)
    raw: bool = False  # raw media: the learner thread computes the features
    pending: set[int] = field(default_factory=set)  # accepted, not yet acknowledged
    recent: dict[int, str] = field(default_factory=dict)  # last verdicts, to answer resends without SQLite
    last_seen: float = 0.0
    bye: bool = False


@dataclass
class _Item:
    """One accepted sample on its way to the learner (``verdict`` set: decided already, e.g. invalid)."""

    rid: bytes
    device: str
    seq: int
    sample: Sample | None
    verdict: str | None
    arrived: float
    nbytes: int = 0
    raw: bool = False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra=`` fields."""

    _skip = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(fmt: str = "json", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("edge_runtime")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class EdgeNode:
    """A ROUTER endpoint feeding one learner; see the module docstring for the threads."""

    def __init__(self, config: Config, learner: LearnerLike | None = None) -> None:
        self.config = config
        nc: NodeConfig = config.node
        self.nc = nc
        self.state_dir = Path(nc.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(self.state_dir / "state.db", synchronous=nc.sqlite_synchronous)
        self.ledger = Ledger(self.store)
        self.num_classes = config.model.num_classes
        self.limits = wire.Limits(max_message_bytes=nc.max_message_bytes)
        # Frames of one size only: every micro-batch and every replay batch must stack. The size is
        # node.frame_size, else the one the stored buffer holds, else the first device's.
        self._frame_size: tuple[int, int] | None = tuple(nc.frame_size) if nc.frame_size else self._stored_frame_size()
        if self._frame_size is not None:
            self.store.evict_unfit(self._stored_problem)
        if learner is None:
            from edge_runtime.learner import Learner  # torch import only when a real learner is needed

            learner = Learner(config, store=self.store)
        self.learner = learner
        self.checkpoints = CheckpointManager(self.state_dir / "checkpoints", keep=nc.checkpoint_keep)
        self.metrics = NodeMetrics()
        self.observer = NodeObserver(self.state_dir, self.metrics, config.model.num_classes, nc.status_every_s, nc.history_every_s)
        self._restore()
        # --- federation (issue 12): local control channel; logic in edge_runtime/federation/node_link.py
        self._federation = None
        if config.federation.enabled:
            from edge_runtime.federation.node_link import FederationLink

            self._federation = FederationLink(self.learner, self.state_dir, config.federation, self._wake_learner,
                                              self.checkpoint, config.training.lr)
            link = self._federation
            self.metrics.add_federation(lambda: link.round, lambda: link.samples_since_round, lambda: link.round_at)
        # --- end federation
        self._raw_contract = validation.raw_contract(config)
        self._devices: dict[bytes, DeviceState] = {}
        self._queue: deque[_Item] = deque()
        self._queued_bytes = 0
        self._in_flight = 0  # accepted, not yet acknowledged, all devices
        self._cond = threading.Condition()
        self._outbox: deque[list[tuple[bytes, int, str]]] = deque()
        # IO thread -> learner thread, applied at the next micro-batch: key bindings to persist,
        # devices whose state was freed (the learner drops its cached seq tracker too).
        self._to_bind: deque[tuple[str, str]] = deque()
        self._forget: deque[str] = deque()
        self._trackers: dict[str, SeqTracker] = {}  # learner thread: decided seqs of active devices
        self._stop = threading.Event()
        self._draining = False
        self._learner_error: BaseException | None = None
        self._auth: ThreadAuthenticator | None = None
        self._allowed: set[str] | None = None
        self._bound: dict[str, str] = {}  # IO thread: device -> key, for devices with state
        self._by_conn: dict[int, bytes] = {}  # IO thread: connection (fd) -> routing id that said hello on it
        self.endpoint: str | None = None
        self.metrics_port: int | None = None
        self.decided_total = 0
        self.metrics.queue_bytes.set_function(lambda: self._queued_bytes)  # read when scraped, no per-sample cost
        self.metrics.queue_depth.set_function(lambda: len(self._queue))  # the same: exact whenever it is read
        self.metrics.devices.set_function(self._connected)
        self._arrivals = self.observer.arrivals
        self._known_devices = len(self.ledger.next_seqs())  # devices with a ledger row (learner thread adds)

    # ------------------------------------------------------------------ restore / checkpoint
    def _stored_frame_size(self) -> tuple[int, int] | None:
        """The frame size most stored samples have (None when the store holds no video)."""
        sizes = Counter(tuple(int(d) for d in self.store.get(k).tensors["video"].shape[2:])
                        for k in self.store.keys() if "video" in self.store.get(k).tensors
                        and np.ndim(self.store.get(k).tensors["video"]) == 4)
        return sizes.most_common(1)[0][0] if sizes else None  # type: ignore[return-value]

    def _stored_problem(self, sample: Sample) -> str | None:
        """Why a stored sample cannot be replayed with the others (its contract code), or None."""
        problem = validation.model_contract(self.config, self._frame_size, bounded=False).check(sample)
        return None if problem is None else problem.code

    def _restore(self) -> None:
        loaded = self.checkpoints.load_latest()
        if loaded is not None:
            state, path = loaded
            try:
                self.learner.load_state_dict(state["learner"])
            except Exception as err:
                raise CheckpointError(
                    f"checkpoint {path} does not fit this configuration ({err}); use the configuration it was "
                    f"written with, or move {self.state_dir} aside to start fresh") from err
            log.info("restored checkpoint", extra={"event": "restored", "path": str(path)})
        elif len(self.store):
            items = self.learner.restore_from_store()
            log.info("no checkpoint; replay buffer rebuilt from the store", extra={"event": "restored_store", "buffer_items": items})

    def checkpoint(self) -> Path:
        """Write a checkpoint of the learner (call from the learner thread, or when it is stopped)."""
        summary = self.learner.summary()
        path = self.checkpoints.save({"learner": self.learner.state_dict(), "node": {"decided": self.decided_total}}, step=int(summary.get("samples_seen", 0)))
        self.metrics.checkpoints.inc()
        self.observer.on_checkpoint(path)
        log.info("checkpoint written", extra={"event": "checkpoint", "path": str(path)})
        return path

    def _wake_learner(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ socket
    def _make_socket(self, ctx: zmq.Context) -> zmq.Socket:
        nc = self.nc
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Off (default): libzmq parks a second connection with a routing id in use until the first
        # is gone (closed, or silent past the heartbeat timeout). See README "Device identity".
        sock.setsockopt(zmq.ROUTER_HANDOVER, int(nc.router_handover))
        sock.setsockopt(zmq.MAXMSGSIZE, nc.max_message_bytes)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        if nc.heartbeat_ivl_ms:
            sock.setsockopt(zmq.HEARTBEAT_IVL, nc.heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, nc.heartbeat_timeout_ms)
            sock.setsockopt(zmq.HEARTBEAT_TTL, nc.heartbeat_timeout_ms)
        if nc.curve.enabled:
            if not nc.curve.server_secret_key or not nc.curve.allowed_keys_dir:
                raise ValueError("node.curve.enabled needs node.curve.server_secret_key and node.curve.allowed_keys_dir "
                                 "(create them with: edge-node keys DIR)")
            for key, value in (("server_secret_key", nc.curve.server_secret_key), ("allowed_keys_dir", nc.curve.allowed_keys_dir)):
                if not Path(value).exists():
                    raise ValueError(f"node.curve.{key}: {value} does not exist (create keys with: edge-node keys DIR)")
            self._auth = ThreadAuthenticator(ctx)
            self._auth.start()
            self._reload_keys()
            public, secret = zmq.auth.load_certificate(nc.curve.server_secret_key)
            if secret is None:
                raise ValueError(f"node.curve.server_secret_key: {nc.curve.server_secret_key} holds no secret key; "
                                 "point it at the *.key_secret file")
            sock.curve_publickey, sock.curve_secretkey = public, secret
            sock.curve_server = True
        bind = nc.bind
        try:
            sock.bind(bind)
        except zmq.ZMQError as err:
            sock.close(0)
            raise ValueError(f"node.bind: cannot bind {bind} ({err}); pick a free port or tcp://127.0.0.1:* for any") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return sock

    def _reload_keys(self) -> None:
        """Re-read node.curve.allowed_keys_dir: ZAP refuses new connections of removed keys, and the
        IO thread refuses further messages of connections whose key was removed."""
        location = str(self.nc.curve.allowed_keys_dir)
        try:
            certs = zmq.auth.load_certificates(location)
        except OSError as err:
            log.error("cannot read node.curve.allowed_keys_dir; keeping the keys read before",
                      extra={"event": "keys_unreadable", "path": location, "error": str(err)})
            return
        assert self._auth is not None
        self._auth.certs["*"] = certs  # what configure_curve(domain="*", location) sets, without re-reading
        self._auth.allow_any = False
        self._allowed = {k.decode("ascii") for k in certs}

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
        if self.nc.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.serve(self.nc.metrics_port, self.nc.metrics_host)
            except OSError as err:  # taken since the start-up check (edge_runtime.startup)
                wake_rx.close(0)
                sock.close(0)
                ctx.term()
                raise StartupError(metrics_port_message(self.nc.metrics_host, self.nc.metrics_port, err)) from None
        self._publisher = None
        if self.nc.model_bind:
            from edge_runtime.publish import ModelPublisher

            self._publisher = ModelPublisher(ctx, self.nc.model_bind, self.nc.model_every, self.nc.model_resend_s)
        info = {"endpoint": self.endpoint, "metrics_port": self.metrics_port, "pid": os.getpid(),
                "model_endpoint": self._publisher.endpoint if self._publisher else None,
                "control_endpoint": self._federation.start() if self._federation else None}
        _atomic_write(self.state_dir / "node.json", json.dumps(info))
        log.info("listening", extra={"event": "listening", **info})
        self.observer.start(info, known_devices=lambda: self._known_devices)
        reader = self.ledger.reader()
        worker = threading.Thread(target=self._learner_loop, args=(ctx, wake_addr), name="learner", daemon=True)
        worker.start()
        if ready is not None:
            ready.set()
        # Connection events (socket fds): a message's fd names its connection, and a closed fd may be
        # reused by the next connection, so a disconnect ends the hello done on that fd. (The event
        # is queued long before a new connection on the same fd can finish its handshake and hello.)
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake_rx, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        next_sweep = time.monotonic() + 1.0
        next_keys = time.monotonic() + self.nc.curve.reload_s
        try:
            while True:
                if self._stop.is_set() and not self._draining:
                    self._draining = True
                    with self._cond:
                        self._cond.notify_all()
                    log.info("stopping: deciding queued samples", extra={"event": "draining", "queued": len(self._queue)})
                if self._draining and not worker.is_alive():
                    break
                events = dict(poller.poll(100))
                if wake_rx in events:
                    while True:
                        try:
                            wake_rx.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                self._send_acks(sock)
                self._connection_events(monitor)
                if sock in events:
                    for i in range(256):  # bounded burst, then look at acks again
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if i % 16 == 15:
                            self._connection_events(monitor)
                        self._handle(sock, reader, frames)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep_idle(now)
                    next_sweep = now + 1.0
                if self._auth is not None and now >= next_keys:
                    self._reload_keys()
                    next_keys = now + self.nc.curve.reload_s
            self._send_acks(sock)
        finally:
            worker.join(timeout=60)
            self.observer.stop()
            reader.close()
            sock.disable_monitor()
            monitor.close(0)
            wake_rx.close(0)
            sock.close(linger=1000)
            if self._auth is not None:
                self._auth.stop()
            ctx.term()
            self.metrics.close()
            if self._federation is not None:
                self._federation.stop()
        if self._learner_error is not None:
            raise RuntimeError("the learner thread failed; see the log") from self._learner_error
        summary = {**self.learner.summary(), "decided": self.decided_total, "endpoint": self.endpoint}
        _atomic_write(self.state_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        self.store.close()
        log.info("stopped", extra={"event": "stopped", "decided": self.decided_total})
        return summary

    # ------------------------------------------------------------------ IO thread: messages
    def _error(self, sock: zmq.Socket, rid: bytes, seq: int | None, code: str, msg: str) -> None:
        self.metrics.errors.labels(code).inc()
        self._send(sock, rid, wire.encode_error(seq, code, msg))

    def _send(self, sock: zmq.Socket, rid: bytes, frames: list) -> None:
        try:
            sock.send_multipart([rid, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as err:  # device gone or its pipe full: it resends, the ledger answers again
            log.debug("send failed", extra={"event": "send_failed", "errno": err.errno})

    def _credit(self, dev: DeviceState) -> int:
        return max(self.nc.credit - len(dev.pending), 0)

    def _handle(self, sock: zmq.Socket, reader: Any, frames: list) -> None:
        rid = frames[0].bytes
        body = frames[1:]
        dev = self._devices.get(rid)
        device = dev.device if dev is not None else self._device_id(sock, rid)
        if device is None or not body:
            return
        conn = body[-1].get(zmq.SRCFD)
        key = body[-1].get("User-Id") if self._auth is not None else None
        if key is not None and self._allowed is not None and key not in self._allowed:
            self._error(sock, rid, None, "key_revoked", "this connection's CURVE key was removed from node.curve.allowed_keys_dir")
            return
        now = time.monotonic()
        if dev is not None and dev.contract is not None and (dev.conn != conn or dev.key != key):
            # Another connection than the one that said hello: the old one is gone (libzmq parks a
            # duplicate routing id while it lives), unless ROUTER_HANDOVER let this one take it.
            if self.nc.router_handover and now - dev.last_seen < self.nc.heartbeat_timeout_ms / 1000.0:
                self._error(sock, rid, None, "id_in_use", f"device id {device!r} is in use by a live connection; "
                            "pick another ROUTING_ID, or retry after the node's heartbeat timeout")
                return
            dev.contract, dev.conn, dev.key = None, -1, None  # this connection must say its own hello
        try:
            msg = wire.decode(body, num_classes=self.num_classes, device=device, limits=self.limits, content=False)
        except wire.WireError as err:
            if err.seq is None:
                self._error(sock, rid, None, err.code, err.message)
            elif dev is None or dev.contract is None:
                self._error(sock, rid, err.seq, "no_hello", "send hello before samples (on every new connection)")
            else:
                dev.last_seen = now
                self._sample(sock, reader, rid, dev, err.seq, None, err.verdict, sum(len(f) for f in body))
            return
        if isinstance(msg, Sample):
            if dev is None or dev.contract is None:
                self._error(sock, rid, msg.seq, "no_hello", "send hello before samples (on every new connection)")
                return
            dev.last_seen = now
            problem = self._check(dev, msg)
            if problem is not None:
                self._sample(sock, reader, rid, dev, msg.seq, None, problem.verdict, 0)
            else:
                self._sample(sock, reader, rid, dev, msg.seq, msg, None, sum(len(f) for f in body))
        elif isinstance(msg, wire.Hello):
            self._hello(sock, reader, rid, device, msg, conn, key, now)
        elif isinstance(msg, wire.Ping):
            if dev is not None and dev.contract is not None:
                dev.last_seen = now
                self._send(sock, rid, wire.encode_ack([], self._credit(dev)))
            else:
                self._error(sock, rid, None, "no_hello", "send hello first (on every new connection)")
        elif isinstance(msg, wire.Bye):
            if dev is not None and (dev.contract is not None or dev.conn == -1):
                # a bye read after its connection's disconnect event still frees the state
                dev.bye = True
                dev.contract = None
                if not dev.pending:
                    self._free(rid)

    def _device_id(self, sock: zmq.Socket, rid: bytes) -> str | None:
        """The device id of a routing id, or None (answered with ``bad_routing_id``) when it cannot be one."""
        problem = None
        if not rid or rid[:1] == b"\x00":  # libzmq generates ids starting with a zero byte for peers that set none
            problem = "the connection set no ROUTING_ID"
        elif len(rid) > self.limits.max_device_id_bytes:
            problem = f"the routing id is {len(rid)} bytes, over {self.limits.max_device_id_bytes}"
        else:
            try:
                return rid.decode("utf-8")
            except UnicodeDecodeError:
                problem = "the routing id is not valid UTF-8"
        self._error(sock, rid, None, "bad_routing_id", f"{problem}; set ROUTING_ID to the device id (1..64 bytes of UTF-8)")
        return None

    def _check(self, dev: DeviceState, sample: Sample) -> validation.Problem | None:
        """The cheap part of the input contract (shapes, bounds, label, split); finiteness runs on the learner thread."""
        contract = dev.contract
        assert contract is not None
        shapes = {n: (_dtype_name(t.dtype), t.shape) for n, t in sample.tensors.items()}
        if not dev.raw and contract.schema["video"].shape[2] == -1:  # welcomed before the frame size was pinned
            if self._frame_size is None:
                problem = contract.check_shapes(shapes)
                if problem is not None:
                    return problem
                self._pin(tuple(shapes["video"][1][2:]), dev.device)  # type: ignore[arg-type]
            contract = dev.contract = self._features_contract()
        return contract.check_shapes(shapes) or validation.check_label_split(sample.label, sample.split, self.num_classes)

    def _features_contract(self) -> InputContract:
        return validation.model_contract(self.config, self._frame_size)

    def _pin(self, size: tuple[int, int], device: str) -> None:
        self._frame_size = (int(size[0]), int(size[1]))
        log.info("frame size pinned", extra={"event": "frame_size", "frame_size": list(self._frame_size), "device": device})

    def _hello(self, sock: zmq.Socket, reader: Any, rid: bytes, device: str, msg: wire.Hello,
               conn: int, key: str | None, now: float) -> None:
        if msg.device != device:
            self._error(sock, rid, None, "bad_hello", f"hello names device {msg.device!r} but the socket's routing id is {device!r}; "
                        "set ROUTING_ID to the device id")
            return
        if key is not None:
            bound = self._bound.get(device) or reader.device_key(device)
            if bound is not None and bound != key:
                self._error(sock, rid, None, "id_bound", f"device id {device!r} is registered to another CURVE key; "
                            "each device id belongs to the key that first said hello with it")
                return
        contract, raw, problem = self._welcome_contract(msg.schema)
        if problem:
            self._error(sock, rid, None, "bad_hello", problem)
            return
        assert contract is not None
        dev = self._devices.get(rid)
        if dev is None:
            dev = self._devices[rid] = DeviceState(device, SeqTracker(reader.next_seq(device)))
        if key is not None and device not in self._bound:
            self._bound[device] = key
            self._to_bind.append((device, key))
        if dev.conn != conn:
            self._by_conn.pop(dev.conn, None)
        dev.contract, dev.raw, dev.conn, dev.key, dev.last_seen, dev.bye = contract, raw, conn, key, now, False
        self._by_conn[conn] = rid
        self._send(sock, rid, wire.encode_welcome(self._credit(dev), self.num_classes, contract.schema, dev.tracker.next_seq))
        log.info("device hello", extra={"event": "hello", "device": device, "next_seq": dev.tracker.next_seq})

    def _welcome_contract(self, declared: dict[str, TensorSpec]) -> tuple[InputContract | None, bool, str | None]:
        """(contract, raw, problem) for a hello's declared schema; ``{}`` means "the node's schema"."""
        features = self._features_contract()
        if not declared:
            return features, False, None
        problem = _schema_problem(declared, features.schema)
        if problem is None:
            size = tuple(declared["video"].shape[2:])
            if -1 not in size:
                top = validation.limits_of(self.config)["max_frame_size"]
                if max(size) > top:
                    return None, False, (f"frames {size[0]}x{size[1]} are over node.max_frame_size = {top}; "
                                         "send smaller frames")
                if self._frame_size is None:
                    self._pin(size, "hello")  # type: ignore[arg-type]
                    features = self._features_contract()
            return features, False, None
        if _schema_problem(declared, RAW_SCHEMA) is None:
            problem = _features_problem(self.config)
            image = (self.config.features.image_size,) * 2
            if problem is None and self._frame_size not in (None, image):
                problem = (f"raw media refused: its frames become features.image_size {image[0]}x{image[1]} but this node "
                           f"batches {self._frame_size[0]}x{self._frame_size[1]} frames (node.frame_size / its stored buffer)")
            if problem:
                return None, True, problem
            if self._frame_size is None:
                self._pin(image, "hello")
            return self._raw_contract, True, None
        return None, False, problem + f"; or send raw media: {_describe(RAW_SCHEMA)}; or declare {{}} to take the welcome's schema"

    def _sample(self, sock: zmq.Socket, reader: Any, rid: bytes, dev: DeviceState,
                seq: int, sample: Sample | None, verdict: str | None, nbytes: int) -> None:
        self.metrics.received.inc()
        self._arrivals[dev.device] = time.monotonic()  # last seen, for edge-node status
        if seq in dev.pending:
            self.metrics.duplicates.inc()
            return  # queued or being learned: its ack is coming
        device = dev.device
        if seq in dev.tracker:
            first = dev.recent.get(seq)
            if first is None:
                first = reader.verdict(device, seq)
            if first is None and seq < dev.tracker.next_seq:
                first = DECIDED  # decided, and its verdict row compacted away
            if first is not None:
                self.metrics.duplicates.inc()
                self._send(sock, rid, wire.encode_ack([(seq, first)], self._credit(dev)))
                return
        if self._draining:
            self._error(sock, rid, seq, "shutting_down", "node is stopping; resend after it restarts")
            return
        if seq >= dev.tracker.next_seq + self.nc.max_seq_gap:
            self._error(sock, rid, seq, "seq_gap", f"seq {seq} is {self.nc.max_seq_gap} or more above the first undecided "
                        f"seq {dev.tracker.next_seq} (node.max_seq_gap); number samples 0, 1, 2, ... and resend the missing ones")
            return
        if len(dev.pending) >= self.nc.credit:
            self._error(sock, rid, seq, "no_credit", f"more than {self.nc.credit} samples unacknowledged; wait for acks")
            return
        with self._cond:
            full = len(self._queue) >= self.nc.queue_max or (bool(self._queue) and self._queued_bytes + nbytes > self.nc.queue_max_bytes)
            if not full:
                self._queue.append(_Item(rid, device, seq, sample, verdict, time.monotonic(), nbytes, dev.raw))
                self._queued_bytes += nbytes
                if len(self._queue) == 1 or len(self._queue) >= self.nc.batch_size:
                    # The learner needs waking only to start a batch window or when a batch is full;
                    # otherwise its own window timeout wakes it (one wake-up per sample costs the GIL).
                    self._cond.notify()
        if full:
            self._error(sock, rid, seq, "busy", "ingest queue full; resend later")
            return
        dev.pending.add(seq)
        self._in_flight += 1

    def _send_acks(self, sock: zmq.Socket) -> None:
        by_rid: dict[bytes, list[tuple[int, str]]] = {}
        while self._outbox:
            for rid, seq, verdict in self._outbox.popleft():
                by_rid.setdefault(rid, []).append((seq, verdict))
        for rid, acks in by_rid.items():
            dev = self._devices[rid]  # never freed while it has samples pending
            self._in_flight -= len(acks)
            for seq, verdict in acks:
                dev.pending.discard(seq)
                dev.tracker.add(seq)
                dev.recent[seq] = verdict
            while len(dev.recent) > 4 * self.nc.credit:
                dev.recent.pop(next(iter(dev.recent)))
            credit = self._credit(dev)
            for i in range(0, len(acks), ACKS_PER_MESSAGE):
                self._send(sock, rid, wire.encode_ack(acks[i : i + ACKS_PER_MESSAGE], credit))
            if dev.bye and not dev.pending:
                self._free(rid)
        if by_rid:
            self.metrics.in_flight.set(self._in_flight)

    def _connection_events(self, monitor: zmq.Socket) -> None:
        """Forget the hello done on a connection (fd) that was closed: its fd may come back for another one."""
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            rid = self._by_conn.pop(int(event["value"]), None)
            dev = self._devices.get(rid) if rid is not None else None
            if dev is not None and dev.conn == int(event["value"]):
                dev.contract, dev.conn, dev.key = None, -1, None

    def _connected(self) -> int:
        """Devices with a live, welcomed connection (the ``edge_devices`` gauge, computed when read)."""
        for _ in range(10):  # read from the metrics / observer thread while the IO thread may change the dict
            try:
                return sum(1 for dev in list(self._devices.values()) if dev.contract is not None)
            except RuntimeError:
                continue
        return len(self._devices)

    # ------------------------------------------------------------------ IO thread: bounded state
    def _free(self, rid: bytes) -> None:
        """Drop a device's state (bye, or idle past node.device_idle_s); its ledger rows stay."""
        dev = self._devices.pop(rid)
        if self._by_conn.get(dev.conn) == rid:
            del self._by_conn[dev.conn]
        self._bound.pop(dev.device, None)
        self._forget.append(dev.device)
        log.debug("device state freed", extra={"event": "device_freed", "device": dev.device})

    def _sweep_idle(self, now: float) -> None:
        idle = self.nc.device_idle_s
        for rid in [r for r, d in self._devices.items() if not d.pending and now - d.last_seen > idle]:
            self._free(rid)

    # ------------------------------------------------------------------ learner thread
    def _take_batch(self) -> list[_Item] | None:
        """Block until a micro-batch is due (size reached, window elapsed, or draining); None: stop."""
        nc = self.nc
        window = nc.batch_window_ms / 1000.0
        with self._cond:
            while True:
                if self._queue:
                    age = time.monotonic() - self._queue[0].arrived
                    if len(self._queue) >= nc.batch_size or age >= window or self._draining:
                        n = min(nc.batch_size, len(self._queue))
                        batch = [self._queue.popleft() for _ in range(n)]
                        self._queued_bytes -= sum(it.nbytes for it in batch)
                        return batch
                    self._cond.wait(window - age)
                elif self._draining:
                    return None
                elif self._to_bind:
                    return []  # nothing to learn, but key bindings to persist
                elif self._federation is not None and self._federation.has_pending():
                    return []  # federation: serve a get / put while idle
                else:
                    self._cond.wait(0.1)

    def _learner_loop(self, ctx: zmq.Context, wake_addr: str) -> None:
        """Micro-batch after micro-batch: decide, commit, hand the acks over; then the per-batch chores."""
        wake = ctx.socket(zmq.PUSH)
        wake.connect(wake_addr)
        self._last_checkpoint = time.monotonic()
        try:
            while True:
                batch = self._take_batch()
                if batch is None:
                    break
                if batch:
                    self._decide(batch)
                    wake.send(_WAKE)
                else:
                    self._apply_io_requests()
                    self.store.commit()
                self._after_batch(batch)
            self._apply_io_requests()
            self.store.commit()
            self.checkpoint()
        except BaseException as err:  # a bug, not bad input: stop the node loudly, keep what is committed
            log.exception("learner thread failed", extra={"event": "learner_failed"})
            self._learner_error = err
            self._stop.set()
        finally:
            wake.close(0)
            if self._publisher is not None:
                self._publisher.close()

    def _after_batch(self, batch: list[_Item]) -> None:
        """Between micro-batches (learner thread): federation get/put, publish the model, periodic checkpoint."""
        if self._federation is not None:  # between two micro-batches, never inside one
            self._federation.after_batch(it.sample.label for it in batch if _learned(it))  # type: ignore[union-attr]
        if self._publisher is not None and batch:
            self.observer.on_model(self._publisher.maybe_publish(self.learner.export_model(), self.learner.updates))
        if time.monotonic() - self._last_checkpoint >= self.nc.checkpoint_every_s:
            self.checkpoint()
            self._last_checkpoint = time.monotonic()

    def _apply_io_requests(self) -> None:
        """Key bindings to persist and freed devices to forget, as the IO thread asked (joins the open transaction)."""
        while self._to_bind:
            self.ledger.bind_key(*self._to_bind.popleft())
        while self._forget:
            self._trackers.pop(self._forget.popleft(), None)

    def _tracker(self, device: str) -> SeqTracker:
        """The learner thread's decided seqs of ``device`` (loaded from the ledger on first use)."""
        tracker = self._trackers.get(device)
        if tracker is None:
            tracker = self._trackers[device] = SeqTracker(self.ledger.next_seq(device), self.ledger.decided_above(device))
            if tracker.next_seq == 0 and not tracker.above:
                self._known_devices += 1  # first time this device reaches the ledger (for edge-node status)
        return tracker

    def _decide(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        self._apply_io_requests()
        fresh: list[_Item] = []
        for it in batch:
            if it.seq in self._tracker(it.device):  # decided before a restart: answer, never relearn
                it.verdict = self.ledger.verdict(it.device, it.seq) or DECIDED
                self.metrics.duplicates.inc()
            else:
                fresh.append(it)
        learnable = [it for it in fresh if it.verdict is None]
        for it in learnable:
            problem = validation.check_finite(it.sample.tensors)  # type: ignore[union-attr]
            if problem is not None:
                it.verdict = problem.verdict
            elif it.raw:
                try:  # the same function the device runs with --send features
                    it.sample.tensors = to_features(it.sample.tensors, self.config.features)  # type: ignore[union-attr]
                except (ValueError, RuntimeError) as err:
                    it.verdict = "invalid:features"
                    log.warning("cannot compute features", extra={"event": "bad_raw", "device": it.device, "seq": it.seq, "reason": str(err)})
        self._observe([it for it in learnable if it.verdict is None])
        self._record(fresh)
        self.store.commit()  # acks only after this: an admitted verdict is durable
        self._outbox.append([(it.rid, it.seq, it.verdict) for it in batch])  # type: ignore[misc]
        self.decided_total += len(fresh)
        self._observe_metrics(batch, fresh, time.perf_counter() - started)

    def _observe(self, items: list[_Item]) -> None:
        """``learner.observe`` on the batch; if it raises, on each sample alone, so only a culprit is refused."""
        if not items:
            return
        try:
            verdicts = self.learner.observe([it.sample for it in items])  # type: ignore[misc]
        except Exception:
            log.exception("micro-batch raised in the learner; deciding its samples one by one", extra={"event": "batch_failed"})
            verdicts = []
            for it in items:
                try:
                    verdicts.extend(self.learner.observe([it.sample]))  # type: ignore[list-item]
                except Exception as err:
                    log.warning("sample raised in the learner", extra={"event": "sample_failed", "device": it.device,
                                                                        "seq": it.seq, "error": repr(err)})
                    verdicts.append("invalid:model_error")
        for it, v in zip(items, verdicts):
            it.verdict = v

    def _record(self, fresh: list[_Item]) -> None:
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

    def _observe_metrics(self, batch: list[_Item], fresh: list[_Item], seconds: float) -> None:
        m = self.metrics
        m.update_seconds.observe(seconds)
        m.batch_size.observe(len(batch))
        for verdict, n in Counter(it.verdict for it in fresh).items():
            kind, _, reason = verdict.partition(":")  # type: ignore[union-attr]
            m.decided.labels(kind).inc(n)
            if kind == "invalid":
                m.invalid.labels(reason).inc(n)
        s = self.learner.summary()
        if s.get("prequential_accuracy") is not None:
            m.prequential_accuracy.set(s["prequential_accuracy"])
        if s.get("eval_accuracy") is not None:
            m.eval_accuracy.set(s["eval_accuracy"])
        if "buffer_items" in s:
            m.buffer_items.set(s["buffer_items"])
            m.buffer_bytes.set(s["buffer_bytes"])
        self.observer.on_batch([(it.device, it.verdict) for it in fresh], s, seconds)  # type: ignore[misc]


_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    """``dtype.name``, cached (numpy computes the name anew on every access)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def _learned(it: _Item) -> bool:
    """A labelled training sample the learner decided (federation counts these per class)."""
    return (it.sample is not None and it.sample.label is not None and it.sample.split == "train"
            and it.verdict is not None and not it.verdict.startswith("invalid:"))


def _features_problem(config: Config) -> str | None:
    """Why this node cannot turn raw media into its model's tensors (None when it can)."""
    f, m = config.features, config.model
    if f.audio_dim != m.audio_features:
        key = "features.n_mfcc" if f.audio == "mfcc" else "features.n_mels"
        return f"raw media refused: {key} gives {f.audio_dim} audio features but model.audio_features is {m.audio_features}"
    if f.channels != m.visual_channels:
        return f"raw media refused: features.channels is {f.channels} but model.visual_channels is {m.visual_channels}"
    return None


def _describe(schema: dict[str, TensorSpec]) -> str:
    return ", ".join(f"{name} {spec.dtype} {list(spec.shape)}" for name, spec in schema.items())


def _schema_problem(declared: dict[str, TensorSpec], expected: dict[str, TensorSpec]) -> str | None:
    """Why a device's declared schema cannot feed this node's model (None when it can)."""
    if set(declared) != set(expected):
        return f"schema declares tensors {sorted(declared)} but this node takes {sorted(expected)}"
    for name, spec in expected.items():
        got = declared[name]
        if got.dtype != spec.dtype or len(got.shape) != len(spec.shape):
            return (f"tensor {name!r} declared {got.dtype} {list(got.shape)}; this node takes {spec.dtype} "
                    f"{list(spec.shape)} (-1: any size)")
        for g, e in zip(got.shape, spec.shape):
            if e != -1 and g != -1 and g != e:  # a size the device leaves free is told by the welcome
                return f"tensor {name!r} declared shape {list(got.shape)}; this node takes {list(spec.shape)} (-1: any size)"
    return None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def serve(config: Config) -> int:
    """``edge-node run``: serve until SIGTERM / SIGINT, then drain, checkpoint and exit 0."""
    setup_logging(config.node.log_format)
    node = EdgeNode(config)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    node.run()
    return 0
