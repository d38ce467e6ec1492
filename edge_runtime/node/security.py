"""CurveZMQ on the node's ROUTER socket: the server certificate, ZAP over the allowed keys, their reload.

A device connects only with a public key found in ``node.curve.allowed_keys_dir`` (ZAP, run by
pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator`). The folder is re-read every
``node.curve.reload_s``: a removed key opens no new connection, and :meth:`CurveServer.allows`
tells the IO thread to refuse further messages of a connection already open with it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

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
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self.reload()

    def reload(self) -> None:
        """Re-read the allowed keys; an unreadable folder keeps the keys read before (and logs why)."""
        try:
            certs = zmq.auth.load_certificates(self.location)
        except OSError as err:
            log.error("cannot read node.curve.allowed_keys_dir; keeping the keys read before",
                      extra={"event": "keys_unreadable", "path": self.location, "error": str(err)})
            return
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
