"""The ``series`` encoder: a multichannel time series (B, T, C) (an IMU, a radar profile) -> (B, embed_dim).

The same masked temporal convolution and GRU as the audio encoder (:class:`TemporalConvGRU`), over
the series' channels, ``model.series_channels`` wide.
"""

from __future__ import annotations

from edge_runtime.core.config import ModelConfig
from edge_runtime.core.modalities import Modality
from edge_runtime.learning.model.encoders.audio import TemporalConvGRU


class SeriesEncoder(TemporalConvGRU):
    """(B, T, C) float32 + (B,) lengths -> (B, embed_dim)."""

    def __init__(self, modality: Modality, cfg: ModelConfig) -> None:
        super().__init__(modality.channels, cfg.series_channels, cfg.embed_dim)
