"""Micro-batches: padding variable-length sequences of :class:`Sample` records into tensors."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from edge_runtime.core.sample import Sample


@dataclass
class Batch:
    """A padded micro-batch.  Padding never leaks: encoders use the ``*_lengths`` tensors.

    audio: (B, T_a, F); video: (B, T_v, C, H, W); labels: (B,) with -1 where no label;
    is_eval: (B,) True for samples of the eval split (predicted, never learned from).
    """

    audio: torch.Tensor
    audio_lengths: torch.Tensor
    video: torch.Tensor
    video_lengths: torch.Tensor
    labels: torch.Tensor
    is_eval: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        """A copy in page-locked host memory (for asynchronous copies to a CUDA device)."""
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def index(self, idx: torch.Tensor) -> "Batch":
        """Sub-batch of the rows ``idx`` (a LongTensor on the batch's device)."""
        return Batch(**{f.name: getattr(self, f.name).index_select(0, idx) for f in fields(self)})

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positional arguments of :meth:`MultimodalNet.forward`."""
        return self.audio, self.audio_lengths, self.video, self.video_lengths


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


def collate(samples: Sequence[Sample]) -> Batch:
    """Pad the samples' ``audio`` and ``video`` along time and stack labels (None -> -1)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    audio, audio_lengths = _pad([s.tensors["audio"] for s in samples])
    video, video_lengths = _pad([s.tensors["video"] for s in samples])
    labels = torch.tensor([-1 if s.label is None else int(s.label) for s in samples], dtype=torch.long)
    is_eval = torch.tensor([s.split == "eval" for s in samples], dtype=torch.bool)
    return Batch(audio, audio_lengths, video, video_lengths, labels, is_eval)
