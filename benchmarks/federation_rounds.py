"""Seconds per Flower round of ``edge-node federate`` over 3 local daemons: Flower's overhead, before / after.

Three ``edge-node run`` daemons (the federation demo's small model) each get a ``device-sim`` fleet
streaming slowly (``--fleet-rate`` samples/s per device, so every node has learned something in
each round and no round is idle) for the whole benchmark. Then ``edge-node federate`` runs
``--rounds`` rounds over them, once per arm and run, the arms interleaved (A B A B ...), with
``samples_per_round=0`` and ``round_interval_s=1``: a node's ClientApp replies as soon as it has
read the node's status, so a round's ``seconds`` in ``rounds.json`` (ServerApp: from sending
``train`` to holding all ``evaluate`` replies) is Flower's overhead plus our control-channel
get / put (well under a second), not the nodes' learning time.

Arms (:data:`ARMS`: the ``edge-node federate --clientapp`` value and environment variables):

* ``before``: Flower's defaults, as before issue 25 item 3: a ``flwr-clientapp`` process per
  message, one Flower object per array, ``flower-supernode``'s 3 s idle poll;
* ``launcher``: our pre-warmed ClientApp launcher (:mod:`edge_runtime.federation.clientapp_launcher`);
* ``packed``: the launcher, and one Flower object per dtype (:mod:`edge_runtime.federation.packing`);
* ``after``: the defaults now: launcher, packing and the SuperNode's idle poll at 0.5 s
  (:mod:`edge_runtime.federation.supernode`).

    .venv/bin/python benchmarks/federation_rounds.py --out /tmp/fed-rounds                     # before, after; 2 runs each: ~10 min
    .venv/bin/python benchmarks/federation_rounds.py --arms before,launcher,packed,after --out /tmp/fr  # where the gain comes from

Writes ``OUT/rounds.csv`` (one row per round: arm, run, round, seconds, train / evaluate waits, load
average at the run's start) and prints median [min-max] seconds per round for each arm.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge_runtime.cli.federation_demo import SPLIT, demo_config, fleet_command, node_config, start_node, wait_node  # noqa: E402
from edge_runtime.federation.launch import free_port  # noqa: E402

#: arm -> (edge-node federate --clientapp, environment of the federate process and so of every Flower process)
ARMS: dict[str, tuple[str, dict[str, str]]] = {
    "before": ("flower", {"EDGE_FEDERATION_PACK_ARRAYS": "0", "EDGE_FEDERATION_SUPERNODE_POLL_S": "flower"}),
    "launcher": ("warm", {"EDGE_FEDERATION_PACK_ARRAYS": "0", "EDGE_FEDERATION_SUPERNODE_POLL_S": "flower"}),
    "packed": ("warm", {"EDGE_FEDERATION_PACK_ARRAYS": "1", "EDGE_FEDERATION_SUPERNODE_POLL_S": "flower"}),
    "after": ("warm", {"EDGE_FEDERATION_PACK_ARRAYS": "1", "EDGE_FEDERATION_SUPERNODE_POLL_S": ""}),
}
FIELDS = ["arm", "run", "round", "seconds", "train_wait_s", "evaluate_wait_s", "replies", "failures", "load_avg_1m"]


def federate(arm: str, controls: list[str], config: Path, out: Path, rounds: int, timeout: float) -> tuple[list[dict], float]:
    """One ``edge-node federate`` run; (rounds.json's rounds, wall seconds)."""
    clientapp, env = ARMS[arm]
    cmd = [sys.executable, "-m", "edge_runtime.cli.main", "federate", "--config", str(config), "--out", str(out),
           "--clientapp", clientapp, "--set", f"federation.rounds={rounds}", "--set", "federation.samples_per_round=0",
           "--set", "federation.round_interval_s=1", "--set", "federation.min_nodes=3"]
    for c in controls:
        cmd += ["--control", c]
    started = time.monotonic()
    with open(out.parent / f"{out.name}.log", "wb") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), timeout=timeout,
                            env={**os.environ, **env}).returncode
    wall = time.monotonic() - started
    if rc != 0:
        raise RuntimeError(f"edge-node federate ({arm}) exited with {rc}; see {out.parent / f'{out.name}.log'}")
    return json.loads((out / "rounds.json").read_text())["rounds"], wall


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} s [min {min(values):.1f}, max {max(values):.1f}] (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arms", default="before,after", help=f"comma-separated of {', '.join(ARMS)}, interleaved in this order "
                        "(default before,after)")
    parser.add_argument("--runs", type=int, default=2, help="runs per arm (default 2)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run (default 5)")
    parser.add_argument("--fleet-rate", type=float, default=0.5, help="samples/s per device, 2 devices per fleet (default 0.5)")
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    if not set(arms) <= set(ARMS):
        parser.error(f"--arms: each of {', '.join(ARMS)}")
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = demo_config(None, [])
    procs: list[subprocess.Popen] = []
    fleets: list[subprocess.Popen] = []
    rows: list[dict] = []
    try:
        names = [f"box{i}" for i in range(len(SPLIT))]
        for name in names:
            cfg = node_config(config, out / f"{name}-state", f"tcp://127.0.0.1:{free_port()}")
            procs.append(start_node(cfg, out / f"{name}.yaml", out / f"{name}.log"))
        infos = [wait_node(p, out / f"{n}-state", out / f"{n}.log", since=0.0) for p, n in zip(procs, names)]
        for info, name, classes in zip(infos, names, SPLIT):  # a long, slow stream: it outlasts the benchmark
            fleets.append(subprocess.Popen(fleet_command(info["endpoint"], classes, 40000, 3, name, rate=args.fleet_rate),
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT)))
        time.sleep(10)  # every node learns a few samples before round 1
        controls = [info["control_endpoint"] for info in infos]
        for run in range(args.runs):
            for arm in arms:
                load = os.getloadavg()[0]
                log, wall = federate(arm, controls, out / "box0.yaml", out / f"{arm}-{run}", args.rounds,
                                     timeout=args.rounds * 300 + 300)
                for r in log:
                    rows.append({"arm": arm, "run": run, "round": r["round"], "seconds": r["seconds"],
                                 "train_wait_s": r.get("train_wait_s"), "evaluate_wait_s": r.get("evaluate_wait_s"),
                                 "replies": r["replies"], "failures": r["failures"], "load_avg_1m": round(load, 2)})
                secs = [r["seconds"] for r in log]
                print(f"{arm} run {run}: rounds {' '.join(f'{s:.1f}' for s in secs)} s; federate wall {wall:.0f} s; "
                      f"load average {load:.2f}", flush=True)
    finally:
        for p in fleets + procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
    with open(out / "rounds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        if mine:
            loads = [r["load_avg_1m"] for r in mine]
            print(f"{arm}: seconds per round {summary([r['seconds'] for r in mine])}; "
                  f"load average {min(loads):.1f}-{max(loads):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
