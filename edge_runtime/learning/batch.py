"""Micro-batches: padding variable-length sequences of :class:`Sample` records into tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from edge_runtime.core.sample import Sample


@dataclass
class Batch:
    """A padded micro-batch.  Padding never leaks: encoders use the ``lengths``.

    tensors: ``name -> (B, T_max, ...)`` per modality, in the model's order (a vector modality: (B, C));
    lengths: ``name -> (B,)`` valid steps of each row (a vector's length, which its encoder ignores); labels: (B,) with -1 where no
    label; is_eval: (B,) True for samples of the eval split (predicted, never learned from).
    """

    tensors: dict[str, torch.Tensor]
    lengths: dict[str, torch.Tensor]
    labels: torch.Tensor
    is_eval: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        return Batch({k: fn(v) for k, v in self.tensors.items()}, {k: fn(v) for k, v in self.lengths.items()},
                     fn(self.labels), fn(self.is_eval))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """A copy in page-locked host memory (for asynchronous copies to a CUDA device)."""
        return self._map(lambda t: t.pin_memory())

    def index(self, idx: torch.Tensor) -> "Batch":
        """Sub-batch of the rows ``idx`` (a LongTensor on the batch's device)."""
        return self._map(lambda t: t.index_select(0, idx))

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """Positional arguments of the model's ``forward``: ``(x_1, lengths_1, ..., x_N, lengths_N)``."""
        return tuple(t for name in self.tensors for t in (self.tensors[name], self.lengths[name]))


def _pad(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [int(a.shape[0]) for a in arrays]
    tail = arrays[0].shape[1:]
    for a in arrays:
        if a.shape[1:] != tail:
            raise ValueError(f"cannot batch tensors of shapes {arrays[0].shape} and {a.shape}: only the first (time) axis may differ")
    out = np.zeros((len(arrays), max(lengths), *tail), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return torch.from_numpy(out), torch.tensor(lengths, dtype=torch.long)


def collate(samples: Sequence[Sample], modalities: Sequence[str] | None = None) -> Batch:
    """Pad each modality's tensors along axis 0 (time) and stack labels (None -> -1).

    ``modalities``: the names in the model's order (None: the first sample's tensors, in their order).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    names = list(modalities) if modalities is not None else list(samples[0].tensors)
    tensors: dict[str, torch.Tensor] = {}
    lengths: dict[str, torch.Tensor] = {}
    for name in names:
        arrays = [s.tensors[name] for s in samples]
        tensors[name], lengths[name] = _pad(arrays)
    labels = torch.tensor([-1 if s.label is None else int(s.label) for s in samples], dtype=torch.long)
    is_eval = torch.tensor([s.split == "eval" for s in samples], dtype=torch.bool)
    return Batch(tensors, lengths, labels, is_eval)
