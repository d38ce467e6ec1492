"""The node's parts on their own: the seq tracker, the queue between the threads, schema negotiation.

The daemon tests drive these through real sockets; here each rule is pinned where it lives.
"""

from __future__ import annotations

import threading

from edge_runtime.core.config import config_from_dict
from edge_runtime.core.sample import TensorSpec
from edge_runtime.node.handoff import Handoff, Item
from edge_runtime.node.schema import RAW_SCHEMA, SchemaNegotiator, node_frame_size, schema_problem
from edge_runtime.node.sessions import SeqTracker


def _item(seq: int, nbytes: int = 10, arrived: float = 0.0) -> Item:
    return Item(b"dev", "dev", seq, None, "invalid:empty", arrived, nbytes)


def test_seq_tracker_keeps_a_contiguous_prefix_and_the_seqs_above_it():
    t = SeqTracker(2, above=[5, 3])
    assert (t.next_seq, t.above) == (2, {3, 5})
    assert 0 in t and 1 in t and 3 in t and 2 not in t and 4 not in t
    t.add(2)  # closes the gap to 3; 4 is still missing
    assert (t.next_seq, t.above) == (4, {5})
    t.add(4)
    assert (t.next_seq, t.above) == (6, set())
    t.add(1)  # below the prefix: already decided, nothing changes
    assert (t.next_seq, t.above) == (6, set())


def test_handoff_refuses_past_queue_max_samples_and_queue_max_bytes():
    by_count = Handoff(batch_size=8, batch_window_s=1.0, queue_max=2, queue_max_bytes=10**6)
    assert by_count.offer(_item(0)) and by_count.offer(_item(1))
    assert not by_count.offer(_item(2))
    assert [it.seq for it in by_count.queue] == [0, 1] and by_count.queued_bytes == 20

    by_bytes = Handoff(batch_size=8, batch_window_s=1.0, queue_max=100, queue_max_bytes=100)
    assert by_bytes.offer(_item(0, nbytes=500))  # an empty queue takes any one sample, else it could never move
    assert not by_bytes.offer(_item(1, nbytes=1))
    assert by_bytes.queued_bytes == 500


def test_handoff_batches_by_size_then_drains_and_stops():
    h = Handoff(batch_size=2, batch_window_s=60.0, queue_max=10, queue_max_bytes=10**6)
    for seq in range(3):
        assert h.offer(_item(seq, arrived=float("inf")))  # never old enough for the window
    batch = h.take_batch()
    assert [it.seq for it in batch] == [0, 1] and h.queued_bytes == 10
    h.drain()  # the last, smaller batch goes at once, then take_batch says stop
    assert [it.seq for it in h.take_batch()] == [2]
    assert h.take_batch() is None and h.queued_bytes == 0


def test_handoff_returns_an_empty_batch_for_idle_work_and_key_bindings():
    h = Handoff(batch_size=2, batch_window_s=0.01, queue_max=10, queue_max_bytes=10**6)
    assert h.take_batch(idle_work=lambda: True) == []
    h.to_bind.append(("dev", "key"))
    assert h.take_batch() == []
    h.to_bind.clear()
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(h.take_batch()))
    waiter.start()
    h.drain()
    waiter.join(10)
    assert got == [None]


def test_schema_negotiation_takes_the_frame_size_from_the_configuration_never_from_a_hello():
    config = config_from_dict({})
    node = SchemaNegotiator(config, node_frame_size(config, None))
    assert node.frame_size == (32, 32)  # features.image_size
    channels = node.features_contract().schema["video"].shape[1]
    audio = node.features_contract().schema["audio"]
    declared = {"audio": audio, "video": TensorSpec("float32", (-1, channels, 24, 32))}
    contract, raw, problem = node.welcome(declared)
    assert contract is None and "schema.video.shape[2] is 24 but this node takes 32" in problem
    assert node.frame_size == (32, 32)
    contract, raw, problem = node.welcome({"audio": audio, "video": TensorSpec("float32", (-1, channels, -1, -1))})
    assert problem is None and tuple(contract.schema["video"].shape[2:]) == (32, 32)
    contract, raw, problem = node.welcome({"audio": audio, "video": TensorSpec("float32", (-1, 1, 0, 0))})
    assert contract is None and "schema.video.shape[2] is 0" in problem
    assert node_frame_size(config_from_dict({"node": {"frame_size": [24, 32]}}), (16, 16)) == (24, 32)
    assert node_frame_size(config, (16, 16)) == (16, 16)  # the stored buffer's


def test_schema_problem_names_the_tensor_and_raw_media_is_its_own_schema():
    expected = {"audio": TensorSpec("float32", (-1, 40))}
    assert schema_problem({"audio": TensorSpec("float32", (-1, 40))}, expected) is None
    assert schema_problem({"audio": TensorSpec("float32", (7, 40))}, expected) is None  # a fixed size where -1 is free
    assert "'audio'" in schema_problem({"audio": TensorSpec("float64", (-1, 40))}, expected)
    assert "declares tensors" in schema_problem(RAW_SCHEMA, expected)
