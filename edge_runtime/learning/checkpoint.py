"""Atomic, checksummed checkpoints of the learner state, newest valid one restored.

File layout: 8-byte magic ``EDGECKP1`` + 32-byte SHA-256 of the payload + payload (``torch.save``
of the state dict). A save is :func:`edge_runtime.core.atomic.atomic_write` of ``ckpt-<step>.pt``
(a hidden temp file in the same folder, fsync, rename, fsync of the folder), so a crash leaves
either the old set or the new file, never a half-written checkpoint under a real name; a save that
fails (a full disk) removes its temp file before the error propagates. Loading verifies the
checksum and falls back to the previous checkpoint when the newest is damaged.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any, BinaryIO

from edge_runtime.core.atomic import atomic_write
from edge_runtime.core.names import LOGGER_CHECKPOINT

log = logging.getLogger(LOGGER_CHECKPOINT)

MAGIC = b"EDGECKP1"
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")


class CheckpointError(RuntimeError):
    """No checkpoint in the folder can be read; the message lists each file and its problem."""


class CheckpointManager:
    """Checkpoints in ``directory``; the ``keep`` newest are kept."""

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (got {keep})")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        for stale in self.directory.glob(".ckpt-*.tmp"):  # left by a crash during save (atomic_write's temp names)
            stale.unlink(missing_ok=True)

    def paths(self) -> list[Path]:
        """Checkpoint files, newest (highest step, then latest mtime) first."""
        found = [p for p in self.directory.iterdir() if _NAME.match(p.name)]
        return sorted(found, key=lambda p: (int(_NAME.match(p.name).group(1)), p.stat().st_mtime_ns), reverse=True)

    def save(self, state: dict[str, Any], step: int) -> Path:
        """Write ``state`` atomically as ``ckpt-<step>.pt``; drop all but the ``keep`` newest."""
        import torch  # here, not at import: ``edge-node`` imports this module for its error type

        buf = io.BytesIO()
        torch.save(state, buf)
        payload = buf.getvalue()
        digest = hashlib.sha256(payload).digest()

        def write(f: BinaryIO) -> None:
            f.write(MAGIC)
            f.write(digest)
            f.write(payload)

        final = atomic_write(self.directory / f"ckpt-{step:012d}.pt", write)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return final

    def load_latest(self, map_location: str = "cpu") -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that verifies and loads, with its path; None when there is none."""
        problems: list[str] = []
        for path in self.paths():
            try:
                return read_checkpoint(path, map_location), path
            except CheckpointError as err:
                log.warning("skipping damaged checkpoint %s: %s; trying the previous one", path.name, err,
                            extra={"event": "checkpoint_damaged", "path": str(path), "reason": str(err)})
                problems.append(f"{path.name}: {err}")
        if problems:
            raise CheckpointError(
                f"no readable checkpoint in {self.directory}: " + "; ".join(problems)
                + f". Move {self.directory} aside to start from scratch (the replay store is kept).")
        return None


def read_checkpoint(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """Verify and load one checkpoint file; :class:`CheckpointError` says what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot be read ({err.strerror or err})") from None
    if len(data) < len(MAGIC) + 32 or not data.startswith(MAGIC):
        raise CheckpointError("not an edge-runtime checkpoint (bad magic or truncated header)")
    digest, payload = data[len(MAGIC) : len(MAGIC) + 32], data[len(MAGIC) + 32 :]
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checksum mismatch (truncated or corrupted)")
    import torch

    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # a checksum-valid file from an incompatible version
        raise CheckpointError(f"cannot be loaded ({type(err).__name__}: {err})") from None
