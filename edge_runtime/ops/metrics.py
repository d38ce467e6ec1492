"""Prometheus metrics of the edge node (``prometheus_client``), in a registry of its own.

Labels stay low-cardinality: verdicts, invalid reasons and error codes, never a device id.

``/metrics`` is served by :class:`MetricsServer`: ``prometheus_client``'s WSGI app and handler, as
its ``start_http_server`` serves them, in a thread-per-connection server with two bounds that
``start_http_server`` lacks (issue 24 G13): a socket timeout per connection (an unfinished request
is closed after ``node.metrics_timeout_s`` of silence) and at most ``node.metrics_max_connections``
connections served at once (a connection past the cap is closed as soon as it is accepted, before
any thread is started). So an unfinished request costs one thread and one descriptor for at most
the timeout, and the cap bounds both however many arrive.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from typing import Any, Callable
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from edge_runtime.core.names import LOGGER_NODE

log = logging.getLogger(LOGGER_NODE)

#: What the node writes to its state folder and may fail to (a full disk): labels of the disk series.
DISK_WRITES = ("checkpoint", "ledger", "status", "history")


class NodeMetrics:
    """Every series the node exports; one instance per node (tests run several in one process)."""

    def __init__(self) -> None:
        self.serve_timeout_s = 5.0  # node.metrics_timeout_s / node.metrics_max_connections (defaults of NodeConfig)
        self.serve_max_connections = 8
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("edge_samples_received", "sample messages received (resends included)", registry=r)
        self.decided = Counter("edge_samples_decided", "samples decided, by verdict", ["verdict"], registry=r)
        self.invalid = Counter("edge_samples_invalid", "samples answered invalid:<reason>, by reason", ["reason"], registry=r)
        self.errors = Counter("edge_errors_sent", "error messages sent, by code", ["code"], registry=r)
        self.duplicates = Counter("edge_duplicates", "resent samples answered from the ledger or already queued", registry=r)
        self.queue_depth = Gauge("edge_queue_depth", "samples waiting for the learner", registry=r)
        self.in_flight = Gauge("edge_credit_in_flight", "samples accepted but not yet acknowledged, all devices", registry=r)
        self.devices = Gauge("edge_devices", "devices with a live connection that said hello (and not bye)", registry=r)
        self.buffer_items = Gauge("edge_buffer_items", "items in the replay buffer", registry=r)
        self.buffer_bytes = Gauge("edge_buffer_bytes", "tensor bytes in the replay buffer", registry=r)
        self.update_seconds = Histogram(
            "edge_update_seconds", "learner time per micro-batch (observe + commit)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=r)
        self.batch_size = Histogram("edge_batch_size", "samples per micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.prequential_accuracy = Gauge("edge_prequential_accuracy", "accuracy of predictions made before learning", registry=r)
        self.eval_accuracy = Gauge("edge_eval_accuracy", "accuracy on samples streamed with split eval", registry=r)
        self.modality_eval_accuracy = Gauge("edge_modality_eval_accuracy", "accuracy of each modality's own head on samples "
                                            "streamed with split eval, by modality name", ["modality"], registry=r)
        self.checkpoints = Counter("edge_checkpoints", "checkpoints written", registry=r)
        # The operator's view (edge_runtime/ops/observe.py sets these; `edge-node status` and docker/grafana read them).
        self.node_info = Info("edge_node", "endpoints of this node", registry=r)
        self.start_time = Gauge("edge_start_time_seconds", "unix time the node started serving", registry=r)
        self.queue_bytes = Gauge("edge_queue_bytes", "tensor bytes of the samples waiting for the learner", registry=r)
        self.devices_known = Gauge("edge_devices_known", "devices with at least one decided sample (all runs)", registry=r)
        self.buffer_class_items = Gauge("edge_buffer_class_items", "items in the replay buffer, by class label", ["label"], registry=r)
        self.updates = Gauge("edge_updates", "learner updates (optimiser steps on micro-batches), all runs", registry=r)
        self.samples_learned = Gauge("edge_samples_learned", "samples the learner has decided, all runs", registry=r)
        self.last_checkpoint = Gauge("edge_last_checkpoint_timestamp_seconds", "unix time of the newest checkpoint", registry=r)
        self.model_version = Gauge("edge_model_version", "newest ONNX model version published to devices (0: none)", registry=r)
        # A full disk is a state (issue 24 G7): edge_runtime/ops/disk.py sets these.
        self.disk_errors = Counter("edge_disk_errors", "failed writes to the state folder (full disk, no descriptors), by what",
                                   ["what"], registry=r)
        self.disk_failing = Gauge("edge_disk_failing", "1 while writes of this kind to the state folder fail (retried with "
                                  "backoff), else 0", ["what"], registry=r)
        for what in DISK_WRITES:  # exported at 0 from the start, so that a dashboard sees the series before a failure
            self.disk_errors.labels(what)
            self.disk_failing.labels(what).set(0)
        self.metrics_refused = Counter("edge_metrics_connections_refused", "/metrics connections closed at once: "
                                       "node.metrics_max_connections were being served", registry=r)

    def add_federation(self, round_of: Callable[[], int], since_round: Callable[[], int],
                       round_at: Callable[[], float]) -> None:
        """The federation series (only on a node with ``federation.enabled``); ``edge-node status`` shows them."""
        r = self.registry
        Gauge("edge_federation_round", "newest federation round whose global model this node applied", registry=r).set_function(round_of)
        Gauge("edge_federation_samples_since_round", "samples learned since the last applied round", registry=r).set_function(since_round)
        Gauge("edge_federation_round_timestamp_seconds", "unix time the last global model was applied (0: none yet)",
              registry=r).set_function(round_at)

    def serve(self, port: int, host: str = "127.0.0.1", timeout_s: float | None = None, max_connections: int | None = None) -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port (``port=0``: any free one).

        ``timeout_s``: a request not complete within it is closed; ``max_connections``: served at once, more
        are closed at once (see the module docstring). None: :attr:`serve_timeout_s` / :attr:`serve_max_connections`
        (the defaults of ``node.metrics_timeout_s`` / ``node.metrics_max_connections``; the node passes its settings)."""
        timeout_s = self.serve_timeout_s if timeout_s is None else timeout_s
        max_connections = self.serve_max_connections if max_connections is None else max_connections
        server = MetricsServer.start(self.registry, host, port, timeout_s, max_connections, self.metrics_refused.inc)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.close()


