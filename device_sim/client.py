"""A simulated device: one DEALER streaming samples to an edge node (wire protocol v1).

Flow control follows the ZeroMQ guide's credit pattern: at most ``min(max_in_flight, credit)``
samples are unacknowledged, where ``credit`` is the window granted in the welcome (the node's
per-device credit; acks report what is left of it). An unacknowledged sample is resent
with the same seq after ``resend_timeout_s``; the node answers a decided seq with its first
verdict, so resends are safe. When the node restarts, the socket reconnects by itself, the new
node answers ``no_hello``, and the device says hello again and resumes from ``next_seq``.
Only unacknowledged samples are kept, so memory is bounded by the window.

Frames follow the node: the node's configuration decides its one frame size, so a device declares
its video's height and width as ``-1`` (any) and resizes its frames (bilinear) to the size the
welcome's schema names, when they differ (a synthetic data set's 16 x 16 frames become a default
node's 32 x 32).

Stopping by time (a ``deadline``) stops *sending* new samples at the deadline, then keeps
receiving (and resending) until every sample already sent has its verdict, for at most
``drain_timeout_s``; what is still unanswered after that is counted in ``DeviceSummary.unanswered``.
So ``sent == acked + unanswered + <error verdicts>`` always holds in a summary.

One :class:`DeviceClient` is a small state machine (:meth:`DeviceClient.open`, ``step``,
``on_readable``, ``finished``, ``close``); :meth:`DeviceClient.run` drives one of them, and
:func:`run_many` drives many on one ZeroMQ poller in the calling thread (1,000 devices in one
process need no 1,000 threads).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import zmq

from edge_runtime import wire
from edge_runtime.core.sample import Sample
from edge_runtime.wire import TensorSpec

RETRYABLE = frozenset({"no_hello", "no_credit", "busy", "shutting_down"})


def free_frame_axes(schema: Mapping[str, TensorSpec]) -> dict[str, TensorSpec]:
    """``schema`` with the height and width of ``video`` (T, C, H, W) left to the node (``-1``)."""
    out = dict(schema)
    video = out.get("video")
    if video is not None and len(video.shape) == 4:
        out["video"] = TensorSpec(video.dtype, (*video.shape[:2], -1, -1))
    return out


def welcome_frame_size(schema: Mapping[str, TensorSpec]) -> tuple[int, int] | None:
    """The frame size a welcome's schema fixes for ``video`` (None: any)."""
    video = schema.get("video")
    if video is None or len(video.shape) != 4 or min(video.shape[2:]) < 1:
        return None
    return int(video.shape[2]), int(video.shape[3])


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of a bilinear resize along one axis (half-pixel centres)."""
    x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (x - lo).astype(np.float32)


def resize_frames(video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(T, C, h, w) frames resized to (T, C, H, W), bilinear, same dtype."""
    lo, hi, w = _axis_weights(video.shape[2], size[0])
    v = video.astype(np.float32, copy=False)
    v = v[:, :, lo, :] * (1 - w)[:, None] + v[:, :, hi, :] * w[:, None]
    lo, hi, w = _axis_weights(video.shape[3], size[1])
    v = v[..., lo] * (1 - w) + v[..., hi] * w
    return np.ascontiguousarray(v.astype(video.dtype, copy=False))


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
    drain_timeout_s: float = 30.0  # after a deadline: wait this long at most for in-flight verdicts
    record_latency: bool = False  # keep send-to-verdict seconds per sample in DeviceClient.latencies
    start_delay_s: float = 0.0  # first sample not before this long after open() (staggers a fleet's start)
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
        if self.drain_timeout_s < 0:
            raise ValueError(f"drain_timeout_s must be >= 0 (got {self.drain_timeout_s})")


