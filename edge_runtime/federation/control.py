"""The node's local control channel: ``status``, ``get`` and ``put`` of model weights and prototypes.

Used by the Flower ClientApp of ``edge_runtime.federation`` (a short-lived process) to talk to the
running ``edge-node`` daemon, which stays the owner of the model, buffer and prototypes. The
framing is wire v1's (:mod:`edge_runtime.core.codec`): frame 0 is a msgpack header, frames 1..n
are the raw little-endian, C-contiguous bytes of the arrays named in ``header["arrays"]``
(``{"name", "dtype", "shape"}``), in order. Nothing is pickled. This module imports no torch.

Requests (client -> node) and replies:

* ``{"v":1,"type":"status"}`` -> ``{"v":1,"type":"status","round":int,"samples_since_round":int,"samples_total":int}``
* ``{"v":1,"type":"get"}`` -> the same header with ``"type":"state"`` and ``"arrays"``: the model's
  weights (``model.<name>``) and the prototypes (``proto.<modality>``, ``proto.counts``)
* ``{"v":1,"type":"put","round":int,"arrays":[...],"proximal_mu":float}`` -> ``{"v":1,"type":"ok","round":int}``
* any failure -> ``{"v":1,"type":"error","code":str,"msg":str}``; a mismatched put is ``code
  "mismatch"`` and its message names the array.

The server side records every message it receives and sends (header keys, array names, dtypes,
shapes, bytes) in a JSON-lines file, so what crossed the channel can be inspected afterwards.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import zmq

from edge_runtime.core import codec

VERSION = 1
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64", "int32", "int64", "uint8", "bool"})
MAX_ARRAYS = 4096


class ControlError(RuntimeError):
    """A control request failed; ``code`` is machine-readable (``mismatch``, ``timeout``, ``bad_request``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------------- framing
def encode(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> list[bytes]:
    """``header`` (plus an ``arrays`` list describing ``arrays``) and one raw frame per array."""
    head = dict(header)
    frames: list[memoryview] = []
    if arrays is not None:
        head["arrays"], frames = codec.array_frames(arrays)
    head.setdefault("v", VERSION)
    return [codec.pack_header(head), *(bytes(f) for f in frames)]


def decode(frames: list[bytes]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of :func:`encode`; a malformed message raises :class:`ControlError` (``bad_request``)."""
    if not frames:
        raise ControlError("bad_request", "empty message")
    try:
        header = codec.unpack_header(frames[0])
        if header.get("v") != VERSION or not isinstance(header.get("type"), str):
            raise ControlError("bad_request", f"header must be a map with v={VERSION} and a type")
        specs = header.get("arrays", [])
        if not isinstance(specs, list) or len(specs) > MAX_ARRAYS or len(specs) != len(frames) - 1:
            raise ControlError("bad_request", f"header lists {len(specs) if isinstance(specs, list) else '?'} "
                               f"arrays but {len(frames) - 1} frames follow")
        arrays = codec.to_arrays(codec.read_specs(specs, allowed=ALLOWED_DTYPES), frames[1:])
    except codec.CodecError as err:
        raise ControlError("bad_request", err.message) from None
    return header, arrays


def error_frames(code: str, message: str) -> list[bytes]:
    return encode({"type": "error", "code": code, "msg": message})


def _describe(header: Mapping[str, Any], frames: list[bytes]) -> dict[str, Any]:
    """What the record file keeps of one message: header fields and array specs, never array contents."""
    rec = {k: v for k, v in header.items() if k != "arrays"}
    rec["arrays"] = header.get("arrays", [])
    rec["bytes"] = sum(len(f) for f in frames)
    return rec


# ---------------------------------------------------------------------- server
Handler = Callable[[dict[str, Any], dict[str, np.ndarray]], tuple[dict[str, Any], Mapping[str, np.ndarray] | None]]


class ControlServer:
    """A ROUTER socket served by its own thread; ``handlers[type](header, arrays) -> (header, arrays)``.

    A handler raising :class:`ControlError` (or ``ValueError``) becomes an ``error`` reply; the
    server never stops on bad input.
    """

    def __init__(self, bind: str, handlers: Mapping[str, Handler], records: Path | None = None) -> None:
        self.bind = bind
        self.handlers = dict(handlers)
        self.records = records
        self.endpoint: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None

    def start(self) -> str:
        """Bind and start serving; returns the bound endpoint."""
        if self.bind.startswith("ipc://"):
            path = Path(self.bind[len("ipc://"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                path.unlink()  # left by a node that was killed; it is ours (state_dir)
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(self.bind)
        except zmq.ZMQError as err:
            sock.close(0)
            self._ctx.term()
            raise ValueError(f"federation.control_bind: cannot bind {self.bind} ({err}); use ipc://PATH or tcp://127.0.0.1:*") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        return self.endpoint

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._ctx is not None:
            self._ctx.term()

    def _record(self, direction: str, header: Mapping[str, Any], frames: list[bytes]) -> None:
        if self.records is None:
            return
        line = json.dumps({"ts": round(time.time(), 3), "dir": direction, **_describe(header, frames)})
        with open(self.records, "a") as f:
            f.write(line + "\n")

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                msg = sock.recv_multipart()
                rid, body = msg[0], msg[1:]
                if body and body[0] == b"":
                    body = body[1:]  # a REQ client's empty delimiter
                reply = self._answer(body)
                try:
                    sock.send_multipart([rid, b"", *reply], zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # the client went away; it retries with a new request
        finally:
            sock.close(0)

    def _answer(self, body: list[bytes]) -> list[bytes]:
        try:
            header, arrays = decode(body)
            self._record("in", header, body)
            handler = self.handlers.get(header["type"])
            if handler is None:
                raise ControlError("bad_request", f"unknown request type {header['type']!r}; use one of {sorted(self.handlers)}")
            out_header, out_arrays = handler(header, arrays)
            reply = encode(out_header, out_arrays)
            self._record("out", codec.unpack_header(reply[0]), reply)
            return reply
        except ControlError as err:
            reply = error_frames(err.code, err.message)
        except ValueError as err:
            reply = error_frames("bad_request", str(err))
        except Exception as err:  # a bug in a handler: answer, keep serving
            reply = error_frames("internal", f"{type(err).__name__}: {err}")
        self._record("out", codec.unpack_header(reply[0]), reply)
        return reply


# ---------------------------------------------------------------------- client
class ControlClient:
    """A REQ client with a timeout per request; a fresh socket per request (the ClientApp is short-lived)."""

    def __init__(self, endpoint: str, timeout_s: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_s * 1000)
        self._ctx = zmq.Context.instance()

    def request(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        try:
            sock.connect(self.endpoint)
            sock.send_multipart(encode(header, arrays))
            frames = sock.recv_multipart()
        except zmq.Again:
            raise ControlError("timeout", f"the edge node at {self.endpoint} did not answer {header.get('type')!r} "
                               f"within {self.timeout_ms / 1000:.1f} s; is `edge-node run` up with federation.enabled=true?") from None
        finally:
            sock.close(0)
        out, out_arrays = decode(frames)
        if out.get("type") == "error":
            raise ControlError(str(out.get("code")), str(out.get("msg")))
        return out, out_arrays

    def status(self) -> dict[str, Any]:
        return self.request({"type": "status"})[0]

    def get(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return self.request({"type": "get"})

    def put(self, round_: int, arrays: Mapping[str, np.ndarray], proximal_mu: float = 0.0) -> dict[str, Any]:
        return self.request({"type": "put", "round": int(round_), "proximal_mu": float(proximal_mu)}, arrays)[0]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The control-channel records of a node (one dict per message)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