class _Deadline(io.RawIOBase):
    """A connection's reads, all before one deadline: a request trickled a byte at a time still ends on time."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("metrics request not complete within node.metrics_timeout_s")
        self.sock.settimeout(left)
        return self.sock.recv_into(buf)


class _MetricsHandler(_SilentHandler):
    """``prometheus_client``'s silent WSGI handler whose request must arrive within ``timeout`` seconds in all."""

    timeout = 5.0  # StreamRequestHandler sets it on the socket (so it bounds each write of the answer too)

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_Deadline(self.connection, time.monotonic() + float(self.timeout)))


class MetricsServer(ThreadingWSGIServer):
    """``prometheus_client``'s thread-per-connection WSGI server with a per-connection timeout and a connection cap."""

    timeout_s: float = 5.0
    max_connections: int = 8
    thread: threading.Thread
    on_refused: Callable[[], None] = staticmethod(lambda: None)

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int, timeout_s: float, max_connections: int,
              on_refused: Callable[[], None] | None = None) -> "MetricsServer":
        """Bind ``host:port`` and serve ``registry`` from a daemon thread (what ``start_http_server`` does, bounded)."""
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, sockaddr = infos[0]
        handler = type("BoundMetricsHandler", (_MetricsHandler,), {"timeout": timeout_s})
        server_class = type("BoundMetricsServer", (cls,), {"address_family": family})
        server: MetricsServer = make_server(sockaddr[0], port, make_wsgi_app(registry), server_class, handler_class=handler)
        server.timeout_s, server.max_connections = timeout_s, max_connections
        server.on_refused = on_refused or (lambda: None)
        server._slots = threading.BoundedSemaphore(max_connections)
        server._closing = threading.Event()
        server.thread = threading.Thread(target=server._serve_guarded, name="metrics", daemon=True)
        server.thread.start()
        return server

    def _serve_guarded(self) -> None:
        """``serve_forever`` under a guard: a failure is logged and serving resumes (metrics never stop the node)."""
        while not self._closing.is_set():
            try:
                self.serve_forever()
                return
            except Exception:
                log.exception("metrics server failed; serving again in 1 s", extra={"event": "metrics_failed"})
                self._closing.wait(1.0)

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError:  # no descriptor left (EMFILE): the listening socket stays readable; do not spin on it
            time.sleep(0.05)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.on_refused()
            self.shutdown_request(request)  # closed before any thread is started for it
            return
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: nothing to print (``socketserver`` would print a traceback)."""
        log.debug("metrics request failed", exc_info=True, extra={"event": "metrics_request_failed"})

    def close(self) -> None:
        self._closing.set()
        self.shutdown()
        self.server_close()
