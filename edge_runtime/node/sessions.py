"""Device sessions on the IO thread: hellos, credit windows, de-duplication by (device, seq), acks.

The IO thread owns the ROUTER socket. For every message it finds the device by its routing id,
requires a hello on every new connection (a message carries its socket fd, the connection's
name), decodes and validates it (:mod:`edge_runtime.wire`, then the cheap part of the input
contract), answers resends of decided seqs from its recent verdicts or the ledger, enforces the
device's credit window (``node.credit``) and the seq gap (``node.max_seq_gap``), and offers the
sample to the learner thread. It then sends the acks the learner thread hands back, with the
credit each device has left. With CURVE a device id belongs to the key that first registered it,
and one key holds at most ``node.curve.max_ids_per_key`` ids. Per-device state is freed on bye and
after ``node.device_idle_s``; then the ledger rows of a device that never delivered a valid sample
are deleted too (so ids that only ever sent junk leave nothing on disk).

Bounds against a hostile fleet (issue 24): at most ``node.max_connections`` open connections (one
more is answered ``too_many_connections`` when it speaks, and closed), hello log lines rate-limited
(``node.hello_log_per_s``), and an exception while handling one message answers that message
(``internal_error``) and nothing else.
"""

from __future__ import annotations

import logging
import socket
import time
from os import dup as os_dup
from os import fstat as os_fstat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import zmq
from zmq.utils.monitor import recv_monitor_message

from edge_runtime import wire
from edge_runtime.core.config import NodeConfig
from edge_runtime.core.sample import Sample
from edge_runtime.core.validation import InputContract
from edge_runtime.node.handoff import Handoff, Item
from edge_runtime.node.ledger import DECIDED
from edge_runtime.node.limits import release_free_memory
from edge_runtime.node.logs import NODE_LOGGER
from edge_runtime.node.schema import SchemaNegotiator
from edge_runtime.ops.metrics import NodeMetrics

if TYPE_CHECKING:
    from edge_runtime.node.ledger import LedgerReader
    from edge_runtime.node.security import CurveServer

log = logging.getLogger(NODE_LOGGER)

ACKS_PER_MESSAGE = 150  # keeps an ack header well inside wire.Limits.max_header_bytes
DEFERRED_HELLOS_MAX = 256  # hellos held while their device's release commits; beyond, answered busy
REFUSE_GRACE_S = 1.0  # a connection over node.max_connections may speak this long (to hear why), then it is closed
REFUSE_FLUSH_S = 0.2  # after its too_many_connections answer: time for libzmq to write it before the close
LARGE_MESSAGE = 2**20  # after a message this large (or a closed connection), the heap's free pages go back once a second
REFUSE_PENDING_MAX = 16  # more refused connections than this waiting for their grace: the next ones are closed at once


class RateLimitedLog:
    """At most ``per_s`` lines a second of one kind; the rest counted in one line per second."""

    def __init__(self, per_s: int, what: str, event: str) -> None:
        self.per_s, self.what, self.event = per_s, what, event
        self._window = 0.0
        self._logged = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        """Whether to log one more line now (else it is counted)."""
        self.flush(now)
        if self._logged < self.per_s:
            self._logged += 1
            return True
        self.suppressed += 1
        return False

    def flush(self, now: float) -> None:
        """Start a new second: one line for what the last one left out."""
        if now - self._window < 1.0:
            return
        if self.suppressed:
            log.info(f"{self.suppressed} {self.what} not logged (over {self.per_s} a second)",
                     extra={"event": f"{self.event}_suppressed", "count": self.suppressed})
        self._window, self._logged, self.suppressed = now, 0, 0


