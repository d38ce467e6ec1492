"""Start-up checks of ``edge-node run``: configuration and state problems found before the node starts.

Each check raises :class:`StartupError`, whose message is one line naming the file or the
configuration key and what to do; ``edge-node`` prints it and exits 2 (with a traceback only under
``--debug``). The checks are cheap (no model is built, the replay store is not read):

* ``node.state_dir`` is a folder (created when missing) that this process can write;
* an existing ``state.db`` opens as an SQLite database;
* ``node.metrics_port`` is free on ``node.metrics_host``;
* ``device`` names a device this machine has (``cuda`` needs a CUDA GPU).

Problems that only show while the node starts (every checkpoint damaged, a checkpoint written
under another configuration) are raised as :class:`edge_runtime.learning.checkpoint.CheckpointError` and
reported the same way.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
import tempfile
from pathlib import Path

from edge_runtime.core.config import Config


class StartupError(RuntimeError):
    """The node cannot start with this configuration or state; the message names the file or key and the fix."""


def preflight(config: Config) -> None:
    """Run every start-up check of ``config``; the first problem raises :class:`StartupError`."""
    state_dir = check_state_dir(Path(config.node.state_dir))
    check_state_db(state_dir / "state.db")
    if config.node.metrics_port:
        check_port_free(config.node.metrics_host, config.node.metrics_port)
    check_device(config.device)


def check_state_dir(path: Path) -> Path:
    """``path`` exists (created if missing), is a folder, and a file can be created in it."""
    key = "node.state_dir"
    if path.exists() and not path.is_dir():
        raise StartupError(f"{key}: {path} is a file, not a folder; point {key} at a folder (or move the file away)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        why = "read-only" if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else (err.strerror or str(err))
        raise StartupError(f"{key}: cannot write to {path} ({why}: {err.strerror}); make it writable for this user "
                           f"or point {key} at a writable folder") from None
    return path


def check_state_db(path: Path) -> None:
    """An existing ``path`` is an SQLite database whose first page reads; a missing one is fine (created)."""
    if not path.exists():
        return
    if not path.is_file():
        raise StartupError(f"{path} is not a regular file; move it away (the node creates a fresh state.db)")
    try:
        conn = sqlite3.connect(path)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise StartupError(
            f"{path} is damaged or not an SQLite database ({err}); restore it from a backup, or move it aside "
            f"(mv {path} {path}.bad) to start with an empty replay buffer and verdict ledger") from None


def check_port_free(host: str, port: int) -> None:
    """Nothing listens on ``host:port`` (bound the way the metrics HTTP server binds, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise StartupError(metrics_port_message(host, port, err)) from None


def metrics_port_message(host: str, port: int, err: OSError) -> str:
    """The one-line error for a metrics endpoint that cannot bind."""
    return (f"node.metrics_port: cannot serve metrics on {host}:{port} ({err.strerror or err}); pick a free port, "
            "0 for any free one, or null to turn metrics off")


def check_device(name: str) -> None:
    """``device`` is usable here: ``cuda`` / ``cuda:N`` need a CUDA GPU (with index N); ``cpu`` and ``auto`` always are."""
    if not name.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise StartupError(f"device: {name!r} but CUDA is not available on this machine (no GPU or no CUDA build of "
                           "torch); set device: cpu, or auto to use a GPU when there is one")
    index = torch.device(name).index
    if index is not None and index >= torch.cuda.device_count():
        raise StartupError(f"device: {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                           f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1}); pick one of them")
