"""A simulated device: one DEALER streaming samples to an edge node (wire protocol v1).

Flow control follows the ZeroMQ guide's credit pattern: at most ``min(max_in_flight, credit)``
samples are unacknowledged, where ``credit`` is the window granted in the welcome (the node's
per-device credit; acks report what is left of it). An unacknowledged sample is resent with the
same seq after the retransmission timeout (RTO), which follows the measured send-to-verdict time as
TCP's does (RFC 6298, :class:`device_sim.rto.RtoEstimator`): ``resend_timeout_s`` is only the RTO
before the first measurement; resent samples give no measurement (Karn's rule); each timeout doubles
the RTO. ``busy`` / ``no_credit`` answers (the sample was not accepted) hold this device's sending for
a backoff that doubles while they repeat. The node answers a decided seq with its first verdict, so
resends are safe. When the node restarts, the socket reconnects by itself, the new
node answers ``no_hello``, and the device says hello again and resumes from ``next_seq``.
Only unacknowledged samples are kept, so memory is bounded by the window.

The schema a device declares in its hello names its samples' tensors (the node's modalities, e.g.
``audio`` + ``video``, or ``accel`` + ``gyro``): the one given, or, without one, read from its first
sample (:func:`schema_of`). Frames follow the node: the node's configuration decides its one frame
size, so a device declares the height and width of every frames tensor (a rank-4 float tensor
(T, C, H, W)) as ``-1`` (any) and resizes each (bilinear) to the size the welcome's schema names for it,
when they differ (a synthetic data set's 16 x 16 frames become a default node's 32 x 32).

Stopping by time (a ``deadline``) stops *sending* new samples at the deadline, then keeps
receiving (and resending) until every sample already sent has its verdict, for at most
``drain_timeout_s``; what is still unanswered after that is counted in ``DeviceSummary.unanswered``.
So ``sent == acked + unanswered + <error verdicts>`` always holds in a summary.

A device that hears nothing from the node within ``hello_give_up_s`` of opening (no node there, a
CURVE key the node refuses; a peer that completed the ZeroMQ handshake is given at least
``drain_timeout_s``, since a busy node answers late), or whose node stays silent for ``drain_timeout_s`` mid-run, gives up
and says why in :attr:`DeviceClient.failure` (connection events come from a ZeroMQ socket monitor).

One :class:`DeviceClient` is a small state machine (:meth:`DeviceClient.open`, ``step``,
``on_readable``, ``finished``, ``close``); :meth:`DeviceClient.run` drives one of them, and
:func:`run_many` drives many on one ZeroMQ poller in the calling thread (1,000 devices in one
process need no 1,000 threads).
"""

from __future__ import annotations

import itertools
import logging
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

from device_sim.rto import RtoEstimator

log = logging.getLogger("device_sim.client")

RETRYABLE = frozenset({"no_hello", "no_credit", "busy", "shutting_down"})
NOT_ACCEPTED = frozenset({"no_credit", "busy"})  # the node is full: back off before sending again
FATAL_HELLO = frozenset({"bad_hello", "bad_routing_id", "id_bound", "key_revoked", "too_many_ids"})  # retrying cannot help
SILENT_AFTER_S = 3.0  # a welcomed device whose node says nothing this long is "waiting for the node"
MONITOR_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
                  | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                  | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def _is_frames(spec: TensorSpec) -> bool:
    """A frames tensor: (T, C, H, W) of floats (features; raw uint8 frames are (T, H, W, 3) and any size)."""
    try:
        return len(spec.shape) == 4 and np.dtype(spec.dtype).kind == "f"
    except TypeError:  # a dtype numpy does not know is no frames tensor
        return False


def schema_of(sample: Sample) -> dict[str, TensorSpec]:
    """The schema a device declares for samples like ``sample``: each tensor's dtype and shape, its first
    (time) axis free (``-1``) when it has more than one axis (a 1-D tensor is a fixed-length vector, but a
    raw waveform has any length)."""
    from edge_runtime.core.features import RAW_AUDIO  # the raw media's one 1-D tensor of any length

    out: dict[str, TensorSpec] = {}
    for name, t in sample.tensors.items():
        a = np.asarray(t)
        shape = tuple(int(d) for d in a.shape)
        if a.ndim >= 2 or name == RAW_AUDIO:
            shape = (-1, *shape[1:])
        out[name] = TensorSpec(a.dtype.name, shape)
    return free_frame_axes(out)


