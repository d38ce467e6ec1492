"""Prometheus metrics of the edge node (``prometheus_client``), in a registry of its own.

Labels stay low-cardinality: verdicts, invalid reasons and error codes, never a device id.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server


class NodeMetrics:
    """Every series the node exports; one instance per node (tests run several in one process)."""

    def __init__(self) -> None:
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

    def add_federation(self, round_of: Callable[[], int], since_round: Callable[[], int],
                       round_at: Callable[[], float]) -> None:
        """The federation series (only on a node with ``federation.enabled``); ``edge-node status`` shows them."""
        r = self.registry
        Gauge("edge_federation_round", "newest federation round whose global model this node applied", registry=r).set_function(round_of)
        Gauge("edge_federation_samples_since_round", "samples learned since the last applied round", registry=r).set_function(since_round)
        Gauge("edge_federation_round_timestamp_seconds", "unix time the last global model was applied (0: none yet)",
              registry=r).set_function(round_at)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port (``port=0``: any free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.shutdown()
            server.server_close()
