"""The ``frames`` encoder: a per-frame CNN on the valid frames only, then a GRU over time."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from edge_runtime.core.config import ModelConfig
from edge_runtime.core.modalities import Modality
from edge_runtime.learning.model.encoders.audio import last_hidden, length_mask


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: per-frame statistics, independent of batch composition."""
    return nn.GroupNorm(math.gcd(channels, 8), channels)


GRID = 4  # spatial grid the tiny CNN keeps before its projection


class TinyFrameCNN(nn.Module):
    """Small per-frame CNN for small images (8x8, 16x16): (N, C, H, W) -> (N, out_dim).

    conv3x3(C -> c) + GroupNorm + ReLU, conv3x3 stride 2 (c -> 2c) + GroupNorm + ReLU,
    average pool to a 4x4 grid, linear to ``out_dim``.  The 4x4 grid keeps where things are in
    the frame (a global pool would turn a handwritten 6 and 9 into the same bag of strokes).
    No BatchNorm: streaming batches are tiny.
    """

    def __init__(self, in_channels: int, channels: int, out_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            _group_norm(channels),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            _group_norm(2 * channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(GRID),
            nn.Flatten(),
        )
        self.proj = nn.Linear(2 * channels * GRID * GRID, out_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) frames -> (N, out_dim) frame features."""
        return self.proj(self.body(frames))


class MobileNetFrameCNN(nn.Module):
    """torchvision MobileNetV2 ``features`` (random init, never downloaded) + GAP + linear.

    The first conv is rebuilt for ``in_channels`` != 3.  BatchNorm is replaced by GroupNorm so that
    training on tiny streaming batches (a single frame included) works and a frame's features never
    depend on the other frames of the batch.
    """

    def __init__(self, in_channels: int, width_mult: float, out_dim: int) -> None:
        super().__init__()
        net = mobilenet_v2(weights=None, width_mult=width_mult, norm_layer=_group_norm)
        features = net.features
        if in_channels != 3:
            old = features[0][0]
            features[0][0] = nn.Conv2d(
                in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding, bias=False
            )
            nn.init.kaiming_normal_(features[0][0].weight, mode="fan_out")
        self.features = features
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(net.last_channel, out_dim)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) frames -> (N, out_dim) frame features."""
        return self.proj(self.pool(self.features(frames)))


BACKBONES = {"tiny", "mobilenet_v2"}


class FramesEncoder(nn.Module):
    """``frames`` kind: (B, T, C, H, W) frames + (B,) lengths -> (B, embed_dim).

    The per-frame CNN runs only on the valid frames (t < length): they are gathered, encoded and
    scattered back into a zero (B, T, D) tensor, then a GRU reads the sequence
    and its last hidden state is the embedding.  Padding costs nothing and leaks nothing.
    """

    def __init__(self, modality: Modality, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        if cfg.visual_backbone == "tiny":
            self.cnn: nn.Module = TinyFrameCNN(modality.channels, cfg.tiny_channels, d)
        elif cfg.visual_backbone == "mobilenet_v2":
            self.cnn = MobileNetFrameCNN(modality.channels, cfg.mobilenet_width, d)
        else:
            raise ValueError(f"unknown visual backbone {cfg.visual_backbone!r}; choose one of {sorted(BACKBONES)}")
        self.frame_dim = d
        self.gru = nn.GRU(d, d, batch_first=True)
        self.embed_dim = d

    def forward(self, video: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Encode padded ``video`` (B, T, C, H, W) with valid ``lengths`` (B,) into (B, embed_dim)."""
        b, t = video.shape[:2]
        flat = video.reshape(b * t, *video.shape[2:])
        idx = length_mask(lengths, t).reshape(-1).nonzero().squeeze(1)
        feats = self.cnn(flat.index_select(0, idx))
        seq = feats.new_zeros(b * t, feats.shape[1]).index_copy(0, idx, feats).reshape(b, t, -1)
        return last_hidden(self.gru, seq, lengths)
