"""The welcome's ``next_seq`` after the device's state was rebuilt (docs/protocol.md sections 9 and 11).

The state the IO thread frees on bye, after ``node.device_idle_s`` and at a node restart is rebuilt
by the next hello from the ledger: its ``next_seq`` and the seqs decided out of order above it (within
the ``node.max_seq_gap`` window), so the welcome always names the first undecided seq.
"""

from __future__ import annotations

import pytest

import time

import zmq

from edge_runtime.learning.buffer.sqlite import SqliteStore
from edge_runtime.node.ledger import Ledger
from edge_runtime.node.sessions import SeqTracker
from tests.node.test_node_ledger import VERDICTS, CountingLearner, serve  # noqa: F401 (fixture)
from tests.support.nodeclient import Device
from tests.support.nodeproc import NodeProcess

OUT_OF_ORDER = [0, 1, 2, 4, 5, 6, 7]  # seq 3 held back


def _decide(dev: Device, seqs: list[int]) -> dict[int, str]:
    for seq in seqs:
        dev.sample(seq, label=seq % 10)
    got = dev.acks(set(seqs))
    assert set(got.values()) <= VERDICTS, got
    return got


def _reconnect(ctx: zmq.Context, endpoint: str, rid: str) -> tuple[Device, dict]:
    """A new connection and its welcome; reopened while the old connection's id is still parked (section 1)."""
    deadline = time.monotonic() + 30.0
    while True:
        dev = Device(ctx, endpoint, rid)
        dev.send({"v": 1, "type": "hello", "device": rid, "schema": {}})
        try:
            return dev, dev.recv(2000)
        except TimeoutError:
            dev.close()
            if time.monotonic() > deadline:
                raise


@pytest.mark.slow
def test_reader_resume_reads_the_seqs_decided_above_next_seq_within_the_window(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    ledger = Ledger(store)
    reader = ledger.reader()
    assert reader.resume("new", 8) == (0, [])  # never seen
    ledger.record_verdicts([("a", s, "trained") for s in OUT_OF_ORDER] + [("a", 11, "trained"), ("a", 12, "trained"),
                                                                          ("b", 0, "trained")])
    ledger.set_next_seq("a", 3)
    ledger.set_next_seq("b", 1)
    assert reader.resume("a", 8) == (0, [])  # committed rows only
    store.commit()
    assert reader.resume("b", 8) == (1, [])  # the common case: nothing above next_seq
    next_seq, above = reader.resume("a", 9)  # window [3, 12): 12 is outside it
    assert next_seq == 3 and sorted(above) == [4, 5, 6, 7, 11]
    tracker = SeqTracker(next_seq, above)
    assert tracker.next_seq == 3 and tracker.above == {4, 5, 6, 7, 11}
    tracker.add(3)
    assert tracker.next_seq == 8 and tracker.above == {11}
    ledger.compact("a", 3)  # rows below next_seq only: the ones above stay
    store.commit()
    assert sorted(reader.resume("a", 4096)[1]) == [4, 5, 6, 7, 11, 12]
    reader.close()


@pytest.mark.slow
def test_next_seq_after_a_restart_counts_the_seqs_decided_out_of_order(tmp_path):
    node = NodeProcess(tmp_path, {"node": {"credit": 16}}).start()
    ctx = zmq.Context()
    try:
        dev = Device(ctx, node.endpoint, "uav-restart-ooo")
        assert dev.hello(schema={})["next_seq"] == 0
        first = _decide(dev, OUT_OF_ORDER)
        assert dev.hello()["next_seq"] == 3  # same state, 4..7 known above it
        dev.close()
        assert node.stop(timeout=60.0) == 0  # SIGTERM: drain, checkpoint, exit
        node.start(timeout=120.0)

        dev = Device(ctx, node.endpoint, "uav-restart-ooo")
        assert dev.hello()["next_seq"] == 3
        dev.sample(5, label=5)  # decided above next_seq: its first verdict, at once
        assert dev.acks({5}) == {5: first[5]}
        _decide(dev, [3])
        assert dev.hello()["next_seq"] == 8  # 0..7 all decided, 4..7 never resent
        dev.close()

        dev, welcome = _reconnect(ctx, node.endpoint, "uav-restart-ooo")  # a new connection says the same
        assert welcome["next_seq"] == 8
        _decide(dev, [8])
        dev.close()
        assert node.stop(timeout=60.0) == 0
        node.start(timeout=120.0)
        dev = Device(ctx, node.endpoint, "uav-restart-ooo")
        assert dev.hello()["next_seq"] == 9
        dev.close()
    finally:
        ctx.destroy(linger=0)
        try:
            node.stop(timeout=60.0)
        except Exception:
            node.kill()
            raise


@pytest.mark.slow
def test_next_seq_after_idle_freeing_and_bye_counts_the_seqs_decided_out_of_order(serve):
    start, ctx = serve
    learner = CountingLearner()
    node = start(learner, device_idle_s=0.3)
    dev = Device(ctx, node.endpoint, "idle")
    assert dev.hello()["next_seq"] == 0
    _decide(dev, OUT_OF_ORDER)
    time.sleep(2.5)  # the IO thread sweeps idle devices once a second
    dev.sample(3, label=3)
    assert dev.recv()["code"] == "no_hello"  # the state was freed
    assert dev.hello()["next_seq"] == 3
    _decide(dev, [3])
    assert dev.hello()["next_seq"] == 8
    _decide(dev, [9, 10])  # 8 held back this time
    dev.send({"v": 1, "type": "bye"})
    assert dev.silent(300)
    assert dev.hello()["next_seq"] == 8
    _decide(dev, [8])
    assert dev.hello()["next_seq"] == 11
    assert len(learner.seen) == 11 and max(learner.seen.values()) == 1  # nothing learned twice
    dev.close()
