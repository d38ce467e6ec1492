"""Start-up checks of ``edge-node run``: configuration and state problems found before the node starts.

Each check raises :class:`StartupError`, whose message is one line naming the file or the
configuration key and what to do; ``edge-node`` prints it and exits 2 (with a traceback only under
``--debug``). First of all, before anything in the folder is created or changed, the node takes an
exclusive lock on ``node.state_dir`` (:func:`lock_state_dir`): a second node on the same folder stops
there, naming the pid and endpoint of the node that holds it. Then the checks, which are cheap (no
model is built, the replay store is not read):

* ``node.state_dir`` is a folder (created when missing) that this process can write, with room for
  ``START_FREE_BYTES`` (a probe file of that size is written and removed: a full disk, a quota or no
  free inode is one line naming the folder and the fix, exit 2, before ``state.db`` or ``node.json``
  is written; a disk that fills later is a state the running node reports, see
  :mod:`edge_runtime.ops.disk`);
* an existing ``state.db`` opens as an SQLite database;
* ``node.metrics_port`` is free on ``node.metrics_host``;
* ``device`` names a device this machine has (``cuda`` needs a CUDA GPU).

Problems that only show while the node starts (every checkpoint damaged, a checkpoint written
under another configuration) are raised as :class:`edge_runtime.learning.checkpoint.CheckpointError` and
reported the same way.
"""

from __future__ import annotations

import errno
import fcntl  # POSIX only (Linux, macOS): Windows is not a target of the node
import json
import os
import socket
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from edge_runtime.core.config import Config


class StartupError(RuntimeError):
    """The node cannot start with this configuration or state; the message names the file or key and the fix."""


#: Room the state folder must have at start: node.json, the lock, a new state.db and its WAL (a checkpoint
#: that does not fit later is retried while the node serves).
START_FREE_BYTES = 1 << 20
LOCK_FILE = ".lock"  # in node.state_dir: flock'ed by the node that uses the folder; JSON of its pid and endpoint
HOLDER_WAIT_S = 2.0  # how long a refused node waits for the holder to write its pid (it writes it right after locking)


class StateLock:
    """An exclusive ``flock`` on ``state_dir/.lock``, held for the life of the process.

    The kernel drops the lock when the process ends, however it ends (a SIGKILL too), so the lock of
    a dead node is simply taken by the next one: no pid file to judge stale. The file stays; after
    locking, the holder writes ``{"pid", "endpoint", "host", "started"}`` into it (in place, never
    replaced: the lock belongs to the file's inode) for the message a refused node prints.
    """

    def __init__(self, state_dir: Path, path: Path, fd: int) -> None:
        self.state_dir = state_dir
        self.path = path
        self.fd = fd
        self.info: dict[str, Any] = {"pid": os.getpid(), "endpoint": None, "host": socket.gethostname(), "started": time.time()}
        self._write()

    def record(self, **info: Any) -> None:
        """Add ``info`` (e.g. the bound endpoint) to what the lock file says about this node."""
        self.info.update(info)
        self._write()

    def _write(self) -> None:
        data = (json.dumps(self.info, default=str) + "\n").encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))


#: The locks this process holds (real path of the folder -> lock): taken once, never released, so
#: that a caller dropping its reference cannot close the file and free the folder by accident.
_HELD: dict[str, StateLock] = {}


def lock_state_dir(path: Path) -> StateLock:
    """Lock ``path`` (``node.state_dir``, created when missing) for this process, or raise :class:`StartupError`
    naming the pid and endpoint of the node that holds it. Creates at most the folder and its lock file;
    on a folder locked by another process it changes nothing. Calling it again in the same process
    returns the lock already held."""
    _check_is_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StartupError(_cannot_write(path, err)) from None
    held = _HELD.get(os.path.realpath(path))
    if held is not None:
        return held
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise StartupError(_cannot_write(path, err, f"cannot open the lock file {lock_path}")) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        try:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StartupError(_in_use_message(path, _holder(fd))) from None
            raise StartupError(f"node.state_dir: cannot lock {lock_path} ({err.strerror or err}); put node.state_dir "
                               "on a local file system that supports flock") from None
        finally:
            os.close(fd)
    try:
        lock = StateLock(path, lock_path, fd)
    except OSError as err:
        os.close(fd)
        raise StartupError(_cannot_write(path, err, f"cannot write the lock file {lock_path}")) from None
    _HELD[os.path.realpath(path)] = lock
    return lock


def _holder(fd: int) -> dict[str, Any]:
    """What the lock file says about its holder; it writes it just after locking, so wait briefly for it."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while True:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode())
            if isinstance(info, dict) and "pid" in info:
                return info
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return {}
        time.sleep(0.05)


def _in_use_message(path: Path, holder: dict[str, Any]) -> str:
    pid = holder.get("pid", "unknown")
    endpoint = holder.get("endpoint") or "not bound yet"
    host = holder.get("host")
    where = f", host {host}" if host and host != socket.gethostname() else ""
    return (f"node.state_dir: {path} is in use by another edge-node (pid {pid}, endpoint {endpoint}{where}); "
            f"stop that node first, or point node.state_dir at another folder (two nodes on one folder "
            "overwrite each other's state)")


def preflight(config: Config) -> StateLock:
    """Lock ``node.state_dir``, then run every start-up check of ``config``; the first problem raises
    :class:`StartupError`. The lock stays held for the life of the process (also when this returns)."""
    lock = lock_state_dir(Path(config.node.state_dir))  # first: nothing in the folder is touched before it
    state_dir = check_state_dir(Path(config.node.state_dir))
    check_state_db(state_dir / "state.db")
    if config.node.metrics_port:
        check_port_free(config.node.metrics_host, config.node.metrics_port)
    check_device(config.device)
    return lock


def check_state_dir(path: Path) -> Path:
    """``path`` exists (created if missing), is a folder, and a file can be created in it."""
    _check_is_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-")
    except OSError as err:
        raise StartupError(_cannot_write(path, err)) from None
    try:
        chunk = b"\0" * (64 << 10)
        for _ in range(START_FREE_BYTES // len(chunk)):  # written, not just reserved: a quota or a full disk fails here
            os.write(fd, chunk)
        os.fsync(fd)
    except OSError as err:
        raise StartupError(_cannot_write(path, err, f"no room for {START_FREE_BYTES >> 20} MiB")) from None
    finally:
        os.close(fd)
        os.unlink(probe)
    return path


def _check_is_folder(path: Path) -> None:
    key = "node.state_dir"
    if path.exists() and not path.is_dir():
        raise StartupError(f"{key}: {path} is a file, not a folder; point {key} at a folder (or move the file away)")


def _cannot_write(path: Path, err: OSError, what: str = "") -> str:
    key = "node.state_dir"
    detail = f"{what}: " if what else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"{key}: cannot write to {path} (its file system is full: {detail}{err.strerror or err}); free space "
                f"there (at least {START_FREE_BYTES >> 20} MiB) or point {key} at a folder on another file system")
    why = "read-only" if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else (err.strerror or str(err))
    return (f"{key}: cannot write to {path} ({why}: {detail}{err.strerror or err}); make it writable for this user "
            f"or point {key} at a writable folder")


def state_write_error(path: Path, err: OSError, what: str) -> StartupError:
    """The one-line start-up error for ``what`` (e.g. "cannot write node.json") failing in the state folder ``path``."""
    return StartupError(_cannot_write(path, err, what))


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
