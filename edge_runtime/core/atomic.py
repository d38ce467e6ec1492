"""The one way a file is replaced: a temporary file beside it, fsync, rename, fsync of the folder.

A reader sees the old file or the new one, never a part of either, and after this returns the new
file survives a power cut (the rename is durable only once the directory entry is synced). A
failure (a full disk, say) leaves the old file in place and no temporary file behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir"]


def fsync_dir(directory: str | Path) -> None:
    """Make the directory's entries (a rename, a new or deleted file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any], durable: bool = True) -> Path:
    """Replace ``path`` with what ``write(f)`` writes to a binary file object; returns ``path``.

    The temporary file is ``.<name>.<pid>.tmp`` in the same folder (so the rename never crosses
    file systems, and two processes never share one). ``durable=False`` skips both fsyncs: still
    all-or-nothing for a reader, but a power cut may bring the previous version back. Only for a
    view rewritten every second from state kept elsewhere (``status.json``), where two syncs a
    second would wear an SD card for nothing.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> Path:
    """Replace ``path`` with ``data`` (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), durable)


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> Path:
    """Replace ``path`` with ``text`` in UTF-8 (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1, durable: bool = True) -> Path:
    """Replace ``path`` with ``obj`` as JSON (see :func:`atomic_write`)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent), durable)
