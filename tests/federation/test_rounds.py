"""Round arithmetic of the ServerApp's strategy on real Flower messages (issue 25 item 5), no processes.

FedAvg ("Communication-Efficient Learning of Deep Networks from Decentralized Data") weights each
node by ``n_k`` = samples it learned since the last merge: ``w = sum_k n_k w_k / sum_k n_k``. A node
with ``n_k = 0`` adds no information and must not pull the average towards its (stale) weights; a
round where every node is idle keeps the global model instead of dividing by zero.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the federation extra: pip install -e '.[federation]'")

from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict  # noqa: E402
from flwr.app.message.message import make_message  # noqa: E402

from edge_runtime.core.config import config_from_dict  # noqa: E402
from edge_runtime.federation.arrays import COUNTS  # noqa: E402
from edge_runtime.federation.client_app import PROTOTYPES_KEY  # noqa: E402
from edge_runtime.federation.server_app import make_strategy  # noqa: E402

RNG = np.random.default_rng(0)


def _reply(node: int, weights: dict[str, np.ndarray], n: int) -> Message:
    """A train reply as the SuperLink hands it to the strategy (what ``client_app.train`` sends)."""
    content = RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
        PROTOTYPES_KEY: ArrayRecord({"proto.audio": Array(RNG.normal(size=(3, 4)).astype(np.float32)),
                                     COUNTS: Array(np.array([n, 1, 0], dtype=np.int64))}),
        "metrics": MetricRecord({"num-examples": n, "samples-since-round": n, "samples-total": 100 + n, "node-round": 0}),
    })
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id=f"q{node}",
                    group_id="1", created_at=time.time(), ttl=60.0, message_type="train")
    return make_message(meta, content)


def _weights() -> dict[str, np.ndarray]:
    return {"model.a.weight": RNG.normal(size=(4, 3)).astype(np.float32), "model.a.bias": RNG.normal(size=4).astype(np.float32)}


def _strategy(name: str = "fedavg"):
    s = make_strategy(config_from_dict({"federation": {"strategy": name, "min_nodes": 1}}).federation)
    s._current = {"round": 1, "started": time.time(), "bytes_down": 0, "bytes_up": 0}
    return s


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_an_idle_node_counts_zero_in_the_weighted_average(name):
    nodes = [_weights() for _ in range(3)]
    n = [0, 30, 90]  # node 0 learned nothing since the last merge
    s = _strategy(name)
    arrays, metrics = s.aggregate_train(1, [_reply(k, w, c) for k, (w, c) in enumerate(zip(nodes, n))])
    for key in nodes[0]:
        direct = sum(c * w[key].astype(np.float64) for w, c in zip(nodes, n)) / sum(n)
        np.testing.assert_allclose(arrays[key].numpy(), direct, rtol=1e-6, atol=1e-7, err_msg=key)
        # what the old weight of 1 for the idle node gave: measurably pulled towards its stale weights
        old = sum(max(c, 1) * w[key].astype(np.float64) for w, c in zip(nodes, n)) / sum(max(c, 1) for c in n)
        assert not np.allclose(old, direct, rtol=1e-6, atol=1e-7)
    assert s.rounds == [] and s._current["idle"] == 1 and s._current["aggregated"]
    assert metrics["samples-since-round"] == pytest.approx((30 * 30 + 90 * 90) / 120)  # weighted by n too, idle left out


def test_a_round_in_which_every_node_is_idle_keeps_the_global_model(caplog):
    s = _strategy()
    with caplog.at_level(logging.WARNING, logger="edge_runtime.federation"):
        arrays, metrics = s.aggregate_train(2, [_reply(k, _weights(), 0) for k in range(3)])
    assert arrays is None and metrics is None  # flwr's Strategy.start keeps the previous global arrays
    assert s._current["idle"] == 3 and not s._current["aggregated"]
    assert "idle" in caplog.text and "global model is kept" in caplog.text
    assert list(s.configure_evaluate(2, ArrayRecord(), None, None)) == []  # nothing is put into the nodes
    assert s.prototypes is not None  # the prototypes (cumulative counts) are still merged
