"""The ``Sample`` record (one multimodal sample as the learner, the buffer and the policies see it)
and ``TensorSpec`` (the declared dtype and shape of one of its tensors).

It lives apart from the wire format (``edge_runtime.wire``), which encodes and decodes it: only the
node, the store's codec and the devices need the wire; everything that learns from samples imports
this module.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One labelled (or unlabelled) multimodal sample (what a device sends and the learner learns from).

    ``tensors`` maps a modality name (the configuration's ``modalities``) to a C-contiguous array of
    that modality's kind (docs/modalities.md): audio (T, F), frames (T, C, H, W), series (T, C) or
    vector (C,), float32.  ``meta`` carries data-set facts that
    are not sent on the wire (for instance the synthetic stream's per-modality informativeness).
    """

    tensors: dict[str, np.ndarray]
    label: int | None
    split: str = "train"
    device: str = ""
    seq: int = -1
    ts: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        """Identity of the sample: (device id, sequence number)."""
        return (self.device, self.seq)

    @property
    def nbytes(self) -> int:
        """Bytes of tensor payload, the unit the replay buffer's byte bound counts."""
        return sum(int(t.nbytes) for t in self.tensors.values())


@dataclass(frozen=True)
class TensorSpec:
    """Declared dtype name and shape of one modality; ``-1`` in ``shape`` matches any size.

    Wire form: ``{"dtype": str, "shape": [int|-1, ...]}`` (read by :func:`edge_runtime.wire.spec_from_wire`).
    """

    dtype: str
    shape: tuple[int, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": [int(d) for d in self.shape]}

    def matches(self, dtype: str, shape: tuple[int, ...] | list[int]) -> bool:
        """Whether a tensor of ``dtype`` and ``shape`` fits this spec (``-1`` matches any size)."""
        if dtype != self.dtype or len(shape) != len(self.shape):
            return False
        return all(s == -1 or s == d for s, d in zip(self.shape, shape))


#: Sequence numbers are signed 64-bit integers on the wire and in the ledger: 0 <= seq <= SEQ_MAX.
SEQ_MAX = 2**63 - 1


def sample_header(sample: Sample, version: int, purpose: str = "go on the wire", hint: str = "") -> dict[str, Any]:
    """The header of ``sample`` as a protocol-v1 ``sample`` message, without its ``tensors`` list.

    The wire sends it (``wire.encode_sample``) and the SQLite store keeps a sample as the same
    message, so both build it here. ``ValueError`` names a seq outside 0..:data:`SEQ_MAX` (``purpose``
    and ``hint`` complete the message for the caller).
    """
    try:
        seq = -1 if isinstance(sample.seq, bool) else operator.index(sample.seq)
    except TypeError:
        seq = -1
    if not 0 <= seq <= SEQ_MAX:
        raise ValueError(f"sample.seq must be an int in 0..2**63-1 to {purpose}, got {sample.seq!r}{hint}")
    label = None if sample.label is None else operator.index(sample.label)
    return {"v": version, "type": "sample", "seq": seq, "ts": float(sample.ts), "label": label, "split": str(sample.split)}
