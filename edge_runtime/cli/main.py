"""``edge-node``: the command line of the edge box.

Sub-commands:
  run     the daemon: bind the ROUTER socket, learn from device streams, ack every sample,
          checkpoint; SIGTERM / Ctrl-C drains the queue, checkpoints and exits 0
  demo    a node plus simulated UAVs on loopback, streaming the synthetic audio-visual data set
          (CPU is fine); live progress, a summary table, and report.json
  keys    create CURVE certificates for the node and a device (encryption + allowed-key list)
  config  validate a YAML configuration and print it with every default filled in
  export  write a checkpoint's inference model (fused + unimodal logits) as ONNX
  status  one screen of what a node is doing (from its state_dir or /metrics); --watch, --json
  report  plots + one HTML page of a node's learning history (state_dir/history.csv)
  federate         Flower rounds over running nodes (SuperLink + a SuperNode per node + ServerApp)
  federation-demo  three nodes, disjoint classes, federated on Flower; report.json

A configuration or state problem (bad key, damaged state.db or checkpoints, unwritable state_dir,
state_dir in use by another running node, metrics port in use, device: cuda without a GPU) is one
line on stderr and exit code 2; add --debug for the Python traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import yaml

from edge_runtime import __version__
from edge_runtime.cli.export import add_export_parser, run_export
from edge_runtime.cli.federation import COMMANDS as FEDERATION_COMMANDS
from edge_runtime.cli.federation import add_parsers as add_federation_parsers
from edge_runtime.cli.report import add_report_parser, run_report
from edge_runtime.cli.status import add_status_parser, run_status
from edge_runtime.core.config import ConfigError, load_config
from edge_runtime.learning.checkpoint import CheckpointError
from edge_runtime.node.startup import StartupError, preflight

#: Problems of the configuration or the state folder: one line on stderr, exit code 2.
SETUP_ERRORS = (ConfigError, ValueError, StartupError, CheckpointError)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML configuration (default: built-in defaults, see configs/default.yaml)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override one setting, e.g. --set buffer.max_items=500 (repeatable)")
    _add_debug_arg(p, argparse.SUPPRESS)


def _add_debug_arg(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument("--debug", action="store_true", default=default, help="print the Python traceback of a start-up or configuration error")


def build_parser() -> argparse.ArgumentParser:
    """``edge-node``'s parser with every sub-command (building it imports no torch)."""
    parser = argparse.ArgumentParser(
        prog="edge-node",
        description="edge-runtime edge node: incremental multimodal learning from device streams, with a bounded replay buffer and pluggable sample selection.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 1)[1],
    )
    _add_debug_arg(parser, False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="a node plus simulated UAVs on loopback, synthetic audio-visual stream; summary + report.json",
        description="Start `edge-node run` and `device-sim run` as child processes on 127.0.0.1: N simulated UAVs "
        "stream the synthetic audio-visual data set class-incrementally to the node, which learns, acks and "
        "checkpoints. At the end the node is stopped with SIGTERM, its final checkpoint is evaluated on held-out "
        "samples, a summary table is printed, OUT/report.json written and the plots of the run (edge-node report) written "
        "to OUT/report/index.html.",
    )
    _add_config_args(demo)
    demo.add_argument("--devices", type=int, default=4, help="simulated UAVs (default 4)")
    demo.add_argument("--samples", type=int, default=6000, help="samples in the stream, over all devices (default 6000)")
    demo.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long even if the stream is not over, "
                      "then wait for the verdicts of what was sent (default 60)")
    demo.add_argument("--drain-timeout", type=float, default=30.0, help="after --seconds: wait at most this long for in-flight verdicts (default 30)")
    demo.add_argument("--rate", type=float, default=None, help="samples/s per device (default: as fast as credit allows)")
    demo.add_argument("--eval-every", type=int, default=10, help="every k-th sample of a device is sent as split eval (default 10)")
    demo.add_argument("--test-samples", type=int, default=1000, help="held-out samples for the final evaluation (default 1000)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the data stream (default 0)")
    demo.add_argument("--out", metavar="DIR", default="demo-out", help="folder for report.json, node log and state (default demo-out)")
    demo.add_argument("--no-progress", action="store_true", help="do not draw the live progress line")

    run = sub.add_parser(
        "run",
        help="serve devices over ZeroMQ and learn from their streams (the daemon)",
        description="Bind node.bind, receive samples (wire protocol v1), learn in micro-batches, ack every sample, "
        "keep the replay buffer and verdict ledger in node.state_dir (SQLite), checkpoint periodically. "
        "Restarted on the same state_dir it resumes where it stopped. SIGTERM/SIGINT: drain, checkpoint, exit 0.",
    )
    _add_config_args(run)
    run.add_argument("--log-format", choices=["auto", "json", "text"], default=None,
                     help="log lines as text or JSON (default: node.log_format, auto: text on a terminal, JSON otherwise)")

    keys = sub.add_parser(
        "keys",
        help="create CURVE certificates (server + device) for an encrypted, key-checked node",
        description="Write DIR/server.key, DIR/server.key_secret, DIR/<device>.key, DIR/<device>.key_secret and "
        "DIR/allowed/<device>.key. Point node.curve.server_secret_key at DIR/server.key_secret and "
        "node.curve.allowed_keys_dir at DIR/allowed; give devices DIR (device-sim run --curve-dir DIR).",
    )
    keys.add_argument("dir", metavar="DIR", help="folder to write the certificates to (created)")
    keys.add_argument("--device", action="append", default=[], metavar="NAME", help="device certificate name (repeatable; default: device)")

    cfg = sub.add_parser("config", help="validate a configuration and print it with defaults filled in", description="Validate a YAML configuration (and --set overrides) and print the resolved YAML.")
    _add_config_args(cfg)
    add_export_parser(sub)
    add_status_parser(sub)
    add_report_parser(sub)
    add_federation_parsers(sub, _add_config_args)
    return parser