def free_frame_axes(schema: Mapping[str, TensorSpec]) -> dict[str, TensorSpec]:
    """``schema`` with the height and width of every frames tensor (T, C, H, W) left to the node (``-1``)."""
    return {name: TensorSpec(spec.dtype, (*spec.shape[:2], -1, -1)) if _is_frames(spec) else spec
            for name, spec in schema.items()}


def welcome_frame_sizes(schema: Mapping[str, TensorSpec]) -> dict[str, tuple[int, int]]:
    """``name -> (H, W)`` for each frames tensor whose size a welcome's schema fixes."""
    return {name: (int(spec.shape[2]), int(spec.shape[3])) for name, spec in schema.items()
            if _is_frames(spec) and min(spec.shape[2:]) >= 1}


def welcome_frame_size(schema: Mapping[str, TensorSpec]) -> tuple[int, int] | None:
    """The frame size a welcome's schema fixes (the node has one for all its frames tensors; None: any, or none)."""
    sizes = welcome_frame_sizes(schema)
    return next(iter(sizes.values()), None)


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
    resend_timeout_s: float = 2.0  # the initial RTO, until the first send-to-verdict measurement
    rto_min_s: float = 1.0
    rto_max_s: float = 60.0
    busy_backoff_s: float = 0.25  # first hold after busy / no_credit; doubles while they repeat (at most the RTO)
    hello_timeout_s: float = 2.0  # hello RE-send interval until welcomed
    hello_give_up_s: float | None = None  # give up when the node says nothing at all this long after open(); None: never
    monitor: bool = True  # watch connection and CURVE handshake events (one inproc socket more per device)
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
        if self.resend_timeout_s <= 0:
            raise ValueError(f"resend timeout must be > 0 s (got {self.resend_timeout_s})")
        if self.hello_give_up_s is not None and self.hello_give_up_s <= 0:
            raise ValueError(f"hello timeout must be > 0 s (got {self.hello_give_up_s})")


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
    timeouts_pending: int = 0  # resend timeouts not acted on: the node's credit showed it held every unacked sample
    rto_s: float = 0.0  # the retransmission timeout at the end
    srtt_s: float | None = None  # smoothed send-to-verdict seconds (None: never measured)
    failure: str | None = None  # why this device gave up (no node, refused key, node gone), else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _InFlight:
    """An unacknowledged sample: when it was first and last sent, and whether it was sent twice (Karn)."""

    __slots__ = ("sample", "first_sent", "last_sent", "timer_at", "resent", "retry_at")

    def __init__(self, sample: Sample, now: float) -> None:
        self.sample = sample
        self.first_sent = self.last_sent = self.timer_at = now  # timer_at: its resend timer (re)started
        self.resent = False
        self.retry_at: float | None = None  # resend at this time whatever the RTO (welcome, busy)


