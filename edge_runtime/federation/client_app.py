"""The Flower ClientApp: a thin shim between a SuperNode and its local ``edge-node`` daemon.

Flower starts it per message; it owns nothing. It reaches the node through the control channel
named by the SuperNode's node config (``--node-config "control='ipc:///.../control.ipc'"``) and
imports no torch.

* ``train`` (round r): wait for the node (a node that is down, e.g. restarting, gets until the round
  interval to come back); if the node has not yet received the global model of round r-1 (it was
  down, or it is new), put it first (``r == 1`` carries only the initial model, which the node
  keeps its own instead of); then wait until the node has learned ``samples_per_round`` samples
  since the last merge, or ``round_interval_s`` passed; then ``get`` and reply with the weights
  (``arrays``), the prototypes with their per-class counts (``prototypes``) and the counters
  (``metrics``: ``num-examples`` = samples learned since the last merge; 0 for an idle node, which
  then does not count in the average).
* ``evaluate`` (round r): the message carries round r's aggregate; put it into the node (the merge).

A node that does not answer within ``control_timeout_s`` makes this ClientApp fail, which Flower
reports to the strategy as a failed reply: the round goes on with the other nodes.

A node whose control channel is remote (``federation.control_allow_remote``, CURVE) is reached with
the node-config entries ``control-client-key`` (this client's ``*.key_secret``, its public key in
the node's ``node.curve.allowed_keys_dir``) and ``control-server-key`` (the node's ``server.key``).
"""

from __future__ import annotations

import time

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edge_runtime.federation.control import ControlClient, ControlError, client_curve_keys
from edge_runtime.federation.arrays import split
from edge_runtime.federation.packing import is_packed, pack_content, record_arrays

app = ClientApp()

PROTOTYPES_KEY = "prototypes"


def _client(context: Context, timeout: float) -> ControlClient:
    endpoint = context.node_config.get("control")
    if not endpoint:
        raise RuntimeError("this SuperNode has no control endpoint: start it with "
                           "--node-config \"control='ipc://<node state_dir>/control.ipc'\"")
    client_key, server_key = context.node_config.get("control-client-key"), context.node_config.get("control-server-key")
    if bool(client_key) != bool(server_key):
        raise RuntimeError("a remote control channel needs both --node-config entries control-client-key and control-server-key")
    curve = client_curve_keys(str(client_key), str(server_key)) if client_key else None
    return ControlClient(str(endpoint), timeout_s=timeout, curve=curve)


def incoming(message: Message) -> dict:
    """The global arrays a message carries: weights plus, when present, prototypes and counts."""
    arrays = record_arrays(message.content, "arrays")  # packed or not (edge_runtime/federation/packing.py)
    if PROTOTYPES_KEY in message.content:
        arrays.update(record_arrays(message.content, PROTOTYPES_KEY))
    return arrays


def cfg(message: Message, key: str, default):
    """Entry ``key`` of the message's config record, as the type of ``default``."""
    return type(default)(message.content["config"].get(key, default))


def _status_until(node: ControlClient, deadline: float) -> dict:
    """The node's status; a node that is down (restarting) gets until ``deadline`` to come back."""
    while True:
        try:
            return node.status()
        except ControlError as err:
            if err.code != "timeout" or time.monotonic() >= deadline:
                raise


@app.train()
def train(message: Message, context: Context) -> Message:
    rnd = cfg(message, "server-round", 1)
    node = _client(context, cfg(message, "control-timeout-s", 5.0))
    wanted, interval = cfg(message, "samples-per-round", 0), cfg(message, "round-interval-s", 30.0)
    deadline = time.monotonic() + interval
    status = _status_until(node, deadline)
    global_arrays = incoming(message)
    if rnd > 1 and status["round"] < rnd - 1 and PROTOTYPES_KEY in message.content:
        node.put(rnd - 1, global_arrays, proximal_mu=cfg(message, "proximal-mu", 0.0))  # rejoin: the current global model
        status = node.status()
    while status["samples_since_round"] < wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        status = node.status()
    header, arrays = node.get(round_=rnd)  # a round's get: the node carries its learning after it over the merge
    return train_reply(message, header, arrays)


def train_reply(message: Message, header: dict, arrays: dict) -> Message:
    """The reply to a ``train`` message from a node's round get (``header`` counters, shared ``arrays``)."""
    weights, protos = split(arrays)
    # FedAvg weight = samples learned since the last merge; 0 for an idle node (no new information: the
    # ServerApp leaves it out of the average, and keeps the global model when every node is idle)
    metrics = MetricRecord({"num-examples": int(header["samples_since_round"]),
                            "samples-since-round": int(header["samples_since_round"]),
                            "samples-total": int(header["samples_total"]), "node-round": int(header["round"])})
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
                          PROTOTYPES_KEY: ArrayRecord({k: Array(v) for k, v in protos.items()}),
                          "metrics": metrics})
    if is_packed(message.content):  # reply in the form the ServerApp sent
        pack_content(content)
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    rnd = cfg(message, "server-round", 1)
    node = _client(context, cfg(message, "control-timeout-s", 5.0))
    node.put(rnd, incoming(message), proximal_mu=cfg(message, "proximal-mu", 0.0))
    return Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 1, "merged-round": rnd})}), reply_to=message)
