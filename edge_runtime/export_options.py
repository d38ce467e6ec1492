"""``edge-node export``'s arguments and the opset bounds they are checked against.

Kept apart from :mod:`edge_runtime.export` (which imports torch, and runs the command:
:func:`edge_runtime.export.run_export`) so that building ``edge-node``'s parser, which every
sub-command does, ``status`` and ``keys`` included, does not import torch.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_OPSET = 17
"""Opset of exported models (see :mod:`edge_runtime.export` for why 17)."""

MIN_OPSET = 13
"""Oldest opset that exports this model correctly (at 9 and 11 the GroupNorm graph is invalid)."""

MAX_OPSET = 20
"""Newest opset the TorchScript-based exporter of torch 2.x writes."""


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to ``edge-node``'s sub-command parsers (the action of ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint's model to ONNX (fused + unimodal logits, dynamic batch and time axes)",
        description="Load the model of a node checkpoint (a ckpt-*.pt file, or a state_dir / checkpoints folder: "
        "its newest valid checkpoint), export its inference path to ONNX (inputs audio, audio_lengths, video, "
        "video_lengths; outputs logits, audio_logits, video_logits; batch, time and frame-size axes dynamic), "
        "check the file with onnxruntime and compare it with PyTorch on a random batch. Checkpoints hold no model "
        "configuration: give the configuration the node ran with.",
    )
    p.add_argument("--checkpoint", metavar="FILE", required=True, help="checkpoint file, or a state_dir / checkpoints folder")
    p.add_argument("--out", metavar="FILE", required=True, help="ONNX file to write, e.g. model.onnx")
    p.add_argument("--config", metavar="FILE", help="YAML configuration the node ran with (default: built-in defaults, see configs/default.yaml)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override one setting, e.g. --set model.fusion=concat (repeatable)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    return p
