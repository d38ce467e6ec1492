"""Issue 25 item 3, without processes: packed transport (packing.py) and the SuperNode's shorter waits (supernode.py)."""

from __future__ import annotations

import time
import types

import numpy as np
import pytest

pytest.importorskip("flwr", reason="the federation extra: pip install -e '.[federation]'")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from edge_runtime.federation import supernode  # noqa: E402
from edge_runtime.federation.packing import (PackingGrid, is_packed, pack, pack_content, record_arrays, unpack,  # noqa: E402
                                             unpack_content)

ARRAYS = {"model.w": np.arange(12, dtype=np.float32).reshape(3, 4), "model.b": np.float32([1.5, -2.0]),
          "model.scalar": np.ones((), np.float32), "proto.counts": np.arange(10, dtype=np.int64)}


def _same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k])


def test_pack_is_one_array_per_dtype_and_unpacks_bit_for_bit():
    packed, layout = pack(ARRAYS)
    assert sorted(packed) == ["packed.float32", "packed.int64"]
    assert packed["packed.float32"].size == 12 + 2 + 1
    _same(unpack(packed, layout), ARRAYS)


def test_unpack_refuses_arrays_that_do_not_match_the_layout():
    packed, layout = pack(ARRAYS)
    with pytest.raises(ValueError, match="more values"):
        unpack({**packed, "packed.int64": np.arange(11, dtype=np.int64)}, layout)
    with pytest.raises(ValueError, match="does not hold"):
        unpack({**packed, "packed.float32": packed["packed.float32"][:-1]}, layout)
    with pytest.raises(ValueError, match="no 'packed.int64'"):
        unpack({"packed.float32": packed["packed.float32"]}, layout)


def _content() -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in ARRAYS.items()}),
                       "config": ConfigRecord({"server-round": 1}), "metrics": MetricRecord({"num-examples": 3})})


def test_pack_content_twice_is_packing_once_and_unpack_restores_the_named_records():
    content = _content()
    pack_content(content)
    pack_content(content)  # a stock strategy sends one RecordDict in every message of a phase
    assert is_packed(content) and list(content["arrays"]) == ["packed.float32", "packed.int64"]
    _same(record_arrays(content, "arrays"), ARRAYS)
    unpack_content(content)
    assert not is_packed(content) and set(content) == {"arrays", "config", "metrics"}
    _same({k: v.numpy() for k, v in content["arrays"].items()}, ARRAYS)
    _same(record_arrays(content, "arrays"), ARRAYS)  # an unpacked message is read as it is


class _FakeGrid:
    """Keeps what was pushed; pulls answer each pushed message with its own content (as a reply would carry it)."""

    def __init__(self) -> None:
        self.pushed: list[Message] = []

    def push_messages(self, messages):
        self.pushed = list(messages)
        return [str(i) for i in range(len(self.pushed))]

    def pull_messages(self, ids):
        return [Message(content=RecordDict({"arrays": m.content["arrays"], "arrays-layout": m.content["arrays-layout"]}),
                        dst_node_id=1, message_type="train") for m in self.pushed]


def test_packing_grid_pushes_packed_messages_and_hands_back_named_replies(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # a ServerApp's messages belong to its run
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    fake = _FakeGrid()
    grid = PackingGrid(fake)  # type: ignore[arg-type]
    content = _content()
    grid.push_messages([Message(content=content, dst_node_id=1, message_type="train"),
                        Message(content=content, dst_node_id=2, message_type="train")])
    assert all(list(m.content["arrays"]) == ["packed.float32", "packed.int64"] for m in fake.pushed)
    replies = list(grid.pull_messages(["0", "1"]))
    for reply in replies:
        assert not is_packed(reply.content)
        _same({k: v.numpy() for k, v in reply.content["arrays"].items()}, ARRAYS)


def test_shorter_sleeps_shortens_only_flowers_two_constants(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    fake_time = supernode.ShorterSleeps(idle_s=0.5, reply_s=0.1)
    for s in (3, 0.5, 0.2, 1):
        fake_time.sleep(s)
    assert slept == [0.5, 0.1, 0.2, 1]
    assert fake_time.monotonic is time.monotonic


def test_the_patch_applies_to_flower_1_42_and_refuses_other_code():
    import flwr.supernode.start_client_internal as loop

    original = loop.time
    try:
        assert supernode.patch(loop, 0.5) is True
        assert isinstance(loop.time, supernode.ShorterSleeps)
    finally:
        loop.time = original
    other = types.ModuleType("other")  # no source to check: left alone
    other.time = time  # type: ignore[attr-defined]
    assert supernode.patch(other, 0.5) is False and other.time is time  # type: ignore[attr-defined]
