"""The ``audio`` encoder (a masked Conv1d front-end over time followed by a GRU) and the sequence
helpers (length masks, last valid GRU state) every encoder with a time axis shares."""

from __future__ import annotations

import torch
from torch import nn

from edge_runtime.core.config import ModelConfig
from edge_runtime.core.modalities import Modality


def length_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) bool mask, True where the time index is < the sample's length."""
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def last_hidden(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Hidden state of a batch-first single-layer unidirectional ``gru`` at each sample's last valid step, (B, H).

    The GRU runs over the padded batch and its output is read at step ``length - 1``: a
    unidirectional GRU's output there depends only on the steps before it, so padding is never
    seen.  (No packed sequences: this form exports to ONNX and works under ``torch.func``.)
    """
    out, _ = gru(x)
    last = (lengths.to(device=x.device, dtype=torch.long) - 1).clamp_min(0)
    return out[torch.arange(out.shape[0], device=x.device), last]


class TemporalConvGRU(nn.Module):
    """(B, T, F) steps + (B,) lengths -> (B, embed_dim): the encoder of every kind whose step is a vector.

    Two Conv1d(kernel 3, padding 1) + ReLU layers over time, then a GRU whose hidden state at each
    sample's last valid step is the embedding.  Steps at or beyond a sample's length are zeroed
    before every conv, so each conv sees exactly the unpadded sequence with zero padding at its
    ends: a sample's output does not depend on how much it was padded.
    """

    def __init__(self, in_features: int, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_features, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.gru = nn.GRU(channels, embed_dim, batch_first=True)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Encode padded ``x`` (B, T, F) with valid ``lengths`` (B,) into (B, embed_dim)."""
        pad = ~length_mask(lengths, x.shape[1]).unsqueeze(1)  # (B, 1, T), True on padding
        h = x.transpose(1, 2).masked_fill(pad, 0.0)  # (B, F, T)
        h = self.act(self.conv1(h)).masked_fill(pad, 0.0)
        h = self.act(self.conv2(h))
        return last_hidden(self.gru, h.transpose(1, 2), lengths)


class AudioEncoder(TemporalConvGRU):
    """``audio`` kind: (B, T, F) MFCC / log-mel frames -> (B, embed_dim), ``model.audio_channels`` wide."""

    def __init__(self, modality: Modality, cfg: ModelConfig) -> None:
        super().__init__(modality.channels, cfg.audio_channels, cfg.embed_dim)
