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
nothing about losses: it only calls ``observe``, ``summary`` and ``state_dict``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from edge_runtime import wire
from edge_runtime.buffer.sqlite import SqliteStore
from edge_runtime.checkpoint import CheckpointManager
from edge_runtime.config import Config, NodeConfig
from edge_runtime.features import is_raw, to_features
from edge_runtime.metrics import NodeMetrics
from edge_runtime.observe import NodeObserver
from edge_runtime.wire import Sample, TensorSpec

log = logging.getLogger("edge_runtime.node")

ACKS_PER_MESSAGE = 150  # keeps an ack header well inside wire.Limits.max_header_bytes
_WAKE = b"w"


class LearnerLike(Protocol):
    """What the node needs from a learner (``edge_runtime.learner.Learner``, or a no-op one in benchmarks)."""

    def observe(self, samples: Sequence[Sample]) -> list[str]: ...
    def summary(self) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


#: What a device sending ``--send raw`` declares: a mono waveform at ``features.sample_rate`` and RGB frames.
RAW_SCHEMA: dict[str, TensorSpec] = {
    "waveform": TensorSpec("float32", (-1,)),
    "frames": TensorSpec("uint8", (-1, -1, -1, 3)),
}


def node_schema(config: Config) -> dict[str, TensorSpec]:
    """The tensors the node's model takes: audio (T, F) and video (T, C, H, W) float32, T/H/W free."""
    mc = config.model
    return {
        "audio": TensorSpec("float32", (-1, mc.audio_features)),
        "video": TensorSpec("float32", (-1, mc.visual_channels, -1, -1)),
    }


class SeqTracker:
    """Decided sequence numbers of one device: a contiguous prefix ``[0, next_seq)`` plus the set above it."""

    def __init__(self, next_seq: int = 0) -> None:
        self.next_seq = next_seq
        self.above: set[int] = set()

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
    """What the IO thread knows of one routing id."""

    tracker: SeqTracker
    hello: bool = False
    schema: dict[str, TensorSpec] | None = None  # what this device declared: features or raw
    pending: set[int] = field(default_factory=set)  # accepted, not yet acknowledged
    recent: dict[int, str] = field(default_factory=dict)  # last verdicts, to answer resends without SQLite


