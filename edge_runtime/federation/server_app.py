"""The Flower ServerApp: a stock ``flwr`` strategy over the edge nodes, plus per-class prototype merging.

Weights: FedAvg (default), FedProx or FedAdam from ``flwr.serverapp.strategy``, weighted by each
node's ``num-examples`` = samples it learned since the last round ("Communication-Efficient Learning of
Deep Networks from Decentralized Data": ``w = sum_k n_k w_k / sum_k n_k``). A node that learned nothing
since the last merge (``n_k = 0``) brings no new information and is left out of the average (the same
sum without it); a round in which every replying node is idle keeps the global model (no division by
zero), logs it, and sends nothing back. Prototypes travel beside the
weights in their own ArrayRecord (``prototypes``) and are merged per class weighted by each
node's per-class counts (:func:`edge_runtime.federation.arrays.merge_prototypes`), so the strategy
never averages them with zeros. Each round: ``train`` (nodes learn locally, then reply with their
arrays), aggregate, ``evaluate`` (nodes receive the round's global model: the merge). A round in
which no node answered in time sends nothing: every node keeps learning locally.

The strategy talks to the SuperLink through :class:`PollingGrid`: Flower 1.42's grid
(``flwr/superlink/grid/http_grid.py``, ``send_and_receive``) looks for replies every 3 s, so a
phase whose replies are all in waits up to 3 s more (1.5 s on average, twice a round); this one looks
every ``REPLY_POLL_S``. ``rounds.json`` keeps each phase's wait (``train_wait_s``, ``evaluate_wait_s``).

Run configuration (``[tool.flwr.app.config]`` of ``edge_runtime/federation/app/pyproject.toml``):
``config-file`` (the nodes' YAML: model + ``federation:``), ``federation-set`` (``KEY=VALUE``
overrides of ``federation.*``), ``out-dir`` (``rounds.json`` and ``global.npz`` are written there).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from edge_runtime.core.config import Config, FederationConfig, load_config
from edge_runtime.federation.arrays import merge_prototypes, nbytes
from edge_runtime.federation.grid import DelegatingGrid
from edge_runtime.federation.client_app import PROTOTYPES_KEY
from edge_runtime.federation.packing import PackingGrid

app = ServerApp()
log = logging.getLogger("edge_runtime.federation")

STRATEGIES = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}


def _weight(message: Message) -> float:
    """A train reply's FedAvg weight: its ``num-examples`` (samples the node learned since the last merge)."""
    record = next(iter(message.content.metric_records.values()), None)
    if record is None or "num-examples" not in record:
        return 1.0  # malformed: left to the stock strategy's checks
    return float(record["num-examples"])


def _merged(message: Message) -> bool:
    """Whether an evaluate reply says its node applied the global model (``merged`` 0: a simulated node that was down)."""
    record = next(iter(message.content.metric_records.values()), None)
    return record is None or int(record.get("merged", 1)) == 1


#: How often the ServerApp asks the SuperLink for the replies of a phase (Flower's own grid: every 3 s).
REPLY_POLL_S = 0.2


class PollingGrid(DelegatingGrid):
    """The SuperLink's grid with ``send_and_receive`` looking for replies every ``poll_s`` instead of 3 s.

    Everything else is the wrapped grid's. ``send_and_receive`` keeps Flower's semantics: push the
    messages, then pull until every one has a reply or ``timeout`` seconds passed (``None``: no limit);
    replies that came are returned either way. ``on_wait(message_type, seconds, pulls)`` is told how long
    each phase waited. Measured (docs/federation.md, 3 nodes on loopback): from the last reply sent to
    the ServerApp holding them all, medians of 5.5-7.2 s (train) and 1.7-2.5 s (evaluate) with the 3 s
    poll, 1.0-2.8 s and 0.2-0.5 s with 0.2 s (what remains is the download of the replies).
    """

    def __init__(self, grid: Grid, poll_s: float = REPLY_POLL_S,
                 on_wait: Callable[[str, float, int], None] | None = None) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.grid, self.poll_s, self.on_wait = grid, float(poll_s), on_wait

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:  # e.g. no evaluate after an all-idle round
            return []
        kind = messages[0].metadata.message_type
        started = time.monotonic()
        pending = set(self.grid.push_messages(messages))
        del messages
        end = started + (timeout if timeout is not None else 0.0)
        replies: list[Message] = []
        pulls = 0
        while True:
            got = list(self.grid.pull_messages(pending))
            pulls += 1
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            now = time.monotonic()
            if not pending or (timeout is not None and now >= end):
                break
            time.sleep(self.poll_s if timeout is None else min(self.poll_s, max(end - now, 0.0)))
        if self.on_wait is not None:
            self.on_wait(kind, time.monotonic() - started, pulls)
        return replies


