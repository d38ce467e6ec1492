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
* any failure -> ``{"v":1,"type":"error","code":str,"msg":str}``; codes: ``bad_request`` (a field is
  missing, of the wrong type or out of its range), ``mismatch`` (a put's array names, dtypes or shapes
  differ from the model's, or a value is NaN/Inf; the message names the array), ``out_of_range`` (a
  put's value beyond ``federation.max_abs_weight``), ``too_large`` (more frames or bytes than
  ``federation.control_max_bytes`` allows), ``busy``, ``internal``.

Limits (docs/federation.md, "Control channel limits"): libzmq drops a connection whose frame exceeds
``max_bytes`` (MAXMSGSIZE) before reading it; a message's frame count and total size are checked
once it has arrived; at most ``RCVHWM`` messages wait per connection.

The server side records every message it receives and sends (header keys, array names, dtypes,
shapes, bytes; strings cut to :data:`RECORD_STR_MAX` characters) in a JSON-lines file, rotated to
``<file>.1`` at ``log_max_bytes``, so what crossed the channel can be inspected afterwards. A record
that cannot be written (a full disk) is dropped, logged once and retried with backoff; the channel
keeps answering.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import zmq
import zmq.auth
from zmq.utils import z85

from edge_runtime.core import codec

log = logging.getLogger("edge_runtime.federation")

VERSION = 1
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64", "int32", "int64", "uint8", "bool"})
MAX_ARRAYS = 4096
HEADER_MAX_BYTES = 2**20  #: frame 0 (a mobilenet_v2 put's header is about 40 KB)
DEFAULT_MAX_BYTES = 64 * 2**20
DEFAULT_LOG_MAX_BYTES = 8 * 2**20
RCVHWM = 2  #: messages queued per connection before libzmq stops reading it
RECORD_STR_MAX = 200  #: a header string (or key, or array name) is cut to this many characters in a record
RECORD_KEYS_MAX = 32  #: header keys kept in a record
RECORD_ARRAYS_MAX = 512  #: array specs kept in a record (the rest counted in ``arrays_omitted``)
RECORD_RETRY_MAX_S = 5.0  #: longest wait before a failed record write is tried again


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
        header = codec.unpack_header(frames[0], max_bytes=HEADER_MAX_BYTES)
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


def _cut(value: Any) -> Any:
    """A header value as a record keeps it: numbers and booleans as they are, strings cut, anything else summarised."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= RECORD_STR_MAX else value[:RECORD_STR_MAX] + f"...({len(value)} chars)"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return _cut(codec.short(value, RECORD_STR_MAX))


def _describe(header: Mapping[str, Any], frames: list[bytes]) -> dict[str, Any]:
    """What the record file keeps of one message: header fields (cut) and array specs, never array contents."""
    keys = [k for k in header if k != "arrays"]
    rec: dict[str, Any] = {str(_cut(k)): _cut(header[k]) for k in keys[:RECORD_KEYS_MAX]}
    if len(keys) > RECORD_KEYS_MAX:
        rec["keys_omitted"] = len(keys) - RECORD_KEYS_MAX
    specs = header.get("arrays", [])
    specs = specs if isinstance(specs, list) else []
    rec["arrays"] = [{"name": _cut(a.get("name")), "dtype": _cut(a.get("dtype")), "shape": _cut(a.get("shape"))}
                     if isinstance(a, dict) else _cut(a) for a in specs[:RECORD_ARRAYS_MAX]]
    if len(specs) > RECORD_ARRAYS_MAX:
        rec["arrays_omitted"] = len(specs) - RECORD_ARRAYS_MAX
    rec["bytes"] = sum(len(f) for f in frames)
    return rec


# ---------------------------------------------------------------------- CURVE
@dataclass(frozen=True)
class CurveKeys:
    """The node's CURVE files for a remote control channel (``node.curve.*``; ``edge-node keys DIR`` makes them)."""

    server_secret_key: str
    allowed_keys_dir: str
    reload_s: float = 2.0


