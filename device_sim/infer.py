"""On-device inference: follow the node's published models and predict on the device's own samples.

A :class:`ModelFollower` subscribes to the node's model endpoint (``device-sim run --infer
ENDPOINT``), checks every model it receives (sha256 of the payload, then
:func:`edge_runtime.export.onnx.verify_onnx`) and swaps it in only when it is sound: a corrupt model is
refused, the previous one stays in use, and the refusal is recorded in the summary.  Before a
sample is sent, :meth:`ModelFollower.observe` predicts it with the current model (:func:`predict_sample`:
the model's inputs are read from the ONNX model, one per modality, whatever their names) and records
accuracy and latency under that model's version.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from edge_runtime.core.sample import Sample


@dataclass
class VersionStats:
    n: int = 0
    correct: int = 0
    latency_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        lat = np.array(self.latency_ms) if self.latency_ms else np.zeros(1)
        return {"samples": self.n, "accuracy": self.correct / self.n if self.n else None,
                "latency_ms_mean": float(lat.mean()), "latency_ms_p95": float(np.percentile(lat, 95))}


class ModelFollower:
    """Receives models in a background thread; ``observe(sample)`` predicts with the newest good one."""

    def __init__(self, endpoint: str, ctx: zmq.Context | None = None, providers: list[str] | None = None) -> None:
        self.endpoint = endpoint
        self._ctx = ctx or zmq.Context.instance()
        self._providers = providers
        self._lock = threading.Lock()
        self._session: Any = None
        self.version: int | None = None
        self.stats: dict[int, VersionStats] = {}
        self.events: list[str] = []
        self.received: list[int] = []
        self._stop = threading.Event()
        # Connected here, so a bad endpoint is an error for the caller; the thread only reads from it.
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"model")
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as err:
            sock.close(0)
            raise ValueError(f"--infer {endpoint!r}: cannot connect ({err}); give the node's model endpoint, "
                             "e.g. tcp://127.0.0.1:5556 (its node.model_bind, also in state_dir/node.json)") from None
        self._thread = threading.Thread(target=self._loop, args=(sock,), name=f"models-{endpoint}", daemon=True)
        self._thread.start()

    def _loop(self, sock: zmq.Socket) -> None:
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                frames = sock.recv_multipart()
                self._receive(frames)
        finally:
            sock.close(0)

    def _receive(self, frames: list[bytes]) -> None:
        from edge_runtime.export.onnx import make_session, verify_onnx

        try:
            header = msgpack.unpackb(frames[1], raw=False)
            version = int(header["version"])
        except Exception as err:  # noqa: BLE001 - anything unreadable is refused the same way
            self._note(f"unreadable model message refused ({err}); keeping v{self.version}")
            return
        if version in self.received:
            return  # a re-send of a model already loaded or refused
        self.received.append(version)
        data = frames[2] if len(frames) > 2 else b""
        try:
            if hashlib.sha256(data).hexdigest() != header.get("sha256"):
                raise ValueError(f"sha256 mismatch ({len(data)} bytes received, {header.get('bytes')} announced)")
            verify_onnx(data)
            session = make_session(data, providers=self._providers)
        except Exception as err:  # noqa: BLE001
            kept = f"v{self.version}" if self.version is not None else "no model"
            self._note(f"model v{version} refused: {err}; keeping {kept}")
            return
        with self._lock:
            self._session, self.version = session, version
            self.stats.setdefault(version, VersionStats())
        self._note(f"model v{version} loaded ({len(data)} bytes, {header.get('updates')} updates)")

    def _note(self, text: str) -> None:
        with self._lock:
            self.events.append(text)

    def observe(self, sample: Sample) -> None:
        """Predict ``sample`` with the current model (if any) and count it under that version."""
        with self._lock:
            session, version = self._session, self.version
        if session is None or sample.label is None:
            return
        start = time.perf_counter()
        out = predict_sample(session, sample)
        if out is None:  # not the model's tensors (e.g. raw media, turned into features by the node only)
            return
        latency = 1000 * (time.perf_counter() - start)
        st = self.stats[version]
        st.n += 1
        st.correct += int(int(out["logits"][0].argmax()) == int(sample.label))
        st.latency_ms.append(latency)

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"model_version": self.version, "per_version": {str(v): s.as_dict() for v, s in sorted(self.stats.items())},
                    "events": list(self.events)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def predict_sample(session: Any, sample: Sample) -> dict[str, np.ndarray] | None:
    """The exported model's outputs (``logits``, ``<name>_logits``) on one sample, a batch of one: each of the
    model's inputs (read from the session: ``<name>`` and ``<name>_lengths`` per modality) fed from the
    sample's tensor of that name and its length (axis 0). None when the sample lacks one of the model's
    modalities (raw media, which only the node turns into features)."""
    from edge_runtime.export.onnx import LENGTHS, predict, session_modalities

    feeds: dict[str, np.ndarray] = {}
    for name in session_modalities(session):
        x = sample.tensors.get(name)
        if x is None:
            return None
        x = np.asarray(x)
        feeds[name] = x[None]
        feeds[name + LENGTHS] = np.array([x.shape[0] if x.ndim else 1], dtype=np.int64)
    return predict(session, feeds)