class DeviceClient:
    """Streams ``samples`` (numbered 0, 1, 2, ... here) to the node; :meth:`run` returns a summary."""

    def __init__(self, cfg: ClientConfig, samples: Iterable[Sample], schema: Mapping[str, TensorSpec] | None = None,
                 ctx: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self._samples: Iterator[Sample] = iter(samples)
        if schema is None:  # declared from the samples' own tensors (the first sample is put back)
            first = next(self._samples, None)
            schema = schema_of(first) if first is not None else {}
            if first is not None:
                self._samples = itertools.chain([first], self._samples)
        self.schema = free_frame_axes(schema)
        self.frame_size: tuple[int, int] | None = None  # the node's, from its welcome
        self.frame_sizes: dict[str, tuple[int, int]] = {}  # per frames tensor: the size the welcome fixes
        self._ctx = ctx or zmq.Context.instance()
        self.summary = DeviceSummary(cfg.device_id)
        self.verdicts: dict[int, str] = {}  # final outcome per seq
        self._lock = threading.Lock()
        self._unacked: dict[int, _InFlight] = {}  # seq -> the sample and when it was sent
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
        self.rto = RtoEstimator(cfg.resend_timeout_s, min(cfg.rto_min_s, cfg.resend_timeout_s), cfg.rto_max_s)
        self._hold_until = 0.0  # after busy / no_credit: send nothing before this time
        self._node_credit = 0  # the node's per-device credit, as its welcomes tell (the largest seen)
        self._node_pending: int | None = None  # this device's samples pending at the node, from the last ack's credit
        self._pending_at = -1.0  # when the node_pending reading arrived
        self._last_send_at = 0.0  # when a sample was last sent
        self._probe_at = -1.0  # when a ping last asked for a fresh credit reading before resending
        self._busy_backoff = cfg.busy_backoff_s
        self.monitor: zmq.Socket | None = None
        self.failure: str | None = None  # why this device gave up; finished() once set
        self._last_rx: float | None = None  # when the node last said anything (None: never)
        self._ever_welcomed = False
        self._handshake_ok = False  # ZMTP (and CURVE) handshake done on the current connection
        self._connected_once = False  # a TCP connection was ever made
        self._handshake_failed: str | None = None  # "protocol" when the last handshake failed that way

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
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)  # reconnect attempts back off 0.1 s -> 2 s while the node is away
        if cfg.curve_server is not None:
            sock.curve_publickey, sock.curve_secretkey = cfg.curve_public, cfg.curve_secret
            sock.curve_serverkey = cfg.curve_server
        if cfg.monitor:
            self.monitor = sock.get_monitor_socket(MONITOR_EVENTS)
        sock.connect(cfg.endpoint)
        return sock

    def on_monitor(self) -> None:
        """Read the socket monitor's events: connected, handshake done or refused, disconnected."""
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor is not None:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)["event"]
            except zmq.Again:
                return
            log.debug("%s: socket event %s", self.cfg.device_id, zmq.Event(event).name)
            if event == zmq.EVENT_CONNECTED:
                self._connected_once = True
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._handshake_ok, self._handshake_failed = True, None
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._fail(f"the node at {self.cfg.endpoint} refused this device's CURVE key (add its public key "
                           "to the node's node.curve.allowed_keys_dir, e.g. with `edge-node keys DIR --device NAME`)")
            elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self._handshake_failed = "protocol"
            elif event == zmq.EVENT_DISCONNECTED:
                self._handshake_ok = False

    def _fail(self, why: str) -> None:
        if self.failure is None:
            log.debug("%s: giving up: %s", self.cfg.device_id, why)
            self.failure = why
            with self._lock:
                self.summary.failure = why

    def _hello_bound(self) -> float:
        """How long to wait for a first answer: the hello timeout, or, once a ZeroMQ peer completed the
        handshake (a node is there, perhaps busy or still holding this id's previous connection), at least
        the drain timeout, so that a loaded node is not taken for a missing one."""
        cfg = self.cfg
        assert cfg.hello_give_up_s is not None
        return max(cfg.hello_give_up_s, cfg.drain_timeout_s) if self._handshake_ok else cfg.hello_give_up_s

    def _hello_failure(self) -> str:
        """Why no node answered within the hello timeout, as far as the connection events tell."""
        cfg = self.cfg
        wait = f"within {self._hello_bound():g} s"
        if self._handshake_failed == "protocol":
            mode = "this device uses CURVE (--curve-dir)" if cfg.curve_server else "this device does not use CURVE"
            return (f"the ZeroMQ handshake with {cfg.endpoint} failed: {mode}; does the node agree "
                    "(node.curve.enabled)? is it an edge node at all?")
        if self._handshake_ok:
            return (f"something at {cfg.endpoint} accepted the connection but never answered hello {wait} "
                    f"(another program on that port? another device connected with the id {cfg.device_id!r}?)")
        if self._connected_once:
            return (f"the connection to {cfg.endpoint} opened but the ZeroMQ handshake never finished {wait} "
                    "(not a ZeroMQ edge node on that port? CURVE on the node but a wrong server key here?)")
        return (f"no edge node answered at {cfg.endpoint} {wait} "
                "(is `edge-node run` started there? is the port right?)")

    def silent_for(self, now: float) -> float:
        """Seconds the node has said nothing to this device after having welcomed it (0 while it talks)."""
        if not self._ever_welcomed or self._last_rx is None or self.failure is not None or self.sock is None:
            return 0.0  # never welcomed, given up, or closed
        return now - self._last_rx

    # ------------------------------------------------------------------ helpers
    def _send_sample(self, sock: zmq.Socket, sample: Sample, resend: bool) -> None:
        resized = {}
        for name, size in self.frame_sizes.items():
            frames = sample.tensors.get(name)
            if frames is not None and frames.ndim == 4 and tuple(frames.shape[2:]) != size:
                resized[name] = resize_frames(frames, size)
        if resized:
            sample = replace(sample, tensors={**sample.tensors, **resized})
        try:
            sock.send_multipart(wire.encode_sample(sample), zmq.NOBLOCK, copy=False)
        except zmq.Again:  # not connected yet (IMMEDIATE): it stays unacked and is resent later
            pass
        now = time.monotonic()
        entry = self._unacked.get(sample.seq)
        if entry is None:
            self._unacked[sample.seq] = _InFlight(sample, now)
        else:
            entry.last_sent = entry.timer_at = now
            entry.resent, entry.retry_at = True, None
        self._resend_check_at = min(self._resend_check_at, now + self.rto.get())
        self._last_send_at = now
        if not resend and self.cfg.record_latency:
            self._first_sent[sample.seq] = now
        with self._lock:
            if resend:
                self.summary.resent += 1
            else:
                self.summary.sent += 1

    @staticmethod
    def _send_control(sock: zmq.Socket, frames: list) -> bool:
        """Send a hello or ping without blocking (with no connection yet, IMMEDIATE would block); False: not sent."""
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _take(self) -> Sample | None:
        for sample in self._samples:
            seq = self._next
            self._next += 1
            sample.device, sample.seq = self.cfg.device_id, seq
            return sample
        self._exhausted = True
        return None

    def _decide(self, seq: int, outcome: str) -> float | None:
        """Record ``seq``'s first outcome; returns its round trip when it is a valid RTT sample (sent once)."""
        first = self.verdicts.get(seq)
        with self._lock:
            if first is not None:
                if first != outcome:
                    self.summary.ack_conflicts += 1
                return None
            self.verdicts[seq] = outcome
            entry = self._unacked.pop(seq, None)
            sent_at = self._first_sent.pop(seq, None)
            if sent_at is not None:
                self.latencies.append(time.monotonic() - sent_at)
            if not outcome.startswith("error:"):
                self.summary.acked += 1
            self.summary.verdicts[outcome] = self.summary.verdicts.get(outcome, 0) + 1
        if entry is None or entry.resent:  # Karn: the answer may be to either copy
            return None
        return time.monotonic() - entry.first_sent

    def _on_acks(self, acks: list) -> None:
        """Decide the acked seqs; one RTT measurement per ack message (its slowest fresh sample)."""
        rtts = [rtt for rtt in (self._decide(seq, status) for seq, status in acks) if rtt is not None]
        if rtts:
            before = self.rto.get()
            if self.rto.update(max(rtts)) < before:
                self._resend_check_at = time.monotonic()  # due times moved earlier: rescan
        if acks:
            self._busy_backoff = self.cfg.busy_backoff_s

    def _on_message(self, sock: zmq.Socket, frames: list) -> None:
        try:
            msg = wire.decode(frames, direction="to_device")
        except wire.WireError as err:
            self._count_error(f"bad_reply_{err.code}")
            return
        self._last_rx = time.monotonic()
        if isinstance(msg, wire.Welcome):
            self._welcomed = self._ever_welcomed = True
            self._node_credit, self._node_pending = max(self._node_credit, msg.credit), None
            self._credit = msg.credit
            self.frame_sizes = welcome_frame_sizes(msg.schema)
            self.frame_size = welcome_frame_size(msg.schema)
            while self._next < msg.next_seq and not self._exhausted:  # decided before: resume after them
                if self._take() is not None:
                    with self._lock:
                        self.summary.skipped_resume += 1
            now = time.monotonic()
            for entry in self._unacked.values():  # resend at once (a new node lost what was pending); decided ones get re-acked
                entry.retry_at = now
            self._resend_check_at = self._hold_until = now
        elif isinstance(msg, wire.Ack):
            self._on_acks(msg.acks)
            if self._welcomed:  # credit = node credit - pending, when the node sent it (section 8 of the protocol)
                self._node_pending = max(0, self._node_credit - msg.credit)
                self._pending_at = time.monotonic()
        elif isinstance(msg, wire.Error):
            self._on_error(msg)

    def _on_error(self, msg: wire.Error) -> None:
        self._count_error(msg.code)
        if msg.code == "no_hello":
            self._welcomed = False
        elif msg.code in NOT_ACCEPTED and msg.seq in self._unacked:
            self._back_off(self._unacked[msg.seq])
        elif msg.seq is not None and msg.code not in RETRYABLE and msg.seq in self._unacked:
            self._decide(msg.seq, f"error:{msg.code}")
        elif msg.seq is None and msg.code in FATAL_HELLO and not self._welcomed:
            self._fail(f"the node at {self.cfg.endpoint} refused device {self.cfg.device_id!r}: {msg.code}: {msg.msg}")

    def _back_off(self, entry: _InFlight) -> None:
        """The node did not take this sample (queue or credit full): send nothing for a while, then this one again."""
        now = time.monotonic()
        if now >= self._hold_until:  # one step of backoff per burst of refusals
            self._hold_until = now + self._busy_backoff
            self._busy_backoff = min(2 * self._busy_backoff, self.rto.get())
        entry.retry_at = self._hold_until
        self._resend_check_at = min(self._resend_check_at, self._hold_until)

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

    def stop_sending(self, now: float, drain_s: float) -> None:
        """Send no new sample from now on; wait at most ``drain_s`` for the verdicts of those in flight."""
        self._deadline = min(now, self._deadline) if self._deadline is not None else now
        self.cfg = replace(self.cfg, drain_timeout_s=min(self.cfg.drain_timeout_s, max(0.0, now - self._deadline + drain_s)))

    def finished(self, now: float) -> bool:
        """Every sample decided; given up; or past the deadline with nothing in flight, or the drain timeout over."""
        if self.failure is not None or (self._exhausted and not self._unacked):
            return True
        if self._sending(now):
            return False
        return not self._unacked or now >= self._deadline + self.cfg.drain_timeout_s  # type: ignore[operator]

    def _check_give_up(self, now: float) -> None:
        """Give up when no node ever said anything within the hello timeout, or the node went silent for good."""
        cfg = self.cfg
        if self._last_rx is None and cfg.hello_give_up_s is not None and now - self._started >= self._hello_bound():
            self._fail(self._hello_failure())
        elif self.silent_for(now) >= max(cfg.drain_timeout_s, SILENT_AFTER_S) and (self._unacked or not self._exhausted):
            self._fail(f"the node at {cfg.endpoint} went silent {self.silent_for(now):.0f} s ago and did not come back "
                       "(stopped or crashed? start it again on the same state_dir and rerun: devices resume)")

    def _resend_due(self, sock: zmq.Socket, now: float) -> None:
        """Resend every sample whose RTO (or busy hold) ran out; a timeout doubles the RTO (RFC 6298, 5.5)."""
        rto = self.rto.get()
        # The node's pending samples of this device are among our unacked ones (acks come in order on one
        # connection); as many pending as unacked means none was lost, only slow: restart the timers instead.
        held = self._node_pending is not None and self._node_pending >= len(self._unacked)
        stale = self._pending_at < self._last_send_at and self._probe_at < self._last_send_at
        if not held and stale and any(e.retry_at is None and now >= e.timer_at + rto for e in self._unacked.values()):
            if self._send_control(sock, wire.encode_ping()):  # ask for the credit now (answered at once), decide then
                self._probe_at = now
                self._resend_check_at = now + 0.25
                return
        self._resend_check_at = float("inf")
        timed_out = False
        for seq, entry in sorted(self._unacked.items()):
            due = entry.retry_at if entry.retry_at is not None else entry.timer_at + rto
            if now < due:
                self._resend_check_at = min(self._resend_check_at, due)
                continue
            if entry.retry_at is None:
                timed_out = True
                if held:
                    entry.timer_at = now
                    with self._lock:
                        self.summary.timeouts_pending += 1
                    continue
            self._send_sample(sock, entry.sample, resend=True)
        if self._resend_check_at == float("inf") and self._unacked:
            self._resend_check_at = now + rto
        if timed_out:
            self.rto.backoff()
            log.debug("%s: resend timeout; RTO doubled to %.2f s", self.cfg.device_id, self.rto.get())

    def step(self, now: float) -> None:
        """Say hello when due, resend what timed out, send new samples the window and rate allow, ping when idle."""
        cfg, sock = self.cfg, self.sock
        assert sock is not None, "open() first"
        self._check_give_up(now)
        if self.failure is not None:
            return
        if not self._welcomed and now - self._last_hello >= cfg.hello_timeout_s:
            if self._send_control(sock, wire.encode_hello(cfg.device_id, self.schema)):  # else: next step
                self._last_hello = now
                with self._lock:
                    self.summary.hellos += 1
        if not self._welcomed:
            return
        if now < self._hold_until:
            return
        if now >= self._resend_check_at:
            self._resend_due(sock, now)
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
            self._send_control(sock, wire.encode_ping())
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
            if self.monitor is not None:
                sock.disable_monitor()
                self.monitor.close(linger=0)
                self.monitor = None
            sock.close(linger=200)
            self.sock = None
        with self._lock:
            self.summary.seconds = round(time.monotonic() - self._started, 3)
            self.summary.complete = self._exhausted and not self._unacked
            self.summary.unanswered = len(self._unacked)
            self.summary.rto_s = round(self.rto.get(), 3)
            self.summary.srtt_s = None if self.rto.srtt is None else round(self.rto.srtt, 3)
        return self.summary

    # ------------------------------------------------------------------ main loop
    def run(self, stop: threading.Event | None = None, deadline: float | None = None) -> DeviceSummary:
        """Stream until every sample is decided or ``stop`` is set; at ``deadline`` (monotonic) stop sending
        and drain in-flight verdicts for at most ``drain_timeout_s``."""
        sock = self.open(deadline)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        try:
            while True:
                now = time.monotonic()
                if (stop is not None and stop.is_set()) or self.finished(now):
                    break
                self.step(now)
                for ready, _ in poller.poll(max(1, int(self.wait_s(time.monotonic()) * 1000))):
                    self.on_monitor() if ready is self.monitor else self.on_readable()
        finally:
            summary = self.close()
        return summary


