"""The ``Sample`` record (one multimodal sample as the learner, the buffer and the policies see it)
and ``TensorSpec`` (the declared dtype and shape of one of its tensors).

It lives apart from the wire format (``edge_runtime.wire``), which encodes and decodes it: only the
node, the store's codec and the devices need the wire; everything that learns from samples imports
this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One labelled (or unlabelled) multimodal sample (what a device sends and the learner learns from).

    ``tensors`` maps a modality name to a C-contiguous array: ``"audio"`` is (T_a, F) float32
    features, ``"video"`` is (T_v, C, H, W) float32 frames.  ``meta`` carries data-set facts that
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