def _cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from edge_runtime.cli.demo import DemoError, run_demo

    for name in ("devices", "samples", "eval_every", "test_samples"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.seconds <= 0:
        raise ConfigError(f"--seconds must be > 0 (got {args.seconds})")
    if args.drain_timeout < 0:
        raise ConfigError(f"--drain-timeout must be >= 0 (got {args.drain_timeout})")
    config = load_config(args.config, args.set)
    out = Path(args.out)
    try:
        run_demo(config, out, devices=args.devices, samples=args.samples, seconds=args.seconds, rate=args.rate,
                 eval_every=args.eval_every, test_samples=args.test_samples, seed=args.seed, progress=not args.no_progress,
                 drain_timeout=args.drain_timeout)
    except DemoError as err:
        print(f"edge-node demo: {err}", file=sys.stderr)
        return 1
    print(f"report written to {out / 'report.json'}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edge_runtime.node.daemon import serve  # imports torch

    overrides = args.set + ([f"node.log_format={args.log_format}"] if args.log_format else [])
    config = load_config(args.config, overrides)
    preflight(config)
    return serve(config)


def _cmd_keys(args: argparse.Namespace) -> int:
    import shutil

    import zmq.auth

    out = Path(args.dir)
    allowed = out / "allowed"
    allowed.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(out, "server")
    for name in args.device or ["device"]:
        public, _secret = zmq.auth.create_certificates(out, name)
        shutil.copy(public, allowed / Path(public).name)
    print(f"certificates written to {out}/ (allowed device keys in {allowed}/)")
    print(f"node config:  node.curve.enabled=true node.curve.server_secret_key={out / 'server.key_secret'} "
          f"node.curve.allowed_keys_dir={allowed}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``edge-node`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    commands = {"demo": _cmd_demo, "config": _cmd_config, "run": _cmd_run, "keys": _cmd_keys, "export": run_export,
                "status": run_status, "report": run_report}
    commands.update(FEDERATION_COMMANDS)
    try:
        return commands[args.command](args)
    except SETUP_ERRORS as err:
        if args.debug:
            traceback.print_exc()
        print(f"edge-node: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
