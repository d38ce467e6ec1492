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

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "fsync_dir", "overwrite_in_place"]


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


def overwrite_in_place(path: str | Path, data: bytes, pad: bytes = b" ") -> bool:
    """Write ``data`` over the existing ``path`` without allocating: only when it fits in the blocks the file
    already holds; padded with ``pad`` to the file's size (trailing spaces are valid JSON), never truncated.

    For a full disk, where :func:`atomic_write`'s temporary file cannot be created: a reader may see a torn
    file while this runs (so only for a view a reader may re-read, ``status.json``). Returns False, changing
    nothing, when ``path`` is missing or ``data`` does not fit.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if len(data) > max(st.st_size, st.st_blocks * 512):
            return False
        data = data + pad * (st.st_size - len(data)) if len(data) < st.st_size else data
        os.pwrite(fd, data, 0)
        return True
    finally:
        os.close(fd)
