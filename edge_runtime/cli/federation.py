"""``edge-node federate`` and ``edge-node federation-demo`` (argument parsing only; the work is in launch / demo)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from edge_runtime.cli.helptext import HelpFormatter, epilog

#: The examples of the helps (tests/cli/test_help_examples.py runs them as written).
FEDERATE_EXAMPLES = [
    "edge-node run --set federation.enabled=true --set node.state_dir=node-a --set node.bind=tcp://127.0.0.1:5561   # terminal 1",
    "edge-node run --set federation.enabled=true --set node.state_dir=node-b --set node.bind=tcp://127.0.0.1:5562   # terminal 2",
    "edge-node federate --control ipc://node-a/control.ipc --control ipc://node-b/control.ipc "
    "--set federation.rounds=2 --set federation.round_interval_s=5",
]
DEMO_EXAMPLES = ["edge-node federation-demo --out fed-demo   # 3 nodes, disjoint classes, 3 rounds; a few minutes"]


def add_parsers(sub: argparse._SubParsersAction, add_config_args) -> None:
    fed = sub.add_parser(
        "federate",
        help="run Flower rounds over running edge nodes: one SuperLink, a SuperNode per node, the ServerApp",
        description="Start flower-superlink and one flower-supernode per --control endpoint on 127.0.0.1 (free ports, "
        "FLWR_HOME under --out), submit the edge-runtime Flower app with flwr run, wait for federation.rounds rounds, "
        "then stop the Flower processes. The nodes are `edge-node run` daemons with federation.enabled=true; "
        "their control endpoint is in their state_dir/node.json (control_endpoint); a relative ipc:// path is taken "
        "from the current folder. Each round is printed as it ends.",
        formatter_class=HelpFormatter, epilog=epilog(FEDERATE_EXAMPLES),
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
        formatter_class=HelpFormatter, epilog=epilog(DEMO_EXAMPLES),
    )
    add_config_args(demo)
    demo.add_argument("--out", metavar="DIR", default="federation-demo-out", help="report.json, logs, node state (default federation-demo-out)")
    demo.add_argument("--samples", type=int, default=720, help="size of the synthetic data set each fleet filters its classes from (default 720)")
    demo.add_argument("--seed", type=int, default=3, help="data seed (default 3)")


def round_line(r: dict[str, Any]) -> str:
    """One line of a finished round of ``rounds.json``."""
    return (f"round {r['round']}: {r['replies']} replies, {r['failures']} failed, "
            f"{(r['bytes_up'] + r['bytes_down']) / 1024:.0f} KiB, {r['seconds']:.1f} s")


class RoundPrinter:
    """Prints each round of ``rounds.json`` once, as it appears: the ServerApp (another process) rewrites
    the file at the end of every round, and this tails it every ``interval`` seconds in a thread."""

    def __init__(self, path: Path, total: int, write: Callable[[str], None] = print, interval: float = 0.5) -> None:
        self.path, self.total, self.write, self.interval = path, total, write, interval
        self.printed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="round-printer", daemon=True)

    def start(self) -> "RoundPrinter":
        self._thread.start()
        return self

    def show(self, rounds: list[dict[str, Any]]) -> None:
        """Print the rounds of ``rounds`` not printed yet."""
        for r in rounds[self.printed:]:
            self.write(f"{round_line(r)}  [{r['round']}/{self.total}]")
            self.printed += 1

    def poll(self) -> None:
        try:
            rounds = json.loads(self.path.read_text())["rounds"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # not written yet, or caught mid-write: the next poll reads it
        self.show(rounds)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def stop(self, rounds: list[dict[str, Any]] | None = None) -> None:
        """Stop tailing; print what ``rounds`` (the final log) has that was not printed yet."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if rounds is not None:
            self.show(rounds)


def cmd_federate(args: argparse.Namespace) -> int:
    from edge_runtime.core.config import load_config
    from edge_runtime.federation.launch import Federation, FederationLaunchError, wait_for_rounds

    config = load_config(args.config, args.set)
    controls = [control_endpoint(endpoint) for endpoint in args.control]
    fc = config.federation
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("done.json", "rounds.json"):  # of an earlier run into the same --out: not this run's rounds
        (out / stale).unlink(missing_ok=True)
    fed = Federation(out / "flower")
    printer = RoundPrinter(out / "rounds.json", fc.rounds, lambda line: print(line, flush=True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        port = fed.start_superlink()
        for i, endpoint in enumerate(controls):
            fed.start_supernode(f"node{i}", endpoint)
        print(f"SuperLink on 127.0.0.1:{port}, {len(args.control)} SuperNodes; running {fc.rounds} rounds of {fc.strategy} "
              "(each round is printed as it ends)", flush=True)
        run_config = {"out-dir": str(out)}
        if args.config:
            run_config["config-file"] = str(Path(args.config).resolve())
        if args.set:
            run_config["federation-set"] = " ".join(s.split("federation.", 1)[1] for s in args.set if s.startswith("federation."))
        fed.run(run_config)
        printer.start()
        log = wait_for_rounds(out, fc.rounds, fc.rounds * (fc.round_timeout_s + fc.round_interval_s) + 120, fed)
        printer.stop(log["rounds"])
    except FederationLaunchError as err:
        printer.stop()
        print(f"edge-node federate: {err}", file=sys.stderr)
        return 1
    finally:
        printer.stop()
        fed.close()
    print(f"rounds log in {out / 'rounds.json'}, global model in {out / 'global.npz'}")
    return 0


def control_endpoint(endpoint: str) -> str:
    """``endpoint`` with a relative ``ipc://`` path made absolute (the Flower processes run in another folder);
    ValueError (exit 2) when an ``ipc://`` socket file does not exist: no node serves its control channel there."""
    if not endpoint.startswith("ipc://"):
        return endpoint
    path = Path(endpoint[len("ipc://"):]).absolute()
    if not path.exists():
        raise ValueError(f"--control {endpoint}: no socket at {path}; start the node with federation.enabled=true "
                         "(its endpoint is control_endpoint in its state_dir/node.json)")
    return f"ipc://{path}"


def cmd_demo(args: argparse.Namespace) -> int:
    from edge_runtime.cli.federation_demo import demo_config, run_federation_demo
    from edge_runtime.federation.launch import FederationLaunchError

    if args.samples < 100:
        raise ValueError(f"--samples must be at least 100 (got {args.samples})")
    config = demo_config(args.config, args.set)
    try:
        run_federation_demo(config, Path(args.out), samples=args.samples, seed=args.seed)
    except (FederationLaunchError, RuntimeError, TimeoutError) as err:
        if args.debug:
            raise
        print(f"edge-node federation-demo: {err}", file=sys.stderr)
        return 1
    print(f"report written to {Path(args.out) / 'report.json'}")
    return 0


COMMANDS = {"federate": cmd_federate, "federation-demo": cmd_demo}
