"""Wire protocol v1 records (see DESIGN.md, "Wire protocol v1").

This module holds the :class:`Sample` record that devices send and the node decodes. It has no
sockets; the encoder / decoder / validator of the protocol live here too (daemon issue).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPLITS = ("train", "eval")


@dataclass
class Sample:
    """One labelled (or unlabelled) multimodal sample as it travels on the wire.

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