def _public_key(path: str) -> bytes:
    """The Z85 public key of a ``*.key`` file; ``OSError`` / ``ValueError`` when it holds none."""
    public, _ = zmq.auth.load_certificate(path)
    if len(public) != 40:
        raise ValueError(f"its public-key has {len(public)} characters, not 40")
    try:
        z85.decode(public)
    except (KeyError, ValueError, struct.error):
        raise ValueError("its public-key is not valid Z85") from None
    return public


class _KeyRing:
    """ZAP for the control socket: the allowed keys of ``allowed_keys_dir``, re-read every ``reload_s``.

    The same rules as the device port's (``edge_runtime.node.security``, which federation may not
    import): a key file that cannot be read or holds no valid key is skipped with one warning.
    """

    def __init__(self, ctx: zmq.Context, keys: CurveKeys) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self.keys = keys
        self._problems: dict[str, str] = {}
        self._next = 0.0
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self.reload()

    def reload(self) -> None:
        try:
            names = sorted(n for n in os.listdir(self.keys.allowed_keys_dir) if n.endswith(".key") and not n.startswith("."))
        except OSError as err:
            log.error("cannot read node.curve.allowed_keys_dir for the control channel; keeping the keys read before",
                      extra={"event": "control_keys_unreadable", "error": str(err)})
            return
        certs: dict[bytes, bool] = {}
        problems: dict[str, str] = {}
        for name in names:
            path = os.path.join(self.keys.allowed_keys_dir, name)
            try:
                certs[_public_key(path)] = True
            except (OSError, ValueError) as err:
                problems[path] = str(err)
                if self._problems.get(path) != problems[path]:
                    log.warning(f"control channel: skipping key file {path}: {err}", extra={"event": "key_file_skipped", "path": path})
        self._problems = problems
        self._auth.certs["*"] = certs
        self._auth.allow_any = False
        self._next = time.monotonic() + self.keys.reload_s

    def maybe_reload(self) -> None:
        if time.monotonic() >= self._next:
            self.reload()

    def secure(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE server with the node's secret key."""
        public, secret = zmq.auth.load_certificate(self.keys.server_secret_key)
        if secret is None:
            raise ValueError(f"node.curve.server_secret_key: {self.keys.server_secret_key} holds no secret key; "
                             "point it at the *.key_secret file")
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_server = True

    def stop(self) -> None:
        self._auth.stop()


# ---------------------------------------------------------------------- server
Handler = Callable[[dict[str, Any], dict[str, np.ndarray]], tuple[dict[str, Any], Mapping[str, np.ndarray] | None]]


class ControlServer:
    """A ROUTER socket served by its own thread; ``handlers[type](header, arrays) -> (header, arrays)``.

    A handler raising :class:`ControlError` (or ``ValueError``) becomes an ``error`` reply; any other
    failure of one request (a handler's bug, a record write on a full disk, memory) is logged and the
    thread goes on serving: the server never stops on bad input.
    """

    def __init__(self, bind: str, handlers: Mapping[str, Handler], records: Path | None = None, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_frames: int = MAX_ARRAYS + 1,
                 log_max_bytes: int = DEFAULT_LOG_MAX_BYTES, curve: CurveKeys | None = None) -> None:
        self.bind = bind
        self.handlers = dict(handlers)
        self.records = records
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self.log_max_bytes = log_max_bytes
        self.curve = curve
        self.endpoint: str | None = None
        self.failures = 0  #: requests whose handling failed outside the handlers (logged)
        self.records_dropped = 0  #: records not written (a full disk)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._keyring: _KeyRing | None = None
        self._log_size = 0
        self._write_failures = 0
        self._retry_at = 0.0

    def start(self) -> str:
        """Bind and start serving; returns the bound endpoint."""
        ipc = self.bind.startswith("ipc://")
        if ipc:
            path = Path(self.bind[len("ipc://"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                path.unlink()  # left by a node that was killed; it is ours (state_dir)
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_bytes)
        sock.setsockopt(zmq.RCVHWM, RCVHWM)
        if "[" in self.bind:
            sock.setsockopt(zmq.IPV6, 1)
        try:
            if self.curve is not None:
                self._keyring = _KeyRing(self._ctx, self.curve)
                self._keyring.secure(sock)
            old_umask = os.umask(0o177) if ipc else None  # the socket file is born 0600: no window for another user
            try:
                sock.bind(self.bind)
            finally:
                if old_umask is not None:
                    os.umask(old_umask)
        except (zmq.ZMQError, OSError, ValueError) as err:
            self._close(sock)
            if isinstance(err, ValueError):
                raise
            raise ValueError(f"federation.control_bind: cannot bind {self.bind} ({err}); use ipc://PATH or tcp://127.0.0.1:*") from None
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if ipc:
            os.chmod(self.endpoint[len("ipc://"):], 0o600)
        if self.records is not None:
            try:
                self._log_size = self.records.stat().st_size
            except OSError:
                self._log_size = 0
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        return self.endpoint

    def _close(self, sock: zmq.Socket) -> None:
        sock.close(0)
        if self._keyring is not None:
            self._keyring.stop()
            self._keyring = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._keyring is not None:
            self._keyring.stop()
        if self._ctx is not None:
            self._ctx.term()

    @property
    def alive(self) -> bool:
        """Whether the control thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ records
    def _record(self, direction: str, header: Mapping[str, Any], frames: list[bytes]) -> None:
        """Append one record; on a full disk (any ``OSError``) drop it, log once, retry with backoff."""
        if self.records is None:
            return
        now = time.monotonic()
        if now < self._retry_at:
            self.records_dropped += 1
            return
        try:
            line = (json.dumps({"ts": round(time.time(), 3), "dir": direction, **_describe(header, frames)}) + "\n").encode()
        except Exception as err:  # a header no record can describe: the answer goes out all the same
            self.records_dropped += 1
            log.warning(f"control record not written ({type(err).__name__}: {codec.short(str(err), 200)})",
                        extra={"event": "control_record_failed"})
            return
        try:
            if self._log_size and self._log_size + len(line) > self.log_max_bytes:
                os.replace(self.records, self.records.with_name(self.records.name + ".1"))
                self._log_size = 0
            with open(self.records, "ab") as f:
                f.write(line)
            self._log_size += len(line)
        except OSError as err:
            self.records_dropped += 1
            self._write_failures += 1
            self._retry_at = now + min(0.5 * 2 ** self._write_failures, RECORD_RETRY_MAX_S)
            if self._write_failures == 1:
                log.error(f"cannot write the control record file {self.records} ({err}); records are dropped and the "
                          f"write retried every {RECORD_RETRY_MAX_S:.0f} s at most, the control channel keeps answering",
                          extra={"event": "control_record_failed", "error": str(err),
                                 "enospc": getattr(err, "errno", None) == errno.ENOSPC})
            return
        if self._write_failures:
            log.warning("control records are written again", extra={"event": "control_record_resumed", "dropped": self.records_dropped})
            self._write_failures = 0

    # ------------------------------------------------------------------ thread
    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        streak = 0
        try:
            while not self._stop.is_set():
                try:
                    self._serve_one(sock, poller)
                    streak = 0
                except zmq.ContextTerminated:
                    break
                except Exception as err:  # one request's failure (memory, a bug): log it, keep serving
                    self.failures += 1
                    streak += 1
                    log.error(f"control request failed ({type(err).__name__}: {codec.short(str(err), 200)}); the control "
                              "channel keeps serving", exc_info=True, extra={"event": "control_failed"})
                    self._stop.wait(min(0.01 * 2 ** min(streak, 8), 2.0))  # a failure that repeats does not spin
        finally:
            sock.close(0)

    def _serve_one(self, sock: zmq.Socket, poller: zmq.Poller) -> None:
        if self._keyring is not None:
            self._keyring.maybe_reload()
        if not poller.poll(100):
            return
        try:
            msg = sock.recv_multipart(zmq.NOBLOCK, copy=False)  # frames stay libzmq's buffers: no second copy
        except zmq.Again:
            return
        rid, body = msg[0].bytes, msg[1:]
        if body and len(body[0]) == 0:
            body = body[1:]  # a REQ client's empty delimiter
        reply = self._answer(body)
        try:
            sock.send_multipart([rid, b"", *reply], zmq.NOBLOCK)
        except zmq.Again:
            pass  # the client went away; it retries with a new request
        except zmq.ZMQError as err:
            if err.errno == zmq.ETERM:
                raise zmq.ContextTerminated() from None

    def _answer(self, body: list[bytes]) -> list[bytes]:
        try:
            size = sum(len(f) for f in body)
            if len(body) > self.max_frames or size > self.max_bytes:
                raise ControlError("too_large", f"a control message may have {self.max_frames} frames and {self.max_bytes} bytes "
                                                f"(federation.control_max_bytes); this one has {len(body)} and {size}")
            header, arrays = decode(body)
            self._record("in", header, body)
            handler = self.handlers.get(header["type"])
            if handler is None:
                raise ControlError("bad_request", f"unknown request type {codec.short(header['type'])}; use one of {sorted(self.handlers)}")
            out_header, out_arrays = handler(header, arrays)
            reply = encode(out_header, out_arrays)
            self._record("out", codec.unpack_header(reply[0]), reply)
            return reply
        except ControlError as err:
            reply = error_frames(err.code, err.message)
        except ValueError as err:
            reply = error_frames("bad_request", codec.short(str(err), 500))
        except Exception as err:  # a bug in a handler: answer, keep serving
            reply = error_frames("internal", f"{type(err).__name__}: {codec.short(str(err), 500)}")
        self._record("out", codec.unpack_header(reply[0]), reply)
        return reply


# ---------------------------------------------------------------------- client
class ControlClient:
    """A REQ client with a timeout per request; a fresh socket per request (the ClientApp is short-lived).

    ``curve`` = (client public key, client secret key, server public key), Z85, for a node whose control
    channel is remote (``federation.control_allow_remote``); see :func:`client_curve_keys`.
    """

    def __init__(self, endpoint: str, timeout_s: float = 5.0, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(timeout_s * 1000)
        self.curve = curve
        self._ctx = zmq.Context.instance()

    def request(self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, self.timeout_ms)
        sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
        if self.curve is not None:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self.curve
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

    def get(self, round_: int | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The node's shared arrays; ``round_`` marks the get of a round's ``train`` reply (the node then
        carries what it learns after it over the round's merge, see ``node_link.FederationLink``)."""
        return self.request({"type": "get"} if round_ is None else {"type": "get", "round": int(round_)})

    def put(self, round_: int, arrays: Mapping[str, np.ndarray], proximal_mu: float = 0.0) -> dict[str, Any]:
        return self.request({"type": "put", "round": int(round_), "proximal_mu": float(proximal_mu)}, arrays)[0]


def client_curve_keys(client_secret_key: str | os.PathLike, server_public_key: str | os.PathLike) -> tuple[bytes, bytes, bytes]:
    """``ControlClient(curve=...)`` from a client's ``*.key_secret`` file and the node's ``server.key`` file."""
    public, secret = zmq.auth.load_certificate(client_secret_key)
    if secret is None:
        raise ValueError(f"{client_secret_key} holds no secret key; point it at the client's *.key_secret file")
    server, _ = zmq.auth.load_certificate(server_public_key)
    return public, secret, server


def read_records(path: Path, rotated: bool = False) -> list[dict[str, Any]]:
    """The control-channel records of a node (one dict per message); ``rotated``: the older file first."""
    paths = ([path.with_name(path.name + ".1")] if rotated else []) + [path]
    return [json.loads(line) for p in paths if p.exists() for line in p.read_text().splitlines() if line.strip()]
