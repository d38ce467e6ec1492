"""CurveZMQ on the node's ROUTER socket: the server certificate, ZAP over the allowed keys, their reload.

A device connects only with a public key found in ``node.curve.allowed_keys_dir`` (ZAP, run by
pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator`). The folder is re-read every
``node.curve.reload_s``: a removed key opens no new connection, and :meth:`CurveServer.allows`
tells the IO thread to refuse further messages of a connection already open with it.
A ``*.key`` file that cannot be read or holds no valid public key (empty or half-written by a copy in
progress, not ASCII) is skipped with one warning per distinct problem and read once it is whole; the
other keys keep working meanwhile.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from edge_runtime.core.config import CurveConfig
from edge_runtime.node.logs import NODE_LOGGER

log = logging.getLogger(NODE_LOGGER)


def check_curve_config(curve: CurveConfig) -> None:
    """Both files of ``node.curve`` are set and exist; else ``ValueError`` naming the key and the fix."""
    if not curve.server_secret_key or not curve.allowed_keys_dir:
        raise ValueError("node.curve.enabled needs node.curve.server_secret_key and node.curve.allowed_keys_dir "
                         "(create them with: edge-node keys DIR)")
    for key, value in (("server_secret_key", curve.server_secret_key), ("allowed_keys_dir", curve.allowed_keys_dir)):
        if not Path(value).exists():
            raise ValueError(f"node.curve.{key}: {value} does not exist (create keys with: edge-node keys DIR)")


def read_public_key(path: str | os.PathLike) -> bytes:
    """The Z85 public key of a ``*.key`` certificate file; ``OSError`` when it cannot be read,
    ``ValueError`` saying what is wrong when it holds no valid key (40 Z85 characters, 32 bytes)."""
    public, _ = zmq.auth.load_certificate(path)  # OSError; ValueError when there is no public-key line
    try:
        text = public.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("its public-key is not ASCII (Z85 text)") from None
    if len(text) != 40:
        raise ValueError(f"its public-key has {len(text)} characters, not 40 (a Z85 CURVE key)")
    try:
        z85.decode(public)
    except (KeyError, ValueError, struct.error):  # a character outside the Z85 alphabet, a value over 2**32
        raise ValueError("its public-key is not valid Z85") from None
    return public


class CurveServer:
    """The authenticator of one ZeroMQ context and the set of allowed keys (Z85), re-read on a timer.

    Built by :func:`secure_socket`; the IO thread calls :meth:`maybe_reload` and :meth:`allows`,
    and :meth:`stop` before the context terminates.
    """

    def __init__(self, ctx: zmq.Context, curve: CurveConfig, now: float) -> None:
        self.location = str(curve.allowed_keys_dir)
        self.reload_s = curve.reload_s
        self.allowed: set[str] | None = None  # None: the folder could not be read yet
        self._next_reload = now + curve.reload_s
        self._problems: dict[str, str] = {}  # key file -> what was wrong with it at the last reload (warned once)
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self.reload()

    def reload(self) -> None:
        """Re-read the allowed keys; an unreadable folder keeps the keys read before (and logs why), an
        unreadable or malformed key file is left out (one warning per distinct problem of each file)."""
        try:
            names = sorted(n for n in os.listdir(self.location) if n.endswith(".key") and not n.startswith("."))
        except OSError as err:
            log.error("cannot read node.curve.allowed_keys_dir; keeping the keys read before",
                      extra={"event": "keys_unreadable", "path": self.location, "error": str(err)})
            return
        certs: dict[bytes, bool] = {}
        problems: dict[str, str] = {}
        for name in names:
            path = os.path.join(self.location, name)
            try:
                certs[read_public_key(path)] = True
            except (OSError, ValueError) as err:
                problems[path] = str(err)
                if self._problems.get(path) != problems[path]:
                    log.warning(f"skipping key file {path} of node.curve.allowed_keys_dir: {err} (a copy in progress? "
                                "it is read again every node.curve.reload_s; the other keys are unaffected)",
                                extra={"event": "key_file_skipped", "path": path, "error": str(err)})
            else:
                if path in self._problems:
                    log.info(f"key file {path} read", extra={"event": "key_file_read", "path": path})
        self._problems = problems
        self._auth.certs["*"] = certs  # what configure_curve(domain="*", location) sets, without re-reading
        self._auth.allow_any = False
        self.allowed = {k.decode("ascii") for k in certs}

    def maybe_reload(self, now: float) -> None:
        """:meth:`reload` when ``node.curve.reload_s`` has passed since the last one."""
        if now >= self._next_reload:
            self.reload()
            self._next_reload = now + self.reload_s

    def allows(self, key: str) -> bool:
        """Whether messages of a connection authenticated with ``key`` are still taken."""
        return self.allowed is None or key in self.allowed

    def stop(self) -> None:
        self._auth.stop()


def secure_socket(ctx: zmq.Context, sock: zmq.Socket, curve: CurveConfig, now: float) -> CurveServer:
    """Make ``sock`` a CURVE server with ``node.curve.server_secret_key``, devices authenticated by ZAP."""
    check_curve_config(curve)
    server = CurveServer(ctx, curve, now)
    public, secret = zmq.auth.load_certificate(curve.server_secret_key)
    if secret is None:
        raise ValueError(f"node.curve.server_secret_key: {curve.server_secret_key} holds no secret key; "
                         "point it at the *.key_secret file")
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_server = True
    return server
