"""Encoders by modality kind: one file per kind, registered by one line in :data:`REGISTRY`.

An encoder is built as ``Encoder(modality, model_config)`` and maps a padded batch of one modality
and its lengths, ``(x, lengths)``, to an embedding (B, ``model.embed_dim``).
"""

from __future__ import annotations

import importlib

from torch import nn

from edge_runtime.core.config import ModelConfig
from edge_runtime.core.modalities import Modality

#: modality kind -> ``"module:Class"`` of its encoder (imported on first use).
REGISTRY: dict[str, str] = {
    "audio": "edge_runtime.learning.model.encoders.audio:AudioEncoder",
    "frames": "edge_runtime.learning.model.encoders.frames:FramesEncoder",
    "series": "edge_runtime.learning.model.encoders.series:SeriesEncoder",
    "vector": "edge_runtime.learning.model.encoders.vector:VectorEncoder",
}


def build_encoder(modality: Modality, cfg: ModelConfig) -> nn.Module:
    """The encoder registered for ``modality.kind``."""
    try:
        target = REGISTRY[modality.kind]
    except KeyError:
        raise ValueError(f"modality {modality.name!r}: no encoder for kind {modality.kind!r}; kinds: {sorted(REGISTRY)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)(modality, cfg)
