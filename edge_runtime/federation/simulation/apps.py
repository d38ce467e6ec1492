"""The ClientApp and ServerApp of a simulated fleet on Flower's Simulation Engine.

The ServerApp is the deployed one's round (:func:`edge_runtime.federation.server_app.run_rounds`:
the same strategy, prototype merge, arrays and ``rounds.json``), with one more config entry,
``sim-dir``: the folder holding the fleet's configuration, plan and shares, and one state folder
per node. The ClientApp differs from the deployed shim only in where the node is: instead of a
daemon behind a control channel, it restores the node from its state folder (:class:`SimNode`),
streams the node's slice of the round, and saves it again.

* ``train`` (round r): a node that missed the last merge (it was down) first applies round r-1's
  global model, carrying its local learning over (as a rejoining daemon does); it learns its slice;
  ``up``: replies with its arrays (the deployed reply); ``down`` / ``late``: an error reply (the
  round is aggregated without it), its learning kept for the next round.
* ``evaluate`` (round r): ``up`` / ``late``: applies round r's global model (the merge); ``down``:
  does not. Then it measures its model on the held-out set of every class (the simulation's
  observer: in a deployment an unreachable node reports nothing) and replies with ``accuracy``,
  ``accuracy-own``, ``accuracy-unseen``, ``merged``, ``seconds`` and the worker's peak memory.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any, Callable

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from edge_runtime.core.config import Config, load_config
from edge_runtime.federation.client_app import PROTOTYPES_KEY, cfg, incoming, train_reply
from edge_runtime.federation.server_app import run_rounds
from edge_runtime.federation.simulation.node import SimNode
from edge_runtime.federation.simulation.plan import DOWN, UP, FleetData, SimPlan, load_shares, round_slice

SIM_DIR_KEY = "sim-dir"
#: ``Error`` code of a simulated node that is down or late in a round (Flower's own codes are small numbers).
UNAVAILABLE = 900


class Setting:
    """What every node of one simulation shares: configuration, plan, data set, held-out set, shares."""

    def __init__(self, sim_dir: Path, data: FleetData) -> None:
        self.sim_dir = sim_dir
        self.config: Config = load_config(sim_dir / "config.yaml")
        self.plan = SimPlan.from_json((sim_dir / "plan.json").read_text())
        self.dataset = data
        self.test = data.test_set(self.plan.test_samples)
        self.shares = load_shares(str(sim_dir / "shares.npz"))

    def node(self, k: int) -> SimNode:
        return SimNode(self.config, self.sim_dir / "nodes" / f"node-{k}", name=f"node-{k}")

    def samples(self, k: int, rnd: int) -> list:
        """Node ``k``'s samples of round ``rnd`` (device = the node, seq = the stream index)."""
        out = []
        for idx in round_slice(self.plan, self.shares[k], rnd).tolist():
            s = self.dataset.sample(int(idx))
            s.device, s.seq = f"node-{k}", int(idx)
            out.append(s)
        return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _unavailable(message: Message, k: int, rnd: int, state: str) -> Message:
    reason = f"node-{k} {state} in round {rnd} (simulated {'dropout' if state == DOWN else 'straggler'})"
    return Message(Error(code=UNAVAILABLE, reason=reason), reply_to=message)


def make_client_app(data: FleetData) -> ClientApp:
    """The fleet's ClientApp over ``data`` (shipped to every Ray worker with the app; built there once)."""
    app = ClientApp()
    settings: dict[str, Setting] = {}

    def setting(message: Message) -> Setting:
        sim_dir = cfg(message, SIM_DIR_KEY, "")
        if sim_dir not in settings:
            settings[sim_dir] = Setting(Path(sim_dir), data)
        return settings[sim_dir]

    @app.train()
    def train(message: Message, context: Context) -> Message:
        rnd = cfg(message, "server-round", 1)
        k = int(context.node_config["partition-id"])
        st = setting(message)
        state = st.plan.availability(rnd, k)
        node = st.node(k)
        mu = cfg(message, "proximal-mu", 0.0)
        if state != DOWN and rnd > 1 and node.round < rnd - 1 and PROTOTYPES_KEY in message.content:
            node.link.merge(rnd - 1, incoming(message), mu)  # rejoin: the current global model, local learning carried
        node.learn(st.samples(k, rnd))
        if state != UP:
            node.save()
            return _unavailable(message, k, rnd, state)
        header, arrays = node.link.reply(rnd)
        node.save()
        return train_reply(message, header, arrays)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        started = time.perf_counter()
        rnd = cfg(message, "server-round", 1)
        k = int(context.node_config["partition-id"])
        st = setting(message)
        node = st.node(k)
        merged = st.plan.availability(rnd, k) != DOWN
        if merged:
            node.link.merge(rnd, incoming(message), cfg(message, "proximal-mu", 0.0))  # checkpoints the node
        acc = node.evaluate(st.test, st.plan.classes(k))
        metrics: dict[str, Any] = {"num-examples": 1, "merged-round": rnd, "merged": int(merged), "node": k, **acc,
                                   "seconds": time.perf_counter() - started, "peak-rss-mb": _peak_rss_mb(),
                                   "disk-bytes": node.disk_bytes()}
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=message)

    return app


def make_server_app(config: Config, sim_dir: Path, on_round: Callable[[dict[str, Any]], None] | None = None) -> ServerApp:
    """The deployed round (:func:`run_rounds`) over the simulated nodes, logging to ``sim_dir``."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_rounds(grid, config, sim_dir, extra={SIM_DIR_KEY: str(sim_dir)}, on_round=on_round)

    return app
