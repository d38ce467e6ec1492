"""The ONNX opsets an exported model can be written at.

Kept apart from :mod:`edge_runtime.export.onnx` (which imports torch) so that ``edge-node``'s
parser, which every sub-command builds, can check ``--opset`` without importing torch.
"""

from __future__ import annotations

DEFAULT_OPSET = 17
"""Opset of exported models (see :mod:`edge_runtime.export.onnx` for why 17)."""

MIN_OPSET = 13
"""Oldest opset that exports this model correctly (at 9 and 11 the GroupNorm graph is invalid)."""

MAX_OPSET = 20
"""Newest opset the TorchScript-based exporter of torch 2.x writes."""
