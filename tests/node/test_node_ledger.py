"""An in-process node (real ROUTER socket, real SQLite ledger) with small learners that count what they see.

* the ledger stays bounded over a long stream (compaction), while resends of old seqs are still
  answered and no seq is ever learned twice;
* a micro-batch that raises in the learner is decided sample by sample: only the culprit is refused;
* with ``node.router_handover`` on, a second connection claiming a live id gets ``id_in_use``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from typing import Any, Sequence

import numpy as np
import pytest
import zmq

from edge_runtime.core.config import config_from_dict
from edge_runtime.core.names import SAMPLES_SEEN
from edge_runtime.node.daemon import EdgeNode
from edge_runtime.core.sample import Sample
from tests.support.nodeclient import Device, stream

VERDICTS = {"admitted", "trained", "skipped", "eval"}


class CountingLearner:
    """Decides every sample ``trained`` and counts each (device, seq) it was given; raises on label ``poison``."""

    def __init__(self, poison: int | None = None) -> None:
        self.seen: Counter = Counter()
        self.poison = poison
        self.calls = 0

    def observe(self, samples: Sequence[Sample]) -> list[str]:
        self.calls += 1
        if any(s.label == self.poison for s in samples):
            raise RuntimeError("this model cannot take that sample")
        self.seen.update(s.key for s in samples)
        return ["trained"] * len(samples)

    def summary(self) -> dict[str, Any]:
        return {SAMPLES_SEEN: sum(self.seen.values())}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def export_model(self) -> None:
        return None

    def restore_from_store(self) -> int:
        return 0

    @property
    def updates(self) -> int:
        return self.calls


@pytest.fixture
def serve(tmp_path):
    nodes: list[tuple[EdgeNode, threading.Thread]] = []

    def start(learner, **node_cfg) -> EdgeNode:
        cfg = config_from_dict({"node": {"bind": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / f"state{len(nodes)}"),
                                         "log_format": "text", "batch_window_ms": 2.0, "frame_size": [16, 16], **node_cfg}})
        node = EdgeNode(cfg, learner=learner)
        ready = threading.Event()
        thread = threading.Thread(target=node.run, kwargs={"ready": ready}, daemon=True)
        thread.start()
        assert ready.wait(30)
        nodes.append((node, thread))
        return node

    ctx = zmq.Context()
    yield start, ctx
    ctx.destroy(linger=0)
    for node, thread in nodes:
        node.request_stop()
        thread.join(60)
        assert not thread.is_alive()


@pytest.mark.slow
def test_ledger_stays_bounded_and_old_resends_are_still_answered(serve):
    start, ctx = serve
    learner = CountingLearner()
    retention, n = 200, 50_000
    node = start(learner, credit=512, batch_size=256, queue_max=4096, ledger_retention=retention, evictions_keep=10,
                 frame_size=[2, 2])
    dev = Device(ctx, node.endpoint, "long")
    assert dev.hello(schema={})["type"] == "welcome"  # the welcome names the node's 2 x 2 frames
    audio, video = np.ones((1, 13), "<f4"), np.ones((1, 1, 2, 2), "<f4")
    got = stream(dev, range(n), window=512, audio=audio, video=video)
    assert len(got) == n and set(got.values()) == {"trained"}
    with sqlite3.connect(node.state_dir / "state.db") as db:
        rows = db.execute("SELECT MIN(seq), COUNT(*) FROM verdicts WHERE device = 'long'").fetchone()
        (next_seq,) = db.execute("SELECT next_seq FROM devices WHERE device = 'long'").fetchone()
    assert next_seq == n
    # compaction ran in the learner's transactions: only rows within the window (plus one batch) remain
    assert rows[1] <= retention + 256 and rows[0] >= n - retention - 256
    # a resend of a compacted seq is answered "decided" (never learned again); a recent one with its verdict
    for seq in (0, 17, n // 2):
        dev.sample(seq, audio=audio, video=video)
        assert dev.acks({seq}) == {seq: "decided"}
    dev.sample(n - 1, audio=audio, video=video)
    assert dev.acks({n - 1}) == {n - 1: "trained"}
    assert len(learner.seen) == n and max(learner.seen.values()) == 1  # every seq learned exactly once
    dev.close()


def test_a_batch_that_raises_is_decided_one_by_one(serve):
    start, ctx = serve
    learner = CountingLearner(poison=7)
    node = start(learner, credit=32, batch_size=16, batch_window_ms=200.0)
    dev = Device(ctx, node.endpoint, "dev")
    assert dev.hello()["type"] == "welcome"
    for seq in range(16):
        dev.sample(seq, label=seq % 10)  # seq 7 carries the poisoned label; all 16 in one micro-batch
    got = dev.acks(set(range(16)))
    assert got[7] == "invalid:model_error"
    assert all(v == "trained" for s, v in got.items() if s != 7)
    after = stream(dev, range(16, 32))  # still serving; later poison is refused the same way
    assert after[17] == after[27] == "invalid:model_error" and sum(v == "trained" for v in after.values()) == 14
    assert ("dev", 7) not in learner.seen and len(learner.seen) == 29
    dev.close()


def test_router_handover_second_connection_on_a_live_id_gets_id_in_use(serve):
    start, ctx = serve
    node = start(CountingLearner(), router_handover=True, heartbeat_ivl_ms=200, heartbeat_timeout_ms=3000)
    first = Device(ctx, node.endpoint, "uav")
    assert first.hello()["type"] == "welcome"
    assert set(stream(first, range(8), window=8).values()) <= VERDICTS
    second = Device(ctx, node.endpoint, "uav")
    err = second.hello()
    assert err["type"] == "error" and err["code"] == "id_in_use"
    second.sample(8)
    assert second.recv()["code"] in ("id_in_use", "no_hello")  # never the first one's verdicts
    first.close()
    second.close()
