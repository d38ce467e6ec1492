"""``edge-node state reset``: move a node's state folder aside, so that the next start begins fresh.

Changing a node's class count or model on purpose is this explicit step, never a side effect of
``edge-node run`` (which refuses a configuration that does not fit the stored state, see
:mod:`edge_runtime.node.compat`). Nothing is deleted: the folder is renamed to
``DIR.bak-YYYYmmdd-HHMMSS`` beside it. While a node holds the folder's lock (``DIR/.lock``, see
:func:`edge_runtime.node.startup.lock_state_dir`) the reset is refused; the lock is held by the
reset itself during the rename, so a node starting at that moment is refused instead.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.node.startup import LOCK_FILE, StartupError, _holder

#: Files and folders of which at least one marks a node's state folder (a reset refuses any other folder).
STATE_MARKERS = ("state.db", "node.json", "checkpoints", LOCK_FILE, "summary.json", "status.json")


@dataclass(frozen=True)
class StateFolder:
    """What a state folder holds, for the confirmation question."""

    path: Path
    checkpoints: int
    newest_checkpoint: str | None
    state_db_bytes: int


def describe(path: Path) -> StateFolder:
    """The state folder ``path``; :class:`StartupError` when it is missing or not a node's state folder."""
    if not path.is_dir():
        raise StartupError(f"--state-dir {path}: no such folder; nothing to reset")
    if not any((path / name).exists() for name in STATE_MARKERS):
        raise StartupError(f"--state-dir {path} does not look like a node's state folder (none of "
                           f"{', '.join(STATE_MARKERS)}); nothing moved")
    ckpts = sorted((path / "checkpoints").glob("ckpt-*.pt")) if (path / "checkpoints").is_dir() else []
    db = path / "state.db"
    return StateFolder(path, len(ckpts), ckpts[-1].name if ckpts else None, db.stat().st_size if db.exists() else 0)


def backup_path(path: Path, now: float | None = None) -> Path:
    """``DIR.bak-YYYYmmdd-HHMMSS`` beside ``path`` (``-2``, ``-3``, ... appended when that name is taken)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    return candidate


def _lock_or_refuse(path: Path) -> int | None:
    """Take the folder's lock (the descriptor; None when the folder has no lock file: no node ever ran
    there); :class:`StartupError` naming the holder when a node holds it."""
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StartupError(f"--state-dir {path}: cannot open its lock file {lock_path} ({err.strerror}); nothing moved") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        busy = err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
        holder = _holder(fd) if busy else {}
        os.close(fd)
        if not busy:
            raise StartupError(f"--state-dir {path}: cannot lock {lock_path} ({err.strerror}); nothing moved") from None
        raise StartupError(f"--state-dir {path} is in use by a running edge-node (pid {holder.get('pid', 'unknown')}, "
                           f"endpoint {holder.get('endpoint') or 'not bound yet'}); stop it first (SIGTERM or Ctrl-C: "
                           "it checkpoints and exits), then reset; nothing moved") from None
    return fd


def reset_state_dir(path: str | Path, now: float | None = None) -> Path:
    """Move the state folder ``path`` to :func:`backup_path` (never deleting anything) and return the backup.

    Refused (:class:`StartupError`, the folder unchanged) when ``path`` is missing, is not a node's
    state folder, or is locked by a running node.
    """
    path = Path(path)
    describe(path)
    fd = _lock_or_refuse(path)
    try:
        backup = backup_path(path, now)
        try:
            os.rename(path, backup)
        except OSError as err:
            raise StartupError(f"cannot move {path} to {backup} ({err.strerror}); nothing moved") from None
    finally:
        if fd is not None:
            os.close(fd)
    return backup
