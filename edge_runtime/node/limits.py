"""Process limits the node sets at start: the descriptor limit, and the connection cap that stays under it."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource

from edge_runtime.node.logs import NODE_LOGGER

log = logging.getLogger(NODE_LOGGER)

#: Descriptors kept free for what is not a device connection: SQLite (db, WAL, shm, the reader),
#: checkpoints, status and history files, ZeroMQ's own pipes and sockets, /metrics, the control channel.
RESERVED_FDS = 64


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (logged); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as err:  # e.g. a hard limit above the kernel's nr_open
            log.warning("cannot raise the descriptor limit", extra={"event": "nofile_error", "soft": soft, "hard": hard, "error": str(err)})
    log.info(f"descriptor limit {soft} (soft, was {before}; hard {hard})",
             extra={"event": "nofile", "soft_before": before, "soft": soft, "hard": hard})
    return soft


def connection_cap(configured: int, nofile: int) -> int:
    """``node.max_connections``, lowered to keep :data:`RESERVED_FDS` descriptors free under ``nofile`` (logged)."""
    room = max(nofile - RESERVED_FDS, 1)
    if configured > room:
        log.warning(f"node.max_connections {configured} lowered to {room}: the process may open {nofile} descriptors "
                    f"and keeps {RESERVED_FDS} for its files", extra={"event": "max_connections", "max_connections": room})
        return room
    return configured


def _malloc_trim() -> "ctypes._CFuncPtr | None":
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    libzmq assembles a whole message in its IO thread's malloc arena; after a large one is refused
    (or a connection dies mid-message) glibc keeps those pages, and the process's RSS with them.
    Costs well under a millisecond.
    """
    if _TRIM is not None:
        _TRIM(0)