@dataclass
class DeviceSummary:
    """What one device sent and what the node decided (JSON-serialisable with ``asdict``)."""

    device: str
    sent: int = 0
    resent: int = 0
    acked: int = 0
    unanswered: int = 0  # sent, but no verdict when the device stopped (deadline + drain timeout, or stop)
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
        self.schema = free_frame_axes(schema)
        self.frame_size: tuple[int, int] | None = None  # the node's, from its welcome
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
        self._first_sent: dict[int, float] = {}  # seq -> first send time (for latencies)
        self.latencies: list[float] = []  # send-to-verdict seconds per sample (cfg.record_latency)
        self._resend_check_at = float("inf")  # no unacked sample is due for a resend before this time
        self.sock: zmq.Socket | None = None
        self._deadline: float | None = None
        self._started = 0.0
        self._last_hello = -1e9
        self._last_traffic = 0.0
        self._gap = 1.0 / cfg.rate if cfg.rate else 0.0
        self._next_send = 0.0

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
        video = sample.tensors.get("video")
        if self.frame_size is not None and video is not None and video.ndim == 4 and tuple(video.shape[2:]) != self.frame_size:
            sample = replace(sample, tensors={**sample.tensors, "video": resize_frames(video, self.frame_size)})
        try:
            sock.send_multipart(wire.encode_sample(sample), zmq.NOBLOCK, copy=False)
        except zmq.Again:  # not connected yet (IMMEDIATE): it stays unacked and is resent later
            pass
        now = time.monotonic()
        self._unacked[sample.seq] = (sample, now)
        self._resend_check_at = min(self._resend_check_at, now + self.cfg.resend_timeout_s)
        if not resend and self.cfg.record_latency:
            self._first_sent[sample.seq] = now
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
            sent_at = self._first_sent.pop(seq, None)
            if sent_at is not None:
                self.latencies.append(time.monotonic() - sent_at)
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
            self.frame_size = welcome_frame_size(msg.schema)
            while self._next < msg.next_seq and not self._exhausted:  # decided before: resume after them
                if self._take() is not None:
                    with self._lock:
                        self.summary.skipped_resume += 1
            now = time.monotonic()
            for seq, (sample, _) in list(self._unacked.items()):  # resend at once; decided ones get re-acked
                self._unacked[seq] = (sample, now - self.cfg.resend_timeout_s)
            self._resend_check_at = now
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

    # ------------------------------------------------------------------ state machine
    def open(self, deadline: float | None = None) -> zmq.Socket:
        """Connect; ``deadline`` (monotonic) is when to stop sending new samples and start draining."""
        self.sock = self._socket()
        self._deadline = deadline
        self._started = self._last_traffic = time.monotonic()
        self._next_send = self._started + self.cfg.start_delay_s
        return self.sock

    def _sending(self, now: float) -> bool:
        return self._deadline is None or now < self._deadline

    def finished(self, now: float) -> bool:
        """Every sample decided; or past the deadline with nothing in flight, or the drain timeout over."""
        if self._exhausted and not self._unacked:
            return True
        if self._sending(now):
            return False
        return not self._unacked or now >= self._deadline + self.cfg.drain_timeout_s  # type: ignore[operator]

    def step(self, now: float) -> None:
        """Say hello when due, resend what timed out, send new samples the window and rate allow, ping when idle."""
        cfg, sock = self.cfg, self.sock
        assert sock is not None, "open() first"
        if not self._welcomed and now - self._last_hello >= cfg.hello_timeout_s:
            sock.send_multipart(wire.encode_hello(cfg.device_id, self.schema))
            self._last_hello = now
            with self._lock:
                self.summary.hellos += 1
        if not self._welcomed:
            return
        if now >= self._resend_check_at:
            self._resend_check_at = float("inf")
            for seq, (sample, at) in sorted(self._unacked.items()):
                if now - at >= cfg.resend_timeout_s:
                    self._send_sample(sock, sample, resend=True)
                else:
                    self._resend_check_at = min(self._resend_check_at, at + cfg.resend_timeout_s)
        if self._sending(now):
            window = min(cfg.max_in_flight, self._credit)
            gap = self._gap
            while len(self._unacked) < window and not self._exhausted and time.monotonic() >= self._next_send:
                sample = self._take()
                if sample is None:
                    break
                self._send_sample(sock, sample, resend=False)
                if gap:
                    self._next_send += gap * (1 + self._rng.uniform(-cfg.jitter, cfg.jitter))
                    self._next_send = max(self._next_send, time.monotonic() - gap)
        if now - self._last_traffic >= cfg.ping_after_s:
            sock.send_multipart(wire.encode_ping())
            self._last_traffic = now

    def wait_s(self, now: float) -> float:
        """How long this device may sleep before :meth:`step` has something to do (at most 50 ms)."""
        if self._gap and self._sending(now):
            return max(0.001, min(0.05, self._next_send - now))
        return 0.05

    def on_readable(self) -> None:
        """Read and handle every message waiting on the socket."""
        sock = self.sock
        assert sock is not None
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_message(sock, frames)
            self._last_traffic = time.monotonic()

    def close(self) -> DeviceSummary:
        """Say bye (when welcomed), close the socket and return the final summary."""
        sock = self.sock
        if sock is not None:
            try:
                if self._welcomed:
                    sock.send_multipart(wire.encode_bye(), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            sock.close(linger=200)
            self.sock = None
        with self._lock:
            self.summary.seconds = round(time.monotonic() - self._started, 3)
            self.summary.complete = self._exhausted and not self._unacked
            self.summary.unanswered = len(self._unacked)
        return self.summary

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event | None = None, deadline: float | None = None) -> DeviceSummary:
        """Stream until every sample is decided or ``stop`` is set; at ``deadline`` (monotonic) stop sending
        and drain in-flight verdicts for at most ``drain_timeout_s``."""
        sock = self.open(deadline)
        try:
            while True:
                now = time.monotonic()
                if (stop is not None and stop.is_set()) or self.finished(now):
                    break
                self.step(now)
                if sock.poll(max(1, int(self.wait_s(time.monotonic()) * 1000))):
                    self.on_readable()
        finally:
            summary = self.close()
        return summary