def _record_bytes(record: ArrayRecord) -> int:
    return int(sum(len(a.data) for a in record.values()))


class PrototypeMerging:
    """Mixin over a stock flwr strategy: carries and merges the prototypes, logs every round."""

    def __init__(self, *args: Any, out_dir: Path | None = None,
                 on_round: Callable[[dict[str, Any]], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.out_dir = out_dir
        self.on_round = on_round
        self.prototypes: dict[str, np.ndarray] | None = None
        self.rounds: list[dict[str, Any]] = []
        self._current: dict[str, Any] = {}
        self._aggregated = False

    def _attach(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        if self.prototypes is not None:
            record = ArrayRecord({k: Array(v) for k, v in self.prototypes.items()})
            for msg in messages:
                msg.content[PROTOTYPES_KEY] = record
        for msg in messages:
            self._current["bytes_down"] += sum(_record_bytes(r) for r in msg.content.array_records.values())
        return messages

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self._current = {"round": server_round, "started": time.time(), "bytes_down": 0, "bytes_up": 0}
        return self._attach(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        parts, names, metric_keys = [], set(), set()
        for msg in replies:
            if msg.has_error():
                continue
            content = msg.content
            self._current["bytes_up"] += sum(_record_bytes(r) for r in content.array_records.values())
            for record in content.array_records.values():
                names.update(record.keys())
            for record in content.metric_records.values():
                metric_keys.update(record.keys())
            if PROTOTYPES_KEY in content:
                parts.append({k: v.numpy() for k, v in content[PROTOTYPES_KEY].items()})
                del content[PROTOTYPES_KEY]  # the stock strategy expects exactly one ArrayRecord
        if parts:
            self.prototypes = merge_prototypes(parts)
        weighted = [m for m in replies if m.has_error() or _weight(m) > 0]
        idle = len(replies) - len(weighted)
        if any(not m.has_error() for m in weighted):
            arrays, metrics = super().aggregate_train(server_round, weighted)  # type: ignore[misc]
        else:  # no node learned anything since the last merge (or none answered): nothing to average
            arrays, metrics = None, None
            if idle:
                log.warning("round %s: all %s replying nodes idle (0 samples since the last merge); the global model is kept",
                            server_round, idle)
        self._aggregated = arrays is not None
        self._current.update({
            "replies": sum(not m.has_error() for m in replies), "failures": sum(m.has_error() for m in replies),
            "idle": idle,
            "errors": [m.error.reason for m in replies if m.has_error()],
            "shared_arrays": sorted(names), "metric_keys": sorted(metric_keys),
            "samples": int(sum(p["proto.counts"].sum() for p in parts)),
            "aggregated": self._aggregated,
        })
        if arrays is not None and self.out_dir is not None:
            glob = {k: v.numpy() for k, v in arrays.items()}
            glob.update(self.prototypes or {})
            np.savez(self.out_dir / "global.npz", **glob)
        return arrays, metrics

    def record_wait(self, message_type: str, seconds: float, pulls: int) -> None:
        """:class:`PollingGrid`'s report of one phase: how long the ServerApp waited for its replies."""
        if self._current:
            self._current[f"{message_type}_wait_s"] = round(seconds, 3)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if not self._aggregated:
            return []  # nothing new: every node keeps learning locally
        return self._attach(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        reported = [dict(record) for m in replies if not m.has_error() for record in m.content.metric_records.values()]
        if any(set(r) - {"num-examples", "merged-round"} for r in reported):  # a node that measures itself (the simulation)
            self._current["node_metrics"] = reported
        self._current.update({"merged_into": sum(not m.has_error() and _merged(m) for m in replies),
                              "seconds": round(time.time() - self._current["started"], 3)})
        self._current.pop("started", None)
        self.rounds.append(self._current)
        if self.out_dir is not None:
            (self.out_dir / "rounds.json").write_text(json.dumps({"rounds": self.rounds}, indent=2))
        if self.on_round is not None:
            self.on_round(self._current)
        if not replies:
            return None
        return super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]


def make_strategy(fc: FederationConfig, out_dir: Path | None = None,
                  on_round: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """The configured stock strategy with prototype merging mixed in."""
    base = STRATEGIES[fc.strategy]
    kwargs: dict[str, Any] = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": fc.min_nodes,
                              "min_evaluate_nodes": fc.min_nodes, "min_available_nodes": fc.min_nodes}
    if fc.strategy == "fedprox":
        kwargs["proximal_mu"] = fc.proximal_mu
    if fc.strategy == "fedadam":
        kwargs.update(eta=fc.server_lr, tau=fc.server_tau)
    cls = type(f"Edge{base.__name__}", (PrototypeMerging, base), {})
    return cls(out_dir=out_dir, on_round=on_round, **kwargs)


def initial_arrays(config: Config) -> dict[str, np.ndarray]:
    """The model every node starts from (same seed, same architecture), as named arrays."""
    import torch

    from edge_runtime.learning.model import build_model

    torch.manual_seed(config.training.seed)
    model = build_model(config)
    return {f"model.{k}": v.detach().numpy().copy() for k, v in model.state_dict().items() if v.dtype.is_floating_point}


def round_config(fc: FederationConfig, extra: dict[str, Any] | None = None) -> ConfigRecord:
    """What every train / evaluate message tells the ClientApp (``extra``: more entries, e.g. the simulation's)."""
    return ConfigRecord({"samples-per-round": fc.samples_per_round, "round-interval-s": fc.round_interval_s,
                         "control-timeout-s": fc.control_timeout_s,
                         "proximal-mu": fc.proximal_mu if fc.strategy == "fedprox" else 0.0, **(extra or {})})


def run_rounds(grid: Grid, config: Config, out_dir: Path | None, extra: dict[str, Any] | None = None,
               on_round: Callable[[dict[str, Any]], None] | None = None) -> Any:
    """``federation.rounds`` rounds over ``grid``'s nodes; the strategy (its ``rounds`` log) is returned.

    One implementation of a round for both ways to run it: the deployed ServerApp (:func:`main`, over
    SuperNodes) and the simulation (``edge_runtime.federation.simulation``, over the Simulation Engine).
    """
    fc = config.federation
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    strategy = make_strategy(fc, out_dir, on_round)
    init = initial_arrays(config)
    strategy.start(grid=PollingGrid(grid, on_wait=strategy.record_wait),
                   initial_arrays=ArrayRecord({k: Array(v) for k, v in init.items()}), num_rounds=fc.rounds,
                   timeout=fc.round_timeout_s, train_config=round_config(fc, extra), evaluate_config=round_config(fc, extra))
    if out_dir is not None:
        (out_dir / "done.json").write_text(json.dumps({"rounds": len(strategy.rounds), "bytes_model": nbytes(init),
                                                         "reply_poll_s": REPLY_POLL_S}))
    return strategy


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    overrides = [f"federation.{kv}" for kv in str(rc.get("federation-set", "")).split()]
    config = load_config(str(rc.get("config-file") or "") or None, overrides)
    # one Flower object per dtype instead of per array (packing.py); EDGE_FEDERATION_PACK_ARRAYS=0: one per array
    if os.environ.get("EDGE_FEDERATION_PACK_ARRAYS", "1") != "0":
        grid = PackingGrid(grid)
    run_rounds(grid, config, Path(str(rc["out-dir"])) if rc.get("out-dir") else None)
