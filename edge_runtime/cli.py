"""``edge-node``: the command line of the edge box.

Sub-commands:
  demo    learn from a simulated synthetic audio-visual stream on this machine (CPU is fine),
          with a live progress line and a final summary; writes report.json
  config  validate a YAML configuration and print it with every default filled in
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from edge_runtime.config import ConfigError, load_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML configuration (default: built-in defaults, see configs/default.yaml)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override one setting, e.g. --set selection.keep_ratio=0.3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-node",
        description="edge-runtime edge node: incremental multimodal learning with modality-balanced sample selection.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="learn from a simulated synthetic audio-visual stream (in-process) and print a summary",
        description="Stream the embedded synthetic audio-visual data set through the learner "
        "(class-incremental by default), show live progress, evaluate on held-out samples and write report.json.",
    )
    _add_config_args(demo)
    demo.add_argument("--samples", type=int, default=6000, help="training samples in the stream (default 6000)")
    demo.add_argument("--batch-size", type=int, default=32, help="micro-batch size fed to the learner (default 32)")
    demo.add_argument("--scenario", choices=["class-incremental", "iid"], default="class-incremental", help="stream order (default class-incremental)")
    demo.add_argument("--classes-per-task", type=int, default=2, help="classes per task in the class-incremental stream (default 2)")
    demo.add_argument("--test-samples", type=int, default=1000, help="held-out samples for the final evaluation (default 1000)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data stream (default 0)")
    demo.add_argument("--out", metavar="DIR", default=".", help="folder for report.json (default: current folder)")
    demo.add_argument("--no-progress", action="store_true", help="do not draw the live progress line")

    cfg = sub.add_parser("config", help="validate a configuration and print it with defaults filled in", description="Validate a YAML configuration (and --set overrides) and print the resolved YAML.")
    _add_config_args(cfg)
    return parser


def _cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge_runtime.demo import run_demo  # imports torch: keep --help fast

    for name in ("samples", "batch_size", "classes_per_task", "test_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    config = load_config(args.config, args.set)
    report = run_demo(
        config,
        samples=args.samples,
        batch_size=args.batch_size,
        scenario=args.scenario,
        classes_per_task=args.classes_per_task,
        test_samples=args.test_samples,
        seed=args.seed,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"report written to {out / 'report.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"demo": _cmd_demo, "config": _cmd_config}[args.command](args)
    except ConfigError as err:
        print(f"edge-node: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
