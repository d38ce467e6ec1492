"""``edge-node federate``, ``federation-demo`` and ``federation-keys`` (argument parsing only; the work is in
launch / demo / keys)."""

from __future__ import annotations

import argparse
import json
import re
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
KEYS_EXAMPLES = ["edge-node federation-keys --out fed-keys --hosts superlink.example.org,10.0.0.5 --nodes box0,box1,box2"]
#: ``--control NAME=ENDPOINT``: a name (the node's folder in --keys) before an endpoint with a scheme.
NAMED_CONTROL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)=([a-z]+://.+)$")


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
    fed.add_argument("--control", action="append", default=[], metavar="[NAME=]ENDPOINT", required=True,
                     help="a node's control endpoint, e.g. ipc:///path/edge-state/control.ipc (repeat per node); "
                     "NAME= names the node (default node0, node1, ...), its folder in --keys")
    fed.add_argument("--out", metavar="DIR", default="federation-out", help="rounds.json, global.npz, Flower logs (default federation-out)")
    fed.add_argument("--clientapp", choices=("warm", "flower"), default=None,
                     help="warm: each SuperNode's ClientApps are forked from one pre-warmed launcher (the default); "
                     "flower: Flower's flwr-clientapp process per message (env EDGE_FEDERATION_CLIENTAPP sets the default)")
    fed.add_argument("--keys", metavar="DIR", default=None,
                     help="a folder of edge-node federation-keys: TLS on the SuperLink and SuperNode authentication instead of "
                     "--insecure (each node's key: DIR/nodes/NAME/supernode.key, registered before its SuperNode starts)")
    _add_keys_parser(sub)

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


def _add_keys_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser(
        "federation-keys",
        help="TLS certificates and SuperNode keys for a Flower deployment across a network (no --insecure)",
        description="Write a CA, the SuperLink's TLS certificate for --hosts (localhost, 127.0.0.1 and ::1 are always added) "
        "and one SuperNode authentication key pair per --nodes name, with the cryptography package. "
        "Copy DIR/superlink/ to the SuperLink's machine and DIR/nodes/NAME/ to edge box NAME; DIR/ca/ca.key stays where it is. "
        "Private keys are written 0600. Existing files are not overwritten unless --force (docs/federation.md, "
        "\"Across a real network\").",
        formatter_class=HelpFormatter, epilog=epilog(KEYS_EXAMPLES),
    )
    keys.add_argument("--out", metavar="DIR", required=True, help="folder to write to (created)")
    keys.add_argument("--hosts", action="append", default=[], metavar="HOST[,HOST...]",
                      help="the SuperLink's DNS names and IP addresses as the SuperNodes reach it (repeatable)")
    keys.add_argument("--nodes", action="append", default=[], metavar="NAME[,NAME...]", required=True,
                      help="one name per edge box, e.g. box0,box1,box2 (repeatable)")
    keys.add_argument("--days", type=int, default=825, help="validity of the SuperLink's certificate in days (default 825; the CA: 10 years)")
    keys.add_argument("--force", action="store_true", help="replace the files of an earlier run in DIR")
    keys.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="print the Python traceback of an error")


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
    from edge_runtime.federation.launch import Federation, FederationLaunchError, SecureLink, wait_for_rounds

    config = load_config(args.config, args.set)
    controls = named_controls(args.control)
    node_keys = supernode_keys(Path(args.keys), list(controls)) if args.keys else {}
    secure = SecureLink.from_keys(Path(args.keys)) if args.keys else None
    fc = config.federation
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("done.json", "rounds.json"):  # of an earlier run into the same --out: not this run's rounds
        (out / stale).unlink(missing_ok=True)
    fed = Federation(out / "flower", secure=secure, **({"clientapp": args.clientapp} if args.clientapp else {}))
    printer = RoundPrinter(out / "rounds.json", fc.rounds, lambda line: print(line, flush=True))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        port = fed.start_superlink()
        for name, (_private, public) in node_keys.items():
            fed.register_supernode(public, name)
        for name, endpoint in controls.items():
            fed.start_supernode(name, endpoint, private_key=node_keys[name][0] if node_keys else None)
        print(f"SuperLink on 127.0.0.1:{port} ({'TLS, SuperNode authentication' if secure else 'insecure'}), "
              f"{len(args.control)} SuperNodes; running {fc.rounds} rounds of {fc.strategy} (each round is printed as it ends)",
              flush=True)
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


def named_controls(values: list[str]) -> dict[str, str]:
    """``--control [NAME=]ENDPOINT`` values as {name: endpoint} (unnamed: node0, node1, ...); ValueError naming
    ``--control`` for a name given twice."""
    out: dict[str, str] = {}
    for i, value in enumerate(values):
        named = NAMED_CONTROL.match(value)
        name, endpoint = (named.group(1), named.group(2)) if named else (f"node{i}", value)
        if name in out:
            raise ValueError(f"--control {value}: node name {name!r} given twice")
        out[name] = control_endpoint(endpoint)
    return out


def supernode_keys(keys_dir: Path, names: list[str]) -> dict[str, tuple[Path, Path]]:
    """{name: (private key, public key)} of each node in a ``federation-keys`` folder; ValueError naming ``--keys``
    and the node when its files are missing."""
    from edge_runtime.federation.keys import DeploymentKeys

    keys = DeploymentKeys(keys_dir.resolve())
    out = {}
    for name in names:
        node = keys.node(name)
        for path in (node.private_key, keys.registered_key(name)):
            if not path.is_file():
                known = ", ".join(keys.node_names()) or "none"
                raise ValueError(f"--keys {keys_dir}: no {path} for node {name!r} (nodes with keys: {known}); "
                                 "name each --control after its keys, e.g. --control box0=ipc://box0/control.ipc")
        out[name] = (node.private_key, keys.registered_key(name))
    return out


def cmd_keys(args: argparse.Namespace) -> int:
    from edge_runtime.federation.keys import generate, parse_hosts, parse_nodes

    hosts, nodes = parse_hosts(args.hosts), parse_nodes(args.nodes)
    try:
        keys = generate(Path(args.out), hosts, nodes, days=args.days, force=args.force)
    except OSError as err:
        raise ValueError(f"--out {args.out}: cannot write there ({err.strerror or err})") from None
    print(f"CA, SuperLink certificate (for {', '.join(hosts)}) and {len(nodes)} SuperNode key(s) written to {keys.root}/")
    print(f"  copy {keys.superlink_dir}/ to the SuperLink's machine")
    for name in nodes:
        print(f"  copy {keys.node(name).private_key.parent}/ to edge box {name}")
    print(f"  keep {keys.ca_key} here (it signs; copy it nowhere)")
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


COMMANDS = {"federate": cmd_federate, "federation-demo": cmd_demo, "federation-keys": cmd_keys}
