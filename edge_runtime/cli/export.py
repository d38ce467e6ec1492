"""``edge-node export``: its arguments and the command (the work is in :mod:`edge_runtime.export.onnx`).

Building the parser imports no torch (the opset bounds come from :mod:`edge_runtime.export.opset`);
running the command does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge_runtime.export.opset import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET


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
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--state-dir", metavar="DIR", help="the node's node.state_dir: its newest valid checkpoint")
    source.add_argument("--checkpoint", metavar="FILE", help="checkpoint file, or a state_dir / checkpoints folder")
    p.add_argument("--out", metavar="FILE", required=True, help="ONNX file to write, e.g. model.onnx")
    p.add_argument("--config", metavar="FILE", help="YAML configuration the node ran with (default: built-in defaults, see configs/default.yaml)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override one setting, e.g. --set model.fusion=concat (repeatable)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    return p


def run_export(args: argparse.Namespace) -> int:
    """``edge-node export``: 0 when written and checked, 1 when the checkpoint cannot be used, 2 on bad arguments."""
    from edge_runtime.core.config import ConfigError, load_config
    from edge_runtime.export.onnx import difference_to_torch, export_onnx, load_checkpoint_model  # imports torch
    from edge_runtime.learning.checkpoint import CheckpointError

    if args.state_dir is not None and not Path(args.state_dir).is_dir():
        print(f"edge-node export: --state-dir {args.state_dir}: no such folder; give the node's node.state_dir", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, args.set)
        model = load_checkpoint_model(args.checkpoint or args.state_dir, config)
        path = export_onnx(model, args.out, opset=args.opset)
    except ConfigError as err:
        print(f"edge-node export: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, ValueError) as err:
        print(f"edge-node export: {err}", file=sys.stderr)
        return 1
    diff = difference_to_torch(model, path)
    print(f"wrote {path} ({path.stat().st_size} bytes, opset {args.opset}); "
          f"max abs difference to PyTorch on a random batch: {diff:.2e}")
    return 0
