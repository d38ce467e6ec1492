"""The ``vector`` encoder: a fixed-length feature vector (B, C) -> (B, embed_dim) by a two-layer MLP."""

from __future__ import annotations

import torch
from torch import nn

from edge_runtime.core.config import ModelConfig
from edge_runtime.core.modalities import Modality


class VectorEncoder(nn.Module):
    """``Linear(C, h) -> ReLU -> Linear(h, embed_dim)`` with ``h = model.series_channels``; lengths are ignored
    (every vector has all its entries)."""

    def __init__(self, modality: Modality, cfg: ModelConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(modality.channels, cfg.series_channels), nn.ReLU(),
                                 nn.Linear(cfg.series_channels, cfg.embed_dim))
        self.embed_dim = cfg.embed_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` (B, C) into (B, embed_dim)."""
        return self.mlp(x)
