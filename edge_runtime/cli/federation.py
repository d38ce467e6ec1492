"""``edge-node federate`` and ``edge-node federation-demo`` (argument parsing only; the work is in launch / demo)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def add_parsers(sub: argparse._SubParsersAction, add_config_args) -> None:
    fed = sub.add_parser(
        "federate",
        help="run Flower rounds over running edge nodes: one SuperLink, a SuperNode per node, the ServerApp",
        description="Start flower-superlink and one flower-supernode per --control endpoint on 127.0.0.1 (free ports, "
        "FLWR_HOME under --out), submit the edge-runtime Flower app with flwr run, wait for federation.rounds rounds, "
        "then stop the Flower processes. The nodes are `edge-node run` daemons with federation.enabled=true; "
        "their control endpoint is in their state_dir/node.json (control_endpoint).",
    )
    add_config_args(fed)
    fed.add_argument("--control", action="append", default=[], metavar="ENDPOINT", required=True,
                     help="a node's control endpoint, e.g. ipc:///path/edge-state/control.ipc (repeat per node)")
    fed.add_argument("--out", metavar="DIR", default="federation-out", help="rounds.json, global.npz, Flower logs (default federation-out)")

    demo = sub.add_parser(
        "federation-demo",
        help="three edge nodes on loopback, each fleet streaming a disjoint share of the classes, federated on Flower",
        description="Start 3 edge-node daemons, 3 device-sim fleets (classes 0-2, 3-5, 6-9 of the synthetic data set), "
        "measure each node's held-out accuracy on ALL classes, run federation.rounds Flower rounds while the fleets "
        "stream a second pass, measure again; print a table and write OUT/report.json.",
    )
    add_config_args(demo)
    demo.add_argument("--out", metavar="DIR", default="federation-demo-out", help="report.json, logs, node state (default federation-demo-out)")
    demo.add_argument("--samples", type=int, default=720, help="size of the synthetic data set each fleet filters its classes from (default 720)")
    demo.add_argument("--seed", type=int, default=3, help="data seed (default 3)")


def cmd_federate(args: argparse.Namespace) -> int:
    from edge_runtime.core.config import load_config
    from edge_runtime.federation.launch import Federation, FederationLaunchError, wait_for_rounds

    config = load_config(args.config, args.set)
    fc = config.federation
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    fed = Federation(out / "flower")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        port = fed.start_superlink()
        for i, endpoint in enumerate(args.control):
            fed.start_supernode(f"node{i}", endpoint)
        print(f"SuperLink on 127.0.0.1:{port}, {len(args.control)} SuperNodes; running {fc.rounds} rounds of {fc.strategy}", flush=True)
        run_config = {"out-dir": str(out)}
        if args.config:
            run_config["config-file"] = str(Path(args.config).resolve())
        if args.set:
            run_config["federation-set"] = " ".join(s.split("federation.", 1)[1] for s in args.set if s.startswith("federation."))
        fed.run(run_config)
        log = wait_for_rounds(out, fc.rounds, fc.rounds * (fc.round_timeout_s + fc.round_interval_s) + 120, fed)
    except FederationLaunchError as err:
        print(f"edge-node federate: {err}", file=sys.stderr)
        return 1
    finally:
        fed.close()
    for r in log["rounds"]:
        print(f"round {r['round']}: {r['replies']} replies, {r['failures']} failed, {(r['bytes_up'] + r['bytes_down']) / 1024:.0f} KiB, {r['seconds']:.1f} s")
    print(f"rounds log in {out / 'rounds.json'}, global model in {out / 'global.npz'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_runtime.cli.federation_demo import demo_config, run_federation_demo

    if args.samples < 100:
        raise ValueError(f"--samples must be at least 100 (got {args.samples})")
    run_federation_demo(demo_config(args.config, args.set), Path(args.out), samples=args.samples, seed=args.seed)
    print(f"report written to {Path(args.out) / 'report.json'}")
    return 0


COMMANDS = {"federate": cmd_federate, "federation-demo": cmd_demo}