def run_many(clients: list[DeviceClient], stop: threading.Event | None = None, deadline: float | None = None,
             sweep_s: float = 0.05, drain: threading.Event | None = None, drain_s: float = 5.0) -> list[DeviceSummary]:
    """Run many devices on one poller in this thread; summaries in the order of ``clients``.

    A device with a message is stepped at once (its window refills as soon as acks arrive); every
    ``sweep_s`` all devices are stepped for hellos, resends, rate-limited sends and pings. Once
    ``drain`` is set (a first Ctrl-C), devices send nothing new and wait at most ``drain_s`` for
    the verdicts in flight; ``stop`` ends at once.
    """
    poller = zmq.Poller()
    by_sock: dict[zmq.Socket, DeviceClient] = {}
    results: dict[int, DeviceSummary] = {}
    draining = False
    try:
        for c in clients:
            sock = c.open(deadline)
            poller.register(sock, zmq.POLLIN)
            by_sock[sock] = c
            if c.monitor is not None:
                poller.register(c.monitor, zmq.POLLIN)
                by_sock[c.monitor] = c
        active = {id(c): c for c in clients}
        next_sweep = 0.0

        def finish(c: DeviceClient) -> None:
            for s in (c.sock, c.monitor):
                if s is not None:
                    poller.unregister(s)
                    del by_sock[s]
            del active[id(c)]
            results[id(c)] = c.close()

        while active and not (stop is not None and stop.is_set()):
            now = time.monotonic()
            if drain is not None and drain.is_set() and not draining:
                draining = True
                for c in active.values():
                    c.stop_sending(now, drain_s)
            if now >= next_sweep:  # rate-limited sends keep their average rate, in steps of sweep_s
                for c in list(active.values()):
                    if c.finished(now):
                        finish(c)
                    else:
                        c.step(now)
                next_sweep = time.monotonic() + sweep_s
            for sock, _ in poller.poll(max(1, int((next_sweep - time.monotonic()) * 1000))):
                c = by_sock.get(sock)
                if c is None:  # finished earlier in this round
                    continue
                if sock is c.monitor:
                    c.on_monitor()
                    continue
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
