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
  federation-keys  TLS certificates + SuperNode keys for a Flower deployment across a network
  federation-sim   N simulated edge nodes federated on Flower's Simulation Engine (fleet scale)
  state reset      move a state folder aside to a dated backup (start fresh after changing classes/model)

Exit codes (every command):
  0    success
  1    a runtime failure: the work started and failed (an export that does not check out, a demo
       or federation whose processes fail), or a question answered no
  2    a usage or configuration error: bad option, bad key or value (the --set or the file line
       it came from is named), a missing or damaged file or folder the command was pointed at,
       a state folder in use by a running node or written under another configuration, metrics
       port in use, device: cuda without a GPU; one line on stderr (--debug: the traceback)
  130  Ctrl-C (run: SIGTERM / Ctrl-C drain, checkpoint and exit 0; status --watch: exit 0)
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import yaml

from edge_runtime import __version__
from edge_runtime.cli.demo import add_demo_parser, run_demo_command
from edge_runtime.cli.export import add_export_parser, run_export
from edge_runtime.cli.federation import COMMANDS as FEDERATION_COMMANDS
from edge_runtime.cli.federation import add_parsers as add_federation_parsers
from edge_runtime.cli.federation_sim import add_parser as add_federation_sim_parser
from edge_runtime.cli.federation_sim import run as run_federation_sim
from edge_runtime.cli.helptext import HelpFormatter, epilog
from edge_runtime.cli.report import add_report_parser, run_report
from edge_runtime.cli.state import add_state_parser, run_state
from edge_runtime.cli.status import add_status_parser, run_status
from edge_runtime.core.config import ConfigError, load_config
from edge_runtime.learning.checkpoint import CheckpointError
from edge_runtime.node.startup import StartupError, preflight

#: Problems of the configuration or the state folder: one line on stderr, exit code 2.
SETUP_ERRORS = (ConfigError, ValueError, StartupError, CheckpointError)

#: The examples of each command's --help (tests/cli/test_help_examples.py runs every one as written).
EXAMPLES = {
    "edge-node": ["edge-node demo   # a node + 4 simulated UAVs on loopback, the whole 6,000-sample stream",
                  "edge-node config --set buffer.max_items=500   # every setting, with one changed"],
    "demo": ["edge-node demo   # 6,000 samples, 4 UAVs; summary table, demo-out/report.json, demo-out/report/index.html"],
    "run": ["edge-node run   # tcp://127.0.0.1:5555, state in ./edge-state; Ctrl-C stops it cleanly",
            "edge-node run --config configs/default.yaml --set node.metrics_port=9100   # with /metrics on 127.0.0.1:9100"],
    "keys": ["edge-node keys keys/ --device uav-0 --device uav-1"],
    "config": ["edge-node config   # every setting with its default",
               "edge-node config --config configs/default.yaml --set selection.policy=mbs --set selection.keep_ratio=0.3"],
}


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
        formatter_class=HelpFormatter,
        epilog=epilog(EXAMPLES["edge-node"], __doc__.split("\n", 1)[1]),
    )
    _add_debug_arg(parser, False)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_demo_parser(sub, _add_config_args, formatter_class=HelpFormatter, epilog=epilog(EXAMPLES["demo"]))

    run = sub.add_parser(
        "run", formatter_class=HelpFormatter, epilog=epilog(EXAMPLES["run"]),
        help="serve devices over ZeroMQ and learn from their streams (the daemon)",
        description="Bind node.bind, receive samples (wire protocol v1), learn in micro-batches, ack every sample, "
        "keep the replay buffer and verdict ledger in node.state_dir (SQLite), checkpoint periodically. "
        "Restarted on the same state_dir it resumes where it stopped. SIGTERM/SIGINT: drain, checkpoint, exit 0.",
    )
    _add_config_args(run)
    run.add_argument("--log-format", choices=["auto", "json", "text"], default=None,
                     help="log lines as text or JSON (default: node.log_format, auto: text on a terminal, JSON otherwise)")

    keys = sub.add_parser(
        "keys", formatter_class=HelpFormatter, epilog=epilog(EXAMPLES["keys"]),
        help="create CURVE certificates (server + device) for an encrypted, key-checked node",
        description="Write DIR/server.key, DIR/server.key_secret, DIR/<device>.key, DIR/<device>.key_secret and "
        "DIR/allowed/<device>.key. Point node.curve.server_secret_key at DIR/server.key_secret and "
        "node.curve.allowed_keys_dir at DIR/allowed; give devices DIR (device-sim run --curve-dir DIR).",
    )
    keys.add_argument("dir", metavar="DIR", help="folder to write the certificates to (created)")
    keys.add_argument("--device", action="append", default=[], metavar="NAME", help="device certificate name (repeatable; default: device)")

    cfg = sub.add_parser("config", help="validate a configuration and print it with defaults filled in",
                         description="Validate a YAML configuration (and --set overrides) and print the resolved YAML. "
                         "An error names where the value came from: the --set, or the file and line.",
                         formatter_class=HelpFormatter, epilog=epilog(EXAMPLES["config"]))
    _add_config_args(cfg)
    add_export_parser(sub)
    add_status_parser(sub)
    add_report_parser(sub)
    add_federation_parsers(sub, _add_config_args)
    add_federation_sim_parser(sub, _add_config_args)
    add_state_parser(sub)
    return parser


def _cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = args.set + ([f"node.log_format={args.log_format}"] if args.log_format else [])
    config = load_config(args.config, overrides)  # before torch: a bad setting is answered at once
    preflight(config)
    from edge_runtime.node.daemon import serve  # imports torch

    return serve(config)


def _cmd_keys(args: argparse.Namespace) -> int:
    import shutil

    import zmq.auth

    out = Path(args.dir)
    allowed = out / "allowed"
    try:
        allowed.mkdir(parents=True, exist_ok=True)
        zmq.auth.create_certificates(out, "server")
        for name in args.device or ["device"]:
            public, _secret = zmq.auth.create_certificates(out, name)
            shutil.copy(public, allowed / Path(public).name)
    except OSError as err:
        raise ValueError(f"keys: cannot write certificates to {out}/ ({err.strerror or err}); give a folder you can write") from None
    print(f"certificates written to {out}/ (allowed device keys in {allowed}/)")
    print(f"node config:  node.curve.enabled=true node.curve.server_secret_key={out / 'server.key_secret'} "
          f"node.curve.allowed_keys_dir={allowed}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``edge-node`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    commands = {"demo": run_demo_command, "config": _cmd_config, "run": _cmd_run, "keys": _cmd_keys, "export": run_export,
                "status": run_status, "report": run_report, "state": run_state}
    commands.update(FEDERATION_COMMANDS)
    commands["federation-sim"] = run_federation_sim
    try:
        return commands[args.command](args)
    except SETUP_ERRORS as err:
        if args.debug:
            traceback.print_exc()
        print(f"edge-node: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edge-node: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
