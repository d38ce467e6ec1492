"""The multimodal network: audio and visual encoders plus a fusion head."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from edge_runtime.core.config import ModelConfig
from edge_runtime.learning.model.audio import AudioEncoder
from edge_runtime.learning.model.fusion import build_fusion
from edge_runtime.learning.model.visual import VisualEncoder


class ModelOutput(NamedTuple):
    """Outputs of :meth:`MultimodalNet.forward`, all with the batch as first axis.

    logits, audio_logits, video_logits: (B, num_classes); z_audio, z_video: (B, embed_dim).
    """

    logits: torch.Tensor
    audio_logits: torch.Tensor
    video_logits: torch.Tensor
    z_audio: torch.Tensor
    z_video: torch.Tensor


class MultimodalNet(nn.Module):
    """Audio encoder + visual encoder + fusion head (``cfg.fusion``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.embed_dim = cfg.embed_dim
        self.audio = AudioEncoder(cfg)
        self.visual = VisualEncoder(cfg)
        self.fusion = build_fusion(cfg.fusion, cfg.embed_dim, cfg.num_classes)

    def forward(
        self, audio: torch.Tensor, audio_lengths: torch.Tensor, video: torch.Tensor, video_lengths: torch.Tensor
    ) -> ModelOutput:
        """audio (B, T_a, F) + lengths (B,), video (B, T_v, C, H, W) + lengths (B,) -> :class:`ModelOutput`."""
        z_a = self.audio(audio, audio_lengths)
        z_v = self.visual(video, video_lengths)
        logits, audio_logits, video_logits = self.fusion(z_a, z_v)
        return ModelOutput(logits, audio_logits, video_logits, z_a, z_v)


def build_model(cfg: ModelConfig) -> MultimodalNet:
    """The :class:`MultimodalNet` described by ``cfg``."""
    return MultimodalNet(cfg)