@dataclass
class _Item:
    """One accepted sample on its way to the learner (``verdict`` set: decided already, e.g. invalid)."""

    rid: bytes
    device: str
    seq: int
    sample: Sample | None
    verdict: str | None
    arrived: float


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
        if learner is None:
            from edge_runtime.learner import Learner  # torch import only when a real learner is needed

            learner = Learner(config, store=self.store)
        self.learner = learner
        self.checkpoints = CheckpointManager(self.state_dir / "checkpoints", keep=nc.checkpoint_keep)
        self.metrics = NodeMetrics()
        self.observer = NodeObserver(self.state_dir, self.metrics, config.model.num_classes, nc.status_every_s, nc.history_every_s)
        self.schema = node_schema(config)
        self.num_classes = config.model.num_classes
        self.limits = wire.Limits(max_message_bytes=nc.max_message_bytes)

        self._restore()
        # Learner-thread view of the ledger: every decided seq per device (the guard against learning
        # a seq twice) and the source of the devices table's next_seq. The IO thread starts its own
        # trackers from next_seq only, as a fast path.
        self._initial_next_seqs = self.store.next_seqs()
        self._ledger = {d: SeqTracker(n) for d, n in self._initial_next_seqs.items()}
        for device, seq in self.store.decided_above_next_seq():
            self._ledger[device].add(seq)
        self._devices: dict[bytes, DeviceState] = {}
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._outbox: deque[list[tuple[bytes, int, str]]] = deque()
        self._stop = threading.Event()
        self._draining = False
        self._learner_error: BaseException | None = None
        self.endpoint: str | None = None
        self.metrics_port: int | None = None
        self.decided_total = 0
        self.metrics.queue_bytes.set_function(self._queued_bytes)  # computed when read (status, scrape), not per sample
        self._arrivals = self.observer.arrivals

    # ------------------------------------------------------------------ restore / checkpoint
    def _restore(self) -> None:
        loaded = self.checkpoints.load_latest()
        buffer = getattr(self.learner, "buffer", None)
        if loaded is not None:
            state, path = loaded
            try:
                self.learner.load_state_dict(state["learner"])
            except Exception as err:
                raise RuntimeError(
                    f"checkpoint {path} does not fit this configuration ({err}); use the configuration it was "
                    f"written with, or move {self.state_dir} aside to start fresh") from err
            log.info("restored checkpoint", extra={"event": "restored", "path": str(path), "buffer_items": len(buffer) if buffer is not None else None})
        elif buffer is not None and len(self.store):
            buffer.restore_from_store()
            log.info("no checkpoint; replay buffer rebuilt from the store", extra={"event": "restored_store", "buffer_items": len(buffer)})

    def checkpoint(self) -> Path:
        """Write a checkpoint of the learner (call from the learner thread, or when it is stopped)."""
        summary = self.learner.summary()
        path = self.checkpoints.save({"learner": self.learner.state_dict(), "node": {"decided": self.decided_total}}, step=int(summary.get("samples_seen", 0)))
        self.metrics.checkpoints.inc()
        self.observer.on_checkpoint(path)
        log.info("checkpoint written", extra={"event": "checkpoint", "path": str(path)})
        return path

    # ------------------------------------------------------------------ socket
    def _make_socket(self, ctx: zmq.Context) -> zmq.Socket:
        nc = self.nc
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
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
            self._auth.configure_curve(domain="*", location=str(nc.curve.allowed_keys_dir))
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
            self.metrics_port = self.metrics.serve(self.nc.metrics_port, self.nc.metrics_host)
        self._publisher = None
        if self.nc.model_bind:
            from edge_runtime.publish import ModelPublisher

            self._publisher = ModelPublisher(ctx, self.nc.model_bind, self.nc.model_every, self.nc.model_resend_s)
        info = {"endpoint": self.endpoint, "metrics_port": self.metrics_port, "pid": os.getpid(),
                "model_endpoint": self._publisher.endpoint if self._publisher else None}
        _atomic_write(self.state_dir / "node.json", json.dumps(info))
        log.info("listening", extra={"event": "listening", **info})
        self.observer.start(info, known_devices=lambda: len(self._ledger))
        reader = self.store.reader()
        worker = threading.Thread(target=self._learner_loop, args=(ctx, wake_addr), name="learner", daemon=True)
        worker.start()
        if ready is not None:
            ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake_rx, zmq.POLLIN)
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
                if sock in events:
                    for _ in range(256):  # bounded burst, then look at acks again
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(sock, reader, frames)
            self._send_acks(sock)
        finally:
            worker.join(timeout=60)
            self.observer.stop()
            reader.close()
            wake_rx.close(0)
            sock.close(linger=1000)
            if getattr(self, "_auth", None) is not None:
                self._auth.stop()
            ctx.term()
            self.metrics.close()
        if self._learner_error is not None:
            raise RuntimeError("the learner thread failed; see the log") from self._learner_error
        summary = {**self.learner.summary(), "decided": self.decided_total, "endpoint": self.endpoint}
        _atomic_write(self.state_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        self.store.close()
        log.info("stopped", extra={"event": "stopped", "decided": self.decided_total})
        return summary

    def _queued_bytes(self) -> int:
        """Tensor bytes of the samples waiting for the learner (a copy of the queue under the lock, summed outside it)."""
        with self._cond:
            items = list(self._queue)
        return sum(it.sample.nbytes for it in items if it.sample is not None)

    # ------------------------------------------------------------------ IO thread
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
        device = rid.decode("utf-8", "replace")
        try:
            schema = dev.schema if dev is not None and dev.schema is not None else self.schema
            msg = wire.decode(body, schema=schema, num_classes=self.num_classes, device=device, limits=self.limits)
        except wire.WireError as err:
            if err.seq is None:
                self._error(sock, rid, None, err.code, err.message)
                return
            if dev is None or not dev.hello:
                self._error(sock, rid, err.seq, "no_hello", "send hello before samples")
                return
            self._sample(sock, reader, rid, device, dev, err.seq, None, err.verdict)
            return
        if isinstance(msg, Sample):
            if dev is None or not dev.hello:
                self._error(sock, rid, msg.seq, "no_hello", "send hello before samples")
                return
            self._sample(sock, reader, rid, device, dev, msg.seq, msg, None)
        elif isinstance(msg, wire.Hello):
            self._hello(sock, rid, device, msg)
        elif isinstance(msg, wire.Ping):
            if dev is not None and dev.hello:
                self._send(sock, rid, wire.encode_ack([], self._credit(dev)))
            else:
                self._error(sock, rid, None, "no_hello", "send hello first")
        elif isinstance(msg, wire.Bye):
            if dev is not None and dev.hello:
                dev.hello = False
                self.metrics.devices.dec()

    def _hello(self, sock: zmq.Socket, rid: bytes, device: str, msg: wire.Hello) -> None:
        if msg.device != device:
            self._error(sock, rid, None, "bad_hello", f"hello names device {msg.device!r} but the socket's routing id is {device!r}; "
                        "set ROUTING_ID to the device id")
            return
        schema = self.schema
        problem = _schema_problem(msg.schema, self.schema)
        if problem and _schema_problem(msg.schema, RAW_SCHEMA) is None:
            schema, problem = RAW_SCHEMA, _features_problem(self.config)  # raw media: the learner thread computes the features
        if problem:
            hint = "" if schema is RAW_SCHEMA else f"; or send raw media: {_describe(RAW_SCHEMA)}"
            self._error(sock, rid, None, "bad_hello", problem + hint)
            return
        dev = self._devices.get(rid)
        if dev is None:
            tracker = SeqTracker(self._initial_next_seqs.get(device, 0))
            dev = self._devices[rid] = DeviceState(tracker)
        if not dev.hello:
            self.metrics.devices.inc()
        dev.hello = True
        dev.schema = schema
        self._send(sock, rid, wire.encode_welcome(self._credit(dev), self.num_classes, schema, dev.tracker.next_seq))
        log.info("device hello", extra={"event": "hello", "device": device, "next_seq": dev.tracker.next_seq})

    def _sample(self, sock: zmq.Socket, reader: Any, rid: bytes, device: str, dev: DeviceState,
                seq: int, sample: Sample | None, verdict: str | None) -> None:
        self.metrics.received.inc()
        self._arrivals[device] = time.monotonic()  # last seen, for edge-node status
        if seq in dev.pending:
            self.metrics.duplicates.inc()
            return  # queued or being learned: its ack is coming
        if seq in dev.tracker:
            first = dev.recent.get(seq)
            if first is None:
                first = reader.verdict(device, seq)
            if first is not None:
                self.metrics.duplicates.inc()
                self._send(sock, rid, wire.encode_ack([(seq, first)], self._credit(dev)))
                return
        if self._draining:
            self._error(sock, rid, seq, "shutting_down", "node is stopping; resend after it restarts")
            return
        if len(dev.pending) >= self.nc.credit:
            self._error(sock, rid, seq, "no_credit", f"more than {self.nc.credit} samples unacknowledged; wait for acks")
            return
        with self._cond:
            if len(self._queue) >= self.nc.queue_max:
                full = True
            else:
                full = False
                self._queue.append(_Item(rid, device, seq, sample, verdict, time.monotonic()))
                if len(self._queue) == 1 or len(self._queue) >= self.nc.batch_size:
                    # The learner needs waking only to start a batch window or when a batch is full;
                    # otherwise its own window timeout wakes it (one wake-up per sample costs the GIL).
                    self._cond.notify()
            depth = len(self._queue)
        if full:
            self._error(sock, rid, seq, "busy", "ingest queue full; resend later")
            return
        dev.pending.add(seq)
        self.metrics.queue_depth.set(depth)
        self.metrics.in_flight.inc()

    def _send_acks(self, sock: zmq.Socket) -> None:
        by_rid: dict[bytes, list[tuple[int, str]]] = {}
        while self._outbox:
            for rid, seq, verdict in self._outbox.popleft():
                by_rid.setdefault(rid, []).append((seq, verdict))
        for rid, acks in by_rid.items():
            dev = self._devices[rid]
            for seq, verdict in acks:
                dev.pending.discard(seq)
                dev.tracker.add(seq)
                dev.recent[seq] = verdict
            while len(dev.recent) > 4 * self.nc.credit:
                dev.recent.pop(next(iter(dev.recent)))
            self.metrics.in_flight.dec(len(acks))
            credit = self._credit(dev)
            for i in range(0, len(acks), ACKS_PER_MESSAGE):
                self._send(sock, rid, wire.encode_ack(acks[i : i + ACKS_PER_MESSAGE], credit))

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
                        self.metrics.queue_depth.set(len(self._queue))
                        return batch
                    self._cond.wait(window - age)
                elif self._draining:
                    return None
                else:
                    self._cond.wait(0.1)

    def _learner_loop(self, ctx: zmq.Context, wake_addr: str) -> None:
        wake = ctx.socket(zmq.PUSH)
        wake.connect(wake_addr)
        last_checkpoint = time.monotonic()
        publisher = self._publisher
        try:
            while True:
                batch = self._take_batch()
                if batch is None:
                    break
                self._decide(batch)
                wake.send(_WAKE)
                if publisher is not None:
                    self.observer.on_model(publisher.maybe_publish(self.learner.model, self.learner.stats.updates))  # type: ignore[attr-defined]
                if time.monotonic() - last_checkpoint >= self.nc.checkpoint_every_s:
                    self.checkpoint()
                    last_checkpoint = time.monotonic()
            self.checkpoint()
        except BaseException as err:  # a bug, not bad input: stop the node loudly, keep what is committed
            log.exception("learner thread failed", extra={"event": "learner_failed"})
            self._learner_error = err
            self._stop.set()
        finally:
            wake.close(0)
            if publisher is not None:
                publisher.close()

    def _decide(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        fresh: list[_Item] = []
        for it in batch:
            tracker = self._ledger.get(it.device)
            if tracker is not None and it.seq in tracker:  # decided before a restart: answer, never relearn
                it.verdict = self.store.verdict(it.device, it.seq) or "skipped"
                self.metrics.duplicates.inc()
            else:
                fresh.append(it)
        learnable = [it for it in fresh if it.verdict is None]
        for it in learnable:
            if it.sample is not None and is_raw(it.sample.tensors):
                try:  # the same function the device runs with --send features
                    it.sample.tensors = to_features(it.sample.tensors, self.config.features)
                except (ValueError, RuntimeError) as err:
                    it.verdict = "invalid:features"
                    log.warning("cannot compute features", extra={"event": "bad_raw", "device": it.device, "seq": it.seq, "reason": str(err)})
        learnable = [it for it in learnable if it.verdict is None]
        if learnable:
            verdicts = self.learner.observe([it.sample for it in learnable])  # type: ignore[misc]
            for it, v in zip(learnable, verdicts):
                it.verdict = v
        self.store.record_verdicts([(it.device, it.seq, it.verdict) for it in fresh])
        touched = set()
        for it in fresh:
            tracker = self._ledger.setdefault(it.device, SeqTracker())
            tracker.add(it.seq)
            touched.add(it.device)
        for device in touched:
            self.store.set_next_seq(device, self._ledger[device].next_seq)
        self.store.commit()  # acks only after this: an admitted verdict is durable
        self._outbox.append([(it.rid, it.seq, it.verdict) for it in batch])  # type: ignore[misc]
        self.decided_total += len(fresh)
        m = self.metrics
        elapsed = time.perf_counter() - started
        m.update_seconds.observe(elapsed)
        m.batch_size.observe(len(batch))
        for it in fresh:
            m.decided.labels(it.verdict.split(":", 1)[0]).inc()  # type: ignore[union-attr]
            if it.verdict.startswith("invalid:"):  # type: ignore[union-attr]
                m.invalid.labels(it.verdict.split(":", 1)[1]).inc()  # type: ignore[union-attr]
        s = self.learner.summary()
        if s.get("prequential_accuracy") is not None:
            m.prequential_accuracy.set(s["prequential_accuracy"])
        if s.get("eval_accuracy") is not None:
            m.eval_accuracy.set(s["eval_accuracy"])
        if "buffer_items" in s:
            m.buffer_items.set(s["buffer_items"])
            m.buffer_bytes.set(s["buffer_bytes"])
        self.observer.on_batch([(it.device, it.verdict) for it in fresh], s, elapsed)  # type: ignore[misc]


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
            if e != -1 and g != e:
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