class SeqTracker:
    """Decided sequence numbers of one device: a contiguous prefix ``[0, next_seq)`` plus the set above it.

    The set above is bounded by the caller: the node refuses a seq ``node.max_seq_gap`` or more
    above ``next_seq`` (``seq_gap``), so it never holds more than that many seqs. Rebuilt from the
    ledger (:meth:`~edge_runtime.node.ledger.LedgerReader.resume`), it gets only the decided seqs in
    that same window above the stored ``next_seq``.
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
    delivered: bool = False  # a sample of this device got a verdict other than invalid:* (else its rows expire when freed)


class Sessions:
    """Every device the IO thread knows, by routing id; only the IO thread calls its methods (``connected`` aside)."""

    def __init__(self, nc: NodeConfig, num_classes: int, metrics: NodeMetrics, schema: SchemaNegotiator,
                 handoff: Handoff, arrivals: dict[str, float]) -> None:
        self.nc = nc
        self.num_classes = num_classes
        self.limits = wire.Limits(max_message_bytes=nc.max_message_bytes)
        self.metrics = metrics
        self.schema = schema
        self.handoff = handoff
        self.arrivals = arrivals  # device -> last sample time, for edge-node status
        self.curve: CurveServer | None = None  # set when the socket is a CURVE server
        self.devices: dict[bytes, DeviceState] = {}
        self.in_flight = 0  # accepted, not yet acknowledged, all devices
        self._bound: dict[str, str] = {}  # device -> key, for devices with state
        self._new_binds: dict[str, set[str]] = {}  # key -> devices bound by this node run, not yet seen committed
        self._by_conn: dict[int, bytes] = {}  # connection (fd) -> routing id that said hello on it
        self.max_connections = nc.max_connections  # lowered under the descriptor limit by the daemon
        self.open_conns: dict[int, float] = {}  # connection (fd) -> when accepted
        self._refused: dict[int, float] = {}  # connection (fd) over the cap -> when to close it
        self.monitor: zmq.Socket | None = None  # the ROUTER's connection events (set by the daemon when it binds)
        self._deferred_hellos: list[tuple] = []  # (rid, device, hello, conn, key) of devices whose release is uncommitted
        self._answered: set[int] = set()  # refused connections already told why
        self.refused_total = 0
        self._trim_due = False  # a large message or a closed connection since the last release_free_memory
        self._hello_log = RateLimitedLog(nc.hello_log_per_s, "hellos", "hello")
        self._error_log = RateLimitedLog(1, "message failures", "message_failed")
        # why a sample broke its device's contract (the ack carries only the reason code): which tensor, which shape
        self._refusal_log = RateLimitedLog(5, "sample refusals", "sample_refused")

    # ------------------------------------------------------------------ sending
    def error(self, sock: zmq.Socket, rid: bytes, seq: int | None, code: str, msg: str) -> None:
        self.metrics.errors.labels(code).inc()
        self.send(sock, rid, wire.encode_error(seq, code, msg))

    def send(self, sock: zmq.Socket, rid: bytes, frames: list) -> None:
        try:
            sock.send_multipart([rid, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as err:  # device gone or its pipe full: it resends, the ledger answers again
            log.debug("send failed", extra={"event": "send_failed", "errno": err.errno})

    def _credit(self, dev: DeviceState) -> int:
        return max(self.nc.credit - len(dev.pending), 0)

    # ------------------------------------------------------------------ receiving
    def handle(self, sock: zmq.Socket, reader: "LedgerReader", frames: list) -> None:
        """One message (``frames[0]``: the routing id): answer it, or offer its sample to the learner.

        Whatever goes wrong while handling it is this message's alone: it is answered
        ``internal_error`` (logged with its traceback, at most once a second) and the loop serves on.
        """
        try:
            self._handle(sock, reader, frames)
        except Exception as err:  # a bug, not bad input (bad input has its reason): keep serving everyone else
            now = time.monotonic()
            if self._error_log.allow(now):
                log.exception("failed to handle a message; it is answered internal_error", extra={"event": "message_failed"})
            try:
                rid = frames[0].bytes
                self.error(sock, rid, None, "internal_error", f"the node failed on this message ({type(err).__name__}); "
                           "it was dropped and the node serves on; if it repeats, report it with the node's log")
            except Exception:  # even the answer failed: the message is dropped
                pass

    def _handle(self, sock: zmq.Socket, reader: "LedgerReader", frames: list) -> None:
        rid = frames[0].bytes
        body = frames[1:]
        if len(body) > 2 and sum(len(f) for f in body) > LARGE_MESSAGE:
            self._trim_due = True
        if body and self.monitor is not None:
            fd = body[-1].get(zmq.SRCFD)
            if fd not in self.open_conns:  # its ACCEPTED event is queued (it precedes any message): count it first
                self.connection_events(self.monitor)
            if fd in self._refused:
                self._refuse(sock, rid, fd)
                return
        dev = self.devices.get(rid)
        device = dev.device if dev is not None else self._device_id(sock, rid)
        if device is None or not body:
            return
        conn = body[-1].get(zmq.SRCFD)
        key = body[-1].get("User-Id") if self.curve is not None else None
        if key is not None and self.curve is not None and not self.curve.allows(key):
            self.error(sock, rid, None, "key_revoked", "this connection's CURVE key was removed from node.curve.allowed_keys_dir")
            return
        now = time.monotonic()
        if dev is not None and dev.contract is not None and (dev.conn != conn or dev.key != key):
            # Another connection than the one that said hello: the old one is gone (libzmq parks a
            # duplicate routing id while it lives), unless ROUTER_HANDOVER let this one take it.
            if self.nc.router_handover and now - dev.last_seen < self.nc.heartbeat_timeout_ms / 1000.0:
                self.error(sock, rid, None, "id_in_use", f"device id {device!r} is in use by a live connection; "
                           "pick another ROUTING_ID, or retry after the node's heartbeat timeout")
                return
            dev.contract, dev.conn, dev.key = None, -1, None  # this connection must say its own hello
        try:
            msg = wire.decode(body, num_classes=self.num_classes, device=device, limits=self.limits, content=False)
        except wire.WireError as err:
            if err.seq is None:
                self.error(sock, rid, None, err.code, err.message)
            elif dev is None or dev.contract is None:
                self.error(sock, rid, err.seq, "no_hello", "send hello before samples (on every new connection)")
            else:
                dev.last_seen = now
                self._sample(sock, reader, rid, dev, err.seq, None, err.verdict, sum(len(f) for f in body))
            return
        if isinstance(msg, Sample):
            if dev is None or dev.contract is None:
                self.error(sock, rid, msg.seq, "no_hello", "send hello before samples (on every new connection)")
                return
            dev.last_seen = now
            problem, dev.contract = self.schema.check(dev.contract, dev.raw, dev.device, msg)
            if problem is not None:
                if self._refusal_log.allow(now):
                    log.info(f"sample refused: {problem.message}", extra={"event": "sample_refused", "device": dev.device,
                                                                          "seq": msg.seq, "reason": problem.code})
                self._sample(sock, reader, rid, dev, msg.seq, None, problem.verdict, 0)
            else:
                self._sample(sock, reader, rid, dev, msg.seq, msg, None, sum(len(f) for f in body))
        elif isinstance(msg, wire.Hello):
            self._hello(sock, reader, rid, device, msg, conn, key, now)
        elif isinstance(msg, wire.Ping):
            if dev is not None and dev.contract is not None:
                dev.last_seen = now
                self.send(sock, rid, wire.encode_ack([], self._credit(dev)))
            else:
                self.error(sock, rid, None, "no_hello", "send hello first (on every new connection)")
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
        self.error(sock, rid, None, "bad_routing_id", f"{problem}; set ROUTING_ID to the device id (1..64 bytes of UTF-8)")
        return None

    def retry_deferred_hellos(self, sock: zmq.Socket, reader: "LedgerReader") -> None:
        """Answer the hellos held while their device's release was not yet committed (IO thread, every loop)."""
        if not self._deferred_hellos:
            return
        waiting, self._deferred_hellos = self._deferred_hellos, []
        now = time.monotonic()
        for rid, device, msg, conn, key in waiting:
            self._hello(sock, reader, rid, device, msg, conn, key, now)  # held again while still releasing

    def _hello(self, sock: zmq.Socket, reader: "LedgerReader", rid: bytes, device: str, msg: wire.Hello,
               conn: int, key: str | None, now: float) -> None:
        if msg.device != device:
            self.error(sock, rid, None, "bad_hello", f"hello names device {msg.device!r} but the socket's routing id is {device!r}; "
                       "set ROUTING_ID to the device id")
            return
        if key is not None:
            bound = self._bound.get(device) or reader.device_key(device)
            if bound is not None and bound != key:
                self.error(sock, rid, None, "id_bound", f"device id {device!r} is registered to another CURVE key; "
                           "each device id belongs to the key that first said hello with it")
                return
            cap = self.nc.curve.max_ids_per_key
            if bound is None and self._ids_of_key(reader, key) >= cap:
                self.error(sock, rid, None, "too_many_ids", f"this CURVE key already holds {cap} device ids "
                           "(node.curve.max_ids_per_key); reuse one of them, or give each device its own key "
                           "(an id that never delivered a valid sample is released after node.device_idle_s or its bye)")
                return
        if device in self.handoff.releasing and rid not in self.devices:
            # its rows are being deleted by the learner thread: a welcome now would resume from rows about to go,
            # so the hello is answered once that is committed (milliseconds; retry_deferred_hellos)
            if len(self._deferred_hellos) >= DEFERRED_HELLOS_MAX:
                self.error(sock, rid, None, "busy", f"device {device!r} was just freed and its state is being released; "
                           "say hello again in a moment")
            else:
                self._deferred_hellos.append((rid, device, msg, conn, key))
            return
        contract, raw, problem = self.schema.welcome(msg.schema)
        if problem:
            self.error(sock, rid, None, "bad_hello", problem)
            return
        assert contract is not None
        dev = self.devices.get(rid)
        if dev is None:
            # (re)built from the ledger: its next_seq and the seqs decided out of order above it, within
            # the seq_gap window (the only place the IO thread accepts seqs), so the welcome's next_seq
            # is the first undecided seq after a bye, idle freeing or restart too (docs/protocol.md section 9)
            next_seq, above = reader.resume(device, self.nc.max_seq_gap)
            dev = self.devices[rid] = DeviceState(device, SeqTracker(next_seq, above))
        if key is not None and device not in self._bound:
            self._bound[device] = key
            self._new_binds.setdefault(key, set()).add(device)
            self.handoff.to_bind.append((device, key))
        if dev.conn != conn:
            self._by_conn.pop(dev.conn, None)
        dev.contract, dev.raw, dev.conn, dev.key, dev.last_seen, dev.bye = contract, raw, conn, key, now, False
        self._by_conn[conn] = rid
        self.send(sock, rid, wire.encode_welcome(self._credit(dev), self.num_classes, contract.schema, dev.tracker.next_seq))
        if self._hello_log.allow(now):
            log.info("device hello", extra={"event": "hello", "device": device, "next_seq": dev.tracker.next_seq})

    def _ids_of_key(self, reader: "LedgerReader", key: str) -> int:
        """Device ids bound to ``key``: committed, plus those this run bound that are not committed yet."""
        pending = self._new_binds.get(key)
        if pending:
            for device in [d for d in pending if reader.device_key(d) == key]:
                pending.discard(device)  # committed: counted by the reader from now on
        return reader.ids_of_key(key) + (len(pending) if pending else 0)

    def _sample(self, sock: zmq.Socket, reader: "LedgerReader", rid: bytes, dev: DeviceState,
                seq: int, sample: Sample | None, verdict: str | None, nbytes: int) -> None:
        self.metrics.received.inc()
        self.arrivals[dev.device] = time.monotonic()
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
                self.send(sock, rid, wire.encode_ack([(seq, first)], self._credit(dev)))
                return
        if self.handoff.draining:
            self.error(sock, rid, seq, "shutting_down", "node is stopping; resend after it restarts")
            return
        if seq >= dev.tracker.next_seq + self.nc.max_seq_gap:
            self.error(sock, rid, seq, "seq_gap", f"seq {seq} is {self.nc.max_seq_gap} or more above the first undecided "
                       f"seq {dev.tracker.next_seq} (node.max_seq_gap); number samples 0, 1, 2, ... and resend the missing ones")
            return
        if len(dev.pending) >= self.nc.credit:
            self.error(sock, rid, seq, "no_credit", f"more than {self.nc.credit} samples unacknowledged; wait for acks")
            return
        if not self.handoff.offer(Item(rid, device, seq, sample, verdict, time.monotonic(), nbytes, dev.raw)):
            self.error(sock, rid, seq, "busy", "ingest queue full; resend later")
            return
        dev.pending.add(seq)
        self.in_flight += 1

    # ------------------------------------------------------------------ acks
    def send_acks(self, sock: zmq.Socket) -> None:
        """Send the verdicts the learner thread committed, with each device's credit left."""
        by_rid: dict[bytes, list[tuple[int, str]]] = {}
        outbox = self.handoff.outbox
        while outbox:
            for rid, seq, verdict in outbox.popleft():
                by_rid.setdefault(rid, []).append((seq, verdict))
        for rid, acks in by_rid.items():
            dev = self.devices[rid]  # never freed while it has samples pending
            self.in_flight -= len(acks)
            for seq, verdict in acks:
                dev.pending.discard(seq)
                dev.tracker.add(seq)
                dev.recent[seq] = verdict
                if not verdict.startswith("invalid:"):
                    dev.delivered = True
            while len(dev.recent) > 4 * self.nc.credit:
                dev.recent.pop(next(iter(dev.recent)))
            credit = self._credit(dev)
            for i in range(0, len(acks), ACKS_PER_MESSAGE):
                self.send(sock, rid, wire.encode_ack(acks[i : i + ACKS_PER_MESSAGE], credit))
            if dev.bye and not dev.pending:
                self._free(rid)
        if by_rid:
            self.metrics.in_flight.set(self.in_flight)

    # ------------------------------------------------------------------ connections and bounded state
    def connection_events(self, monitor: zmq.Socket) -> None:
        """Count connections (fds) opened and closed; refuse one over ``node.max_connections``; forget the
        hello done on a closed one (its fd may come back for another connection)."""
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            fd = int(event["value"])
            if event["event"] == zmq.EVENT_ACCEPTED:
                now = time.monotonic()
                self.open_conns[fd] = now
                if len(self.open_conns) > self.max_connections:
                    # a flood of connections must not hold descriptors for the grace: past a few, no reason
                    self._refused[fd] = now + (REFUSE_GRACE_S if len(self._refused) < REFUSE_PENDING_MAX else 0.0)
                    self.refused_total += 1
                continue
            self.open_conns.pop(fd, None)
            self._refused.pop(fd, None)
            self._answered.discard(fd)
            self._trim_due = True  # it may have died in the middle of a large message
            rid = self._by_conn.pop(fd, None)
            dev = self.devices.get(rid) if rid is not None else None
            if dev is not None and dev.conn == fd:
                dev.contract, dev.conn, dev.key = None, -1, None

    def _refuse(self, sock: zmq.Socket, rid: bytes, fd: int) -> None:
        """A message on a connection over the cap: say why once, then close it shortly."""
        if fd not in self._answered:
            self._answered.add(fd)
            self.error(sock, rid, None, "too_many_connections",
                       f"the node has {self.max_connections} open connections (node.max_connections); "
                       "this one is closed: reconnect later, or ask the operator to raise the limit")
            self._refused[fd] = min(self._refused[fd], time.monotonic() + REFUSE_FLUSH_S)

    def close_refused(self, monitor: zmq.Socket, now: float) -> None:
        """Close the connections over the cap whose time is up (libzmq sees the peer gone and frees it)."""
        if not self._refused or min(self._refused.values()) > now:
            return
        self.connection_events(monitor)  # a closed fd may have been reused: act on the newest events only
        for fd in [f for f, at in self._refused.items() if at <= now]:
            del self._refused[fd]
            self._answered.discard(fd)
            shutdown_connection(fd)

    def connected(self) -> int:
        """Devices with a live, welcomed connection (the ``edge_devices`` gauge, computed when read)."""
        for _ in range(10):  # read from the metrics / observer thread while the IO thread may change the dict
            try:
                return sum(1 for dev in list(self.devices.values()) if dev.contract is not None)
            except RuntimeError:
                continue
        return len(self.devices)

    def _free(self, rid: bytes) -> None:
        """Drop a device's state (bye, or idle past node.device_idle_s); its ledger rows stay, unless it never
        delivered a valid sample (the ledger checks all its rows): then they go, key binding included."""
        dev = self.devices.pop(rid)
        if self._by_conn.get(dev.conn) == rid:
            del self._by_conn[dev.conn]
        key = self._bound.pop(dev.device, None)
        if key is not None and key in self._new_binds:
            self._new_binds[key].discard(dev.device)
            if not self._new_binds[key]:
                del self._new_binds[key]
        if not dev.delivered:
            self.handoff.releasing.add(dev.device)
            self.handoff.to_bind.append((dev.device, None))  # Ledger.bind_key(device, None): release if never valid
        self.handoff.forget.append(dev.device)
        log.debug("device state freed", extra={"event": "device_freed", "device": dev.device})

    def sweep_idle(self, now: float) -> None:
        """Free the state of devices silent past ``node.device_idle_s`` with nothing pending."""
        idle = self.nc.device_idle_s
        for rid in [r for r, d in self.devices.items() if not d.pending and now - d.last_seen > idle]:
            self._free(rid)
        self._hello_log.flush(now)
        self._error_log.flush(now)
        self._refusal_log.flush(now)
        if self._trim_due:
            self._trim_due = False
            release_free_memory()
        for fd in list(self.open_conns):  # a disconnect event lost under a flood must not hold a slot for ever
            try:
                os_fstat(fd)
            except OSError:
                self.open_conns.pop(fd, None)
                self._refused.pop(fd, None)
                self._answered.discard(fd)


def shutdown_connection(fd: int) -> None:
    """Shut a connection libzmq owns down (not close: the descriptor stays libzmq's, which reads EOF and
    closes it, reporting the disconnect). A descriptor already gone is left alone."""
    try:
        dup = socket.socket(fileno=os_dup(fd))
    except OSError:
        return
    try:
        if dup.type == socket.SOCK_STREAM:
            dup.getpeername()  # a connected stream socket (a device's), never a listener: else OSError
            dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()  # closes the duplicate only