def run_many(clients: list[DeviceClient], stop: threading.Event | None = None, deadline: float | None = None,
             sweep_s: float = 0.05) -> list[DeviceSummary]:
    """Run many devices on one poller in this thread; summaries in the order of ``clients``.

    A device with a message is stepped at once (its window refills as soon as acks arrive); every
    ``sweep_s`` all devices are stepped for hellos, resends, rate-limited sends and pings.
    """
    poller = zmq.Poller()
    by_sock: dict[zmq.Socket, DeviceClient] = {}
    results: dict[int, DeviceSummary] = {}
    try:
        for c in clients:
            sock = c.open(deadline)
            poller.register(sock, zmq.POLLIN)
            by_sock[sock] = c
        active = {id(c): c for c in clients}
        next_sweep = 0.0

        def finish(c: DeviceClient) -> None:
            poller.unregister(c.sock)
            del by_sock[c.sock]  # type: ignore[arg-type]
            del active[id(c)]
            results[id(c)] = c.close()

        while active and not (stop is not None and stop.is_set()):
            now = time.monotonic()
            if now >= next_sweep:  # rate-limited sends keep their average rate, in steps of sweep_s
                for c in list(active.values()):
                    if c.finished(now):
                        finish(c)
                    else:
                        c.step(now)
                next_sweep = time.monotonic() + sweep_s
            for sock, _ in poller.poll(max(1, int((next_sweep - time.monotonic()) * 1000))):
                c = by_sock[sock]
                c.on_readable()
                now = time.monotonic()
                if c.finished(now):
                    finish(c)
                else:
                    c.step(now)
    finally:
        for c in clients:
            if id(c) not in results:
                results[id(c)] = c.close()
    return [results[id(c)] for c in clients]
