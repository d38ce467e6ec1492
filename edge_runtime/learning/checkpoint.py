"""Atomic, checksummed checkpoints of the learner state, newest valid one restored.

File layout: 8-byte magic ``EDGECKP1`` + 32-byte SHA-256 of the payload + payload (``torch.save``
of the state dict). A save is :func:`edge_runtime.core.atomic.atomic_write` of ``ckpt-<step>.pt``
(a hidden temp file in the same folder, fsync, rename, fsync of the folder), so a crash leaves
either the old set or the new file, never a half-written checkpoint under a real name; a save that
fails (a full disk) removes its temp file before the error propagates; on ENOSPC the older checkpoints
are removed (the newest kept, when its checksum verifies) and the write is tried once more. Loading verifies the
checksum and falls back to the previous checkpoint when the newest is damaged.

Nothing non-finite is checkpointed (issue 24, G2): :meth:`CheckpointManager.save` refuses a state
with a NaN/Inf in any float tensor or array (:class:`~edge_runtime.learning.guard.NonFiniteState`),
and a file that holds one anyway (written by an older version) is refused on load like a corrupt one.

Model weights are named by modality (``encoders.<name>.*``, ``fusion.heads.<name>.*``):
:func:`checkpoint_modalities` reads the names a checkpoint was written for, and a checkpoint written
before modalities were named (``audio.*``, ``visual.*``, ``fusion.audio_head.*`` keys: the default
audio + video model) restores into the default model, whose load renames its keys
(:func:`upgrade_model_state` does the same renaming for the checks that run before the load).
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import re
from pathlib import Path
from typing import Any, BinaryIO, Mapping, Sequence

from edge_runtime.core.atomic import atomic_write
from edge_runtime.core.names import LOGGER_CHECKPOINT

_ENCODER_KEY = re.compile(r"^encoders\.([^.]+)\.")

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

        from edge_runtime.learning.guard import NonFiniteState, describe_non_finite

        problem = describe_non_finite(state)
        if problem is not None:  # never written: the previous checkpoints stay the newest
            raise NonFiniteState(f"checkpoint ckpt-{step:012d}.pt refused: the state holds {problem}; the previous "
                                 "checkpoints are kept (a bug: the learner's numeric guard should have rolled it back)")
        buf = io.BytesIO()
        torch.save(state, buf)
        payload = buf.getvalue()
        digest = hashlib.sha256(payload).digest()

        def write(f: BinaryIO) -> None:
            f.write(MAGIC)
            f.write(digest)
            f.write(payload)

        target = self.directory / f"ckpt-{step:012d}.pt"
        try:
            final = atomic_write(target, write)
        except OSError as err:  # a full disk: the older checkpoints' space, once, if the newest verifies
            if err.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._make_room(target):
                raise
            final = atomic_write(target, write)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return final

    def _make_room(self, target: Path) -> bool:
        """Remove every checkpoint but the newest (and ``target``) when the newest verifies; True when any was removed."""
        found = self.paths()
        older = [p for p in found[1:] if p != target]
        if not older or not _verifies(found[0]):
            return False
        for path in older:
            path.unlink(missing_ok=True)
        log.warning(f"disk full: removed {len(older)} older checkpoint(s) to make room for {target.name}, "
                    f"keeping {found[0].name}", extra={"event": "checkpoint_room", "removed": [p.name for p in older]})
        return True

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


def _verifies(path: Path) -> bool:
    """``path`` has the magic and its payload the checksum (not loaded)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    head = len(MAGIC) + 32
    return len(data) >= head and data.startswith(MAGIC) and hashlib.sha256(data[head:]).digest() == data[len(MAGIC):head]


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
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # a checksum-valid file from an incompatible version
        raise CheckpointError(f"cannot be loaded ({type(err).__name__}: {err})") from None
    from edge_runtime.learning.guard import describe_non_finite

    problem = describe_non_finite(state)
    if problem is not None:  # written before the numeric guard: a poisoned model is not resumed
        raise CheckpointError(f"holds {problem}")
    return state


def checkpoint_modalities(model_state: Mapping[str, Any]) -> list[str] | None:
    """The modality names a model state dict's encoders are named by (``encoders.<name>.*``), in the order
    of their first key; None when it has no such keys (a model of another structure)."""
    names: dict[str, None] = {}
    for key in model_state:
        match = _ENCODER_KEY.match(key)
        if match:
            names.setdefault(match.group(1), None)
    return list(names) or None


def upgrade_model_state(model_state: Mapping[str, Any], modalities: Sequence[str]) -> Mapping[str, Any]:
    """``model_state`` with the keys of a checkpoint written before modalities were named renamed as the
    model renames them on load (``audio.*`` -> ``encoders.audio.*``, ``visual.*`` -> ``encoders.video.*``,
    ``fusion.audio_head.*`` -> ``fusion.heads.audio.*``, ...): only for a model of the default modalities
    (those the legacy keys' new names name); anything else is returned as it is."""
    from edge_runtime.learning.model.net import _LEGACY_PREFIXES  # torch: only when there are weights to check

    legacy_modalities = tuple(new.split(".")[1] for _old, new in _LEGACY_PREFIXES if new.startswith("encoders."))
    if tuple(modalities) != legacy_modalities:
        return model_state
    if not any(key.startswith(old) for key in model_state for old, _new in _LEGACY_PREFIXES):
        return model_state
    out: dict[str, Any] = {}
    for key, value in model_state.items():
        for old, new in _LEGACY_PREFIXES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out
