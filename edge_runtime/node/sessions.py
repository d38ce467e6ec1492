"""Device sessions on the IO thread: hellos, credit windows, de-duplication by (device, seq), acks.

The IO thread owns the ROUTER socket. For every message it finds the device by its routing id,
requires a hello on every new connection (a message carries its socket fd, the connection's
name), decodes and validates it (:mod:`edge_runtime.wire`, then the cheap part of the input
contract), answers resends of decided seqs from its recent verdicts or the ledger, enforces the
device's credit window (``node.credit``) and the seq gap (``node.max_seq_gap``), and offers the
sample to the learner thread. It then sends the acks the learner thread hands back, with the
credit each device has left. With CURVE a device id belongs to the key that first registered it.
Per-device state is freed on bye and after ``node.device_idle_s``.
"""

from __future__ import annotations

import logging
import time
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
from edge_runtime.node.logs import NODE_LOGGER
from edge_runtime.node.schema import SchemaNegotiator
from edge_runtime.ops.metrics import NodeMetrics

if TYPE_CHECKING:
    from edge_runtime.node.ledger import LedgerReader
    from edge_runtime.node.security import CurveServer

log = logging.getLogger(NODE_LOGGER)

ACKS_PER_MESSAGE = 150  # keeps an ack header well inside wire.Limits.max_header_bytes


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
        self._by_conn: dict[int, bytes] = {}  # connection (fd) -> routing id that said hello on it

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
        """One message (``frames[0]``: the routing id): answer it, or offer its sample to the learner."""
        rid = frames[0].bytes
        body = frames[1:]
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
            self.handoff.to_bind.append((device, key))
        if dev.conn != conn:
            self._by_conn.pop(dev.conn, None)
        dev.contract, dev.raw, dev.conn, dev.key, dev.last_seen, dev.bye = contract, raw, conn, key, now, False
        self._by_conn[conn] = rid
        self.send(sock, rid, wire.encode_welcome(self._credit(dev), self.num_classes, contract.schema, dev.tracker.next_seq))
        log.info("device hello", extra={"event": "hello", "device": device, "next_seq": dev.tracker.next_seq})

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
        """Forget the hello done on a connection (fd) that was closed: its fd may come back for another one."""
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            rid = self._by_conn.pop(int(event["value"]), None)
            dev = self.devices.get(rid) if rid is not None else None
            if dev is not None and dev.conn == int(event["value"]):
                dev.contract, dev.conn, dev.key = None, -1, None

    def connected(self) -> int:
        """Devices with a live, welcomed connection (the ``edge_devices`` gauge, computed when read)."""
        for _ in range(10):  # read from the metrics / observer thread while the IO thread may change the dict
            try:
                return sum(1 for dev in list(self.devices.values()) if dev.contract is not None)
            except RuntimeError:
                continue
        return len(self.devices)

    def _free(self, rid: bytes) -> None:
        """Drop a device's state (bye, or idle past node.device_idle_s); its ledger rows stay."""
        dev = self.devices.pop(rid)
        if self._by_conn.get(dev.conn) == rid:
            del self._by_conn[dev.conn]
        self._bound.pop(dev.device, None)
        self.handoff.forget.append(dev.device)
        log.debug("device state freed", extra={"event": "device_freed", "device": dev.device})

    def sweep_idle(self, now: float) -> None:
        """Free the state of devices silent past ``node.device_idle_s`` with nothing pending."""
        idle = self.nc.device_idle_s
        for rid in [r for r, d in self.devices.items() if not d.pending and now - d.last_seen > idle]:
            self._free(rid)
