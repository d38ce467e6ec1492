"""A simulated device: one DEALER streaming samples to an edge node (wire protocol v1).

Flow control follows the ZeroMQ guide's credit pattern: at most ``min(max_in_flight, credit)``
samples are unacknowledged, where ``credit`` is the window granted in the welcome (the node's
per-device credit; acks report what is left of it). An unacknowledged sample is resent
with the same seq after ``resend_timeout_s``; the node answers a decided seq with its first
verdict, so resends are safe. When the node restarts, the socket reconnects by itself, the new
node answers ``no_hello``, and the device says hello again and resumes from ``next_seq``.
Only unacknowledged samples are kept, so memory is bounded by the window.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import zmq

from edge_runtime import wire
from edge_runtime.wire import Sample, TensorSpec

RETRYABLE = frozenset({"no_hello", "no_credit", "busy", "shutting_down"})


@dataclass
class ClientConfig:
    """Settings of one simulated device."""

    endpoint: str
    device_id: str
    max_in_flight: int = 64
    rate: float | None = None  # samples/s; None: as fast as credit allows
    jitter: float = 0.0  # +- fraction of the inter-sample gap
    resend_timeout_s: float = 2.0
    hello_timeout_s: float = 2.0
    ping_after_s: float = 1.0
    heartbeat_ivl_ms: int = 1000
    curve_public: bytes | None = None
    curve_secret: bytes | None = None
    curve_server: bytes | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.device_id.encode()) <= 64:
            raise ValueError(f"device_id must be 1..64 UTF-8 bytes (got {self.device_id!r})")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1 (got {self.max_in_flight})")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be > 0 samples/s (got {self.rate})")


@dataclass
class DeviceSummary:
    """What one device sent and what the node decided (JSON-serialisable with ``asdict``)."""

    device: str
    sent: int = 0
    resent: int = 0
    acked: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    skipped_resume: int = 0
    ack_conflicts: int = 0
    hellos: int = 0
    seconds: float = 0.0
    complete: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeviceClient:
    """Streams ``samples`` (numbered 0, 1, 2, ... here) to the node; :meth:`run` returns a summary."""

    def __init__(self, cfg: ClientConfig, samples: Iterable[Sample], schema: Mapping[str, TensorSpec],
                 ctx: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self.schema = dict(schema)
        self._samples: Iterator[Sample] = iter(samples)
        self._ctx = ctx or zmq.Context.instance()
        self.summary = DeviceSummary(cfg.device_id)
        self.verdicts: dict[int, str] = {}  # final outcome per seq
        self._lock = threading.Lock()
        self._unacked: dict[int, tuple[Sample, float]] = {}  # seq -> (sample, last sent at)
        self._next = 0  # next seq to take from the iterator
        self._exhausted = False
        self._credit = 0  # the window the node granted in its welcome (its per-device credit)
        self._welcomed = False
        self._rng = random.Random(cfg.device_id)

    # ------------------------------------------------------------------ socket
    def _socket(self) -> zmq.Socket:
        cfg = self.cfg
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, cfg.device_id.encode())
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.LINGER, 0)
        if cfg.heartbeat_ivl_ms:
            sock.setsockopt(zmq.HEARTBEAT_IVL, cfg.heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5 * cfg.heartbeat_ivl_ms)
        if cfg.curve_server is not None:
            sock.curve_publickey, sock.curve_secretkey = cfg.curve_public, cfg.curve_secret
            sock.curve_serverkey = cfg.curve_server
        sock.connect(cfg.endpoint)
        return sock

    # ------------------------------------------------------------------ helpers
    def _send_sample(self, sock: zmq.Socket, sample: Sample, resend: bool) -> None:
        try:
            sock.send_multipart(wire.encode_sample(sample), zmq.NOBLOCK, copy=False)
        except zmq.Again:  # not connected yet (IMMEDIATE): it stays unacked and is resent later
            pass
        self._unacked[sample.seq] = (sample, time.monotonic())
        with self._lock:
            if resend:
                self.summary.resent += 1
            else:
                self.summary.sent += 1

    def _take(self) -> Sample | None:
        for sample in self._samples:
            seq = self._next
            self._next += 1
            sample.device, sample.seq = self.cfg.device_id, seq
            return sample
        self._exhausted = True
        return None

    def _decide(self, seq: int, outcome: str) -> None:
        first = self.verdicts.get(seq)
        with self._lock:
            if first is not None:
                if first != outcome:
                    self.summary.ack_conflicts += 1
                return
            self.verdicts[seq] = outcome
            self._unacked.pop(seq, None)
            if not outcome.startswith("error:"):
                self.summary.acked += 1
            self.summary.verdicts[outcome] = self.summary.verdicts.get(outcome, 0) + 1

    def _on_message(self, sock: zmq.Socket, frames: list) -> None:
        try:
            msg = wire.decode(frames, direction="to_device")
        except wire.WireError as err:
            self._count_error(f"bad_reply_{err.code}")
            return
        if isinstance(msg, wire.Welcome):
            self._welcomed = True
            self._credit = msg.credit
            while self._next < msg.next_seq and not self._exhausted:  # decided before: resume after them
                if self._take() is not None:
                    with self._lock:
                        self.summary.skipped_resume += 1
            now = time.monotonic()
            for seq, (sample, _) in list(self._unacked.items()):  # resend at once; decided ones get re-acked
                self._unacked[seq] = (sample, now - self.cfg.resend_timeout_s)
        elif isinstance(msg, wire.Ack):
            for seq, status in msg.acks:
                self._decide(seq, status)
        elif isinstance(msg, wire.Error):
            self._count_error(msg.code)
            if msg.code == "no_hello":
                self._welcomed = False
            elif msg.seq is not None and msg.code not in RETRYABLE and msg.seq in self._unacked:
                self._decide(msg.seq, f"error:{msg.code}")

    def _count_error(self, code: str) -> None:
        with self._lock:
            self.summary.errors[code] = self.summary.errors.get(code, 0) + 1

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event | None = None, deadline: float | None = None) -> DeviceSummary:
        """Stream until every sample is decided, ``stop`` is set, or ``deadline`` (monotonic) passes."""
        cfg = self.cfg
        sock = self._socket()
        started = time.monotonic()
        last_hello = -1e9
        last_traffic = time.monotonic()
        gap = 1.0 / cfg.rate if cfg.rate else 0.0
        next_send = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if (stop is not None and stop.is_set()) or (deadline is not None and now >= deadline):
                    break
                if self._exhausted and not self._unacked:
                    break
                if not self._welcomed and now - last_hello >= cfg.hello_timeout_s:
                    sock.send_multipart(wire.encode_hello(cfg.device_id, self.schema))
                    last_hello = now
                    with self._lock:
                        self.summary.hellos += 1
                if self._welcomed:
                    window = min(cfg.max_in_flight, self._credit)
                    for seq, (sample, at) in sorted(self._unacked.items()):
                        if now - at >= cfg.resend_timeout_s:
                            self._send_sample(sock, sample, resend=True)
                    while len(self._unacked) < window and not self._exhausted and time.monotonic() >= next_send:
                        sample = self._take()
                        if sample is None:
                            break
                        self._send_sample(sock, sample, resend=False)
                        if gap:
                            next_send += gap * (1 + self._rng.uniform(-cfg.jitter, cfg.jitter))
                            next_send = max(next_send, time.monotonic() - gap)
                    if now - last_traffic >= cfg.ping_after_s:
                        sock.send_multipart(wire.encode_ping())
                        last_traffic = now
                wait_ms = 50 if not gap else max(1, min(50, int((next_send - time.monotonic()) * 1000)))
                if sock.poll(wait_ms):
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_message(sock, frames)
                        last_traffic = time.monotonic()
            if self._welcomed:
                sock.send_multipart(wire.encode_bye(), zmq.NOBLOCK)
        finally:
            sock.close(linger=200)
        with self._lock:
            self.summary.seconds = round(time.monotonic() - started, 3)
            self.summary.complete = self._exhausted and not self._unacked
        return self.summary
