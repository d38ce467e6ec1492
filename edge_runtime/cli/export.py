"""``edge-node export``: its arguments and the command (the work is in :mod:`edge_runtime.export.onnx`).

Building the parser imports no torch (the opset bounds come from :mod:`edge_runtime.export.opset`);
running the command does.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from edge_runtime.cli.helptext import HelpFormatter, epilog
from edge_runtime.export.opset import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

EXAMPLES = [
    "edge-node export --state-dir edge-state --out model.onnx   # the newest checkpoint of a node (running or stopped)",
]


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``export`` to ``edge-node``'s sub-command parsers (the action of ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint's model to ONNX (fused + per-modality logits, dynamic batch and time axes)",
        description="Load the model of a node checkpoint (a ckpt-*.pt file, or a state_dir / checkpoints folder: "
        "its newest valid checkpoint), export its inference path to ONNX (inputs <name> and <name>_lengths for each "
        "modality of the configuration, in its order; outputs logits and <name>_logits; batch, time and frame-size axes "
        "dynamic; the default audio + video configuration: audio, audio_lengths, video, video_lengths -> logits, "
        "audio_logits, video_logits), "
        "check the file with onnxruntime and compare it with PyTorch on a random batch. Checkpoints hold no model "
        "configuration: give the configuration the node ran with. Prints each step and which checkpoint it used "
        "(path, step, age: a running node checkpoints every node.checkpoint_every_s). The folder of --out must exist.",
        formatter_class=HelpFormatter, epilog=epilog(EXAMPLES),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--state-dir", metavar="DIR", help="the node's node.state_dir: its newest valid checkpoint")
    source.add_argument("--checkpoint", metavar="FILE", help="checkpoint file, or a state_dir / checkpoints folder")
    p.add_argument("--out", metavar="FILE", required=True, help="ONNX file to write, e.g. model.onnx")
    p.add_argument("--config", metavar="FILE", help="YAML configuration the node ran with (default: built-in defaults, see configs/default.yaml)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override one setting, e.g. --set model.fusion=concat (repeatable)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N", help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
    return p


def _refusal(args: argparse.Namespace) -> str | None:
    """Why the arguments cannot work, before anything is loaded (None when they may)."""
    if args.state_dir is not None and not Path(args.state_dir).is_dir():
        return f"--state-dir {args.state_dir}: no such folder; give the node's node.state_dir"
    out = Path(args.out)
    if out.is_dir():
        return f"--out {out} is a folder; give the ONNX file to write, e.g. --out {out / 'model.onnx'}"
    if not out.parent.is_dir():
        return f"--out {out}: the folder {out.parent} does not exist; create it first (mkdir -p {out.parent})"
    return None


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_checkpoint(path: Path, now: float | None = None) -> str:
    """``PATH (step N, written T ago)``: which checkpoint an export used; the step is the learner's sample
    count in the name (``ckpt-<step>.pt``), the age from the file's time."""
    match = re.fullmatch(r"ckpt-(\d+)\.pt", path.name)
    step = f"step {int(match.group(1)):,}, " if match else ""
    age = max(0.0, (time.time() if now is None else now) - path.stat().st_mtime)
    return f"{path} ({step}written {_age(age)} ago)"


def _running_note(state_dir: str | None) -> str:
    """A note when the state folder's node is running: its newest checkpoint lags behind what it learned."""
    if state_dir is None:
        return ""
    try:
        status = json.loads((Path(state_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(status, dict) or status.get("state") != "running":
        return ""
    return ("; the node is running: it checkpoints every node.checkpoint_every_s (30 s by default), "
            "so what it learned since is not in this export")


def run_export(args: argparse.Namespace) -> int:
    """``edge-node export``: 0 when written and checked; 2 on bad arguments, settings or checkpoints (one line,
    nothing written); 1 when the export itself or its check fails."""
    refusal = _refusal(args)
    if refusal:
        print(f"edge-node export: {refusal}", file=sys.stderr)
        return 2
    from edge_runtime.core.atomic import atomic_write_bytes
    from edge_runtime.core.config import ConfigError, load_config
    from edge_runtime.learning.checkpoint import CheckpointError

    def step(text: str) -> None:
        print(text, flush=True)

    try:
        config = load_config(args.config, args.set)
        source = args.checkpoint or args.state_dir
        step(f"loading checkpoint from {source} ...")
        from edge_runtime.export import onnx as export  # imports torch

        checkpoint, path = export.read_checkpoint_file(source)
        step(f"checkpoint: {describe_checkpoint(path)}{_running_note(args.state_dir)}")
        model = export.model_from_checkpoint(checkpoint, path, config)
    except (ConfigError, CheckpointError, ValueError) as err:
        print(f"edge-node export: {err}", file=sys.stderr)
        return 2
    try:
        step(f"tracing the model to ONNX (opset {args.opset}) ...")
        data = export.onnx_bytes(model, args.opset, config=config)
        step("checking the graph with onnx and onnxruntime ...")
        export.verify_onnx(data, list(config.modalities))
        out = atomic_write_bytes(Path(args.out), data)
        step("comparing onnxruntime with PyTorch on a random batch ...")
        diff = export.difference_to_torch(model, out, config)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"edge-node export: the export failed: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size:,} bytes, opset {args.opset}) from {path.name}; "
          f"max abs difference to PyTorch on a random batch: {diff:.2e}")
    return 0
