"""Models to end devices: the node publishes its newest ONNX model on a ZeroMQ PUB socket.

Every ``node.model_every`` learner updates the learner thread exports the inference path
(:func:`edge_runtime.export.onnx.onnx_bytes`) and publishes one three-frame message::

    [b"model", msgpack {"version": int, "updates": int, "sha256": hex, "opset": int, "bytes": int}, onnx bytes]

Versions count up from 1 per node run.  The newest model is re-sent every
``node.model_resend_s`` seconds so that a device that subscribed late (ZeroMQ's PUB drops
messages for subscribers that are not connected yet) still gets it.  This is a side channel: the
wire protocol v1 on the ROUTER socket is unchanged, and a device that does no inference never
connects here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import msgpack
import zmq

from edge_runtime.node.logs import NODE_LOGGER

TOPIC = b"model"
log = logging.getLogger(NODE_LOGGER)


def model_message(version: int, updates: int, data: bytes, opset: int) -> list[bytes]:
    """The frames of one model message."""
    header = {"version": int(version), "updates": int(updates), "sha256": hashlib.sha256(data).hexdigest(),
              "opset": int(opset), "bytes": len(data)}
    return [TOPIC, msgpack.packb(header), data]


class ModelPublisher:
    """Owns the PUB socket; call :meth:`maybe_publish` from the learner thread after each micro-batch."""

    def __init__(self, ctx: zmq.Context, bind: str, every: int, resend_s: float, opset: int = 17, config: Any = None) -> None:
        self.sock = ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            self.sock.bind(bind)
        except zmq.ZMQError as err:
            self.sock.close(0)
            raise ValueError(f"node.model_bind: cannot bind {bind} ({err}); pick a free port or tcp://127.0.0.1:*") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.every, self.resend_s, self.opset = every, resend_s, opset
        self.config = config  # the node's Config: the model's modalities give the ONNX inputs (None: the default audio + video)
        self.version = 0
        self.last_updates = 0
        self._frames: list[bytes] | None = None
        self._sent_at = 0.0

    def maybe_publish(self, model: Any, updates: int) -> int | None:
        """Publish a new version when ``every`` updates passed since the last one; re-send the newest
        when ``resend_s`` elapsed.  Returns the version published, if any."""
        now = time.monotonic()
        if updates - self.last_updates >= self.every and updates > 0:
            from edge_runtime.export.onnx import onnx_bytes

            data = onnx_bytes(model, opset=self.opset, config=self.config)
            self.version += 1
            self.last_updates = updates
            self._frames = model_message(self.version, updates, data, self.opset)
            self.sock.send_multipart(self._frames)
            self._sent_at = now
            log.info("model published", extra={"event": "model_published", "version": self.version, "updates": updates,
                                               "bytes": len(data)})
            return self.version
        if self._frames is not None and now - self._sent_at >= self.resend_s:
            self.sock.send_multipart(self._frames)
            self._sent_at = now
        return None

    def close(self) -> None:
        self.sock.close(0)
