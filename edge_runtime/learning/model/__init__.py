"""Multimodal network: encoders by modality kind, fusion heads and :class:`MultimodalNet`."""

from edge_runtime.learning.model.net import ModelOutput, MultimodalNet, build_model

__all__ = ["ModelOutput", "MultimodalNet", "build_model"]
