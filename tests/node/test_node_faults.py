"""Faults 1-6 of the fleet-hardening issue, reproduced with real sockets against a real node process.

Each test shows the same three things: the bad input gets a named verdict (``invalid:<reason>``) or
``error``, a good device is still served afterwards, and nothing accepted earlier is lost.
"""

from __future__ import annotations

import sqlite3
import time
import urllib.request

import numpy as np
import pytest
import zmq

from edge_runtime.node.ledger import Ledger
from edge_runtime.learning.buffer.sqlite import SqliteStore
from edge_runtime.core.sample import Sample
from tests.support.nodeclient import SCHEMA_16, Device, stream
from tests.support.nodeproc import NodeProcess

VERDICTS = {"admitted", "trained", "skipped", "eval"}


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _verdicts(state_dir, device: str) -> dict[int, str]:
    with sqlite3.connect(state_dir / "state.db") as db:
        return dict(db.execute("SELECT seq, verdict FROM verdicts WHERE device = ?", (device,)).fetchall())


def _gauge(node: NodeProcess, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.info['metrics_port']}/metrics", timeout=10).read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


@pytest.mark.slow
def test_valid_but_unbatchable_input_never_stops_the_node(tmp_path, ctx):
    """Faults 1, 2, 5 and item 8: frame sizes, empty and oversized tensors, seq 2**63, ``"schema": {}``."""
    node = NodeProcess(tmp_path, {"node": {"credit": 16, "batch_size": 16}}).start()
    good = Device(ctx, node.endpoint, "good")
    try:
        welcome = good.hello()
        assert welcome["schema"]["video"]["shape"] == [-1, 1, 16, 16]  # the first device pins 16 x 16
        first = stream(good, range(32))
        assert set(first.values()) <= VERDICTS

        # item 8: an empty schema takes the node's, which now says 16 x 16; streaming with it works
        free = Device(ctx, node.endpoint, "free")
        w = free.hello(schema={})
        assert w["type"] == "welcome" and w["schema"] == SCHEMA_16
        assert set(stream(free, range(8)).values()) <= VERDICTS

        # fault 1: a device held to its welcome; other frame sizes, 0 x 0 frames, empty audio
        bad = Device(ctx, node.endpoint, "bad")
        assert bad.hello(schema={"audio": SCHEMA_16["audio"], "video": {"dtype": "float32", "shape": [-1, 1, -1, -1]}})[
            "schema"]["video"]["shape"] == [-1, 1, 16, 16]
        bad.sample(0, video=np.ones((2, 1, 8, 8), "<f4"))
        bad.sample(1, video=np.ones((2, 1, 0, 0), "<f4"))
        bad.sample(2, audio=np.ones((0, 13), "<f4"))
        bad.sample(3, video=np.ones((9, 1, 16, 16), "<f4"))  # over node.max_video_frames (features: 8)
        bad.sample(4, audio=np.ones((100_000, 13), "<f4"))  # fault 5: over node.max_audio_frames (300)
        got = bad.acks({0, 1, 2, 3, 4})
        assert got == {0: "invalid:schema_mismatch", 1: "invalid:schema_mismatch", 2: "invalid:empty",
                       3: "invalid:too_many_frames", 4: "invalid:too_many_frames"}
        # a hello declaring other frames, or frames over node.max_frame_size, is refused by name
        other = Device(ctx, node.endpoint, "other")
        err = other.hello(schema={"audio": SCHEMA_16["audio"], "video": {"dtype": "float32", "shape": [-1, 1, 8, 8]}})
        assert err["type"] == "error" and err["code"] == "bad_hello" and "[-1, 1, 16, 16]" in err["msg"]
        # fault 2: seq 2**63 and a negative seq are header errors; 2**63 - 1 is far past the seq window
        bad.sample(2**63)
        assert (e := bad.recv())["type"] == "error" and e["code"] == "bad_header" and "2**63-1" in e["msg"]
        bad.sample(-5)
        assert bad.recv()["code"] == "bad_header"
        bad.sample(2**63 - 1)
        assert (e := bad.recv())["code"] == "seq_gap" and e["seq"] == 2**63 - 1

        # the good device is still served, and nothing decided before was lost
        later = stream(good, range(32, 64))
        assert set(later.values()) <= VERDICTS
        assert node.proc.poll() is None
    finally:
        for d in (good,):
            d.close()
        code = node.stop() if node.proc.poll() is None else node.proc.returncode
    assert code == 0, node.log()
    assert _verdicts(node.state_dir, "good") == {**first, **later}
    assert _verdicts(node.state_dir, "bad") == got  # the seq errors were never recorded
    with sqlite3.connect(node.state_dir / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM items WHERE device = 'bad'").fetchone()[0] == 0


@pytest.mark.slow
def test_a_store_holding_unbatchable_samples_is_cleaned_at_start_not_fatal(tmp_path, ctx):
    """Fault 1 after a restart: mixed frame sizes and empty clips in the store are evicted (logged)."""
    node = NodeProcess(tmp_path, {"buffer": {"replay_batch_size": 8}})
    store = SqliteStore(node.state_dir / "state.db")
    ledger = Ledger(store)

    def mk(seq: int, hw: int, t_audio: int = 5) -> Sample:
        return Sample({"audio": np.full((t_audio, 13), 0.1, np.float32), "video": np.full((2, 1, hw, hw), 0.2, np.float32)},
                      label=seq % 3, device="old", seq=seq)

    samples = [mk(i, 16) for i in range(6)] + [mk(6, 8), mk(7, 8), mk(8, 16, t_audio=0)]
    for s in samples:
        store.put(s.key, s)
    ledger.record_verdicts([("old", s.seq, "admitted") for s in samples])
    ledger.set_next_seq("old", len(samples))
    store.close()
    node.start()
    good = Device(ctx, node.endpoint, "good")
    try:
        assert good.hello(schema={})["schema"]["video"]["shape"] == [-1, 1, 16, 16]  # pinned by the store
        assert set(stream(good, range(48)).values()) <= VERDICTS  # replay batches from the store stack
    finally:
        good.close()
        assert node.stop() == 0, node.log()
    log = node.log()
    assert log.count('"event": "store_unfit"') == 3
    with sqlite3.connect(node.state_dir / "state.db") as db:
        evicted = {s for (s,) in db.execute("SELECT seq FROM evictions WHERE device = 'old'")}
        assert evicted == {6, 7, 8}
        kept = {s for (s,) in db.execute("SELECT seq FROM items WHERE device = 'old'")}
        assert kept <= set(range(6))
    assert _verdicts(node.state_dir, "old") == {s.seq: "admitted" for s in samples}  # verdicts are history: kept


@pytest.mark.slow
def test_identity_hello_per_connection_no_hijack_no_utf8_collision(tmp_path, ctx):
    """Faults 3 and 4 without CURVE: a second connection on a live id gets nothing of the first's."""
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 8, "metrics_port": 0}}).start()
    victim = Device(ctx, node.endpoint, "uav")
    try:
        assert victim.hello()["type"] == "welcome"
        before = stream(victim, range(8), window=8)
        thief = Device(ctx, node.endpoint, "uav")  # the same routing id, another connection, no hello
        for seq in range(8, 12):
            thief.sample(seq, label=0)
        assert thief.silent(1500), "a second connection on a live routing id was answered"
        mine = stream(victim, range(8, 16), window=8)  # the victim's own seqs 8..11: its own verdicts
        assert set(mine) == set(range(8, 16)) and set(mine.values()) <= VERDICTS
        # fault 4: non-UTF-8 routing ids are refused, never folded into one device
        for rid in (b"dup\xff", b"dup\xfe"):
            d = Device(ctx, node.endpoint, rid)
            d.sample(0)
            assert d.recv()["code"] == "bad_routing_id"
            d.close()
        # once the victim is gone, the id is free; a new connection must say its own hello (the parked
        # one stays mute: libzmq never hands it the id, the client has to reconnect)
        victim.close()
        thief.close()
        answer = None
        for _ in range(10):
            comer = Device(ctx, node.endpoint, "uav")
            comer.sample(16, label=0)
            try:
                answer = comer.recv(1000)
                break
            except TimeoutError:
                comer.close()  # the victim's connection was not yet gone: parked; try again
        assert answer is not None and answer["type"] == "error" and answer["code"] == "no_hello"
        w = comer.hello()
        assert w["type"] == "welcome" and w["next_seq"] == 16
        comer.close()
    finally:
        assert node.stop() == 0, node.log()
    rows = _verdicts(node.state_dir, "uav")
    assert rows == {**before, **mine}
    with sqlite3.connect(node.state_dir / "state.db") as db:
        devices = {d for (d,) in db.execute("SELECT DISTINCT device FROM verdicts")}
    assert devices == {"uav"}


@pytest.mark.slow
def test_state_is_bounded_devices_freed_seq_window(tmp_path, ctx):
    """Fault 6: bye and idle free per-device state (the gauge goes down); a sparse seq set stays bounded."""
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "metrics_port": 0, "device_idle_s": 1.0, "max_seq_gap": 64}}).start()
    try:
        for k in range(40):  # hello / bye
            d = Device(ctx, node.endpoint, f"hb-{k}")
            assert d.hello()["type"] == "welcome"
            d.send({"v": 1, "type": "bye"})
            d.close()
        leavers = [Device(ctx, node.endpoint, f"gone-{k}") for k in range(20)]  # leave without bye
        for d in leavers:
            assert d.hello()["type"] == "welcome"
        assert _gauge(node, "edge_devices") >= 20
        for d in leavers:
            d.close()
        deadline = time.monotonic() + 30
        while _gauge(node, "edge_devices") > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gauge(node, "edge_devices") == 0
        # every other seq: accepted up to the window above next_seq (0), then refused by name
        sparse = Device(ctx, node.endpoint, "sparse")
        assert sparse.hello()["type"] == "welcome"
        got = {}
        for seq in range(0, 160, 2):
            sparse.sample(seq + 1)  # 1, 3, 5, ...: seq 0 never comes, next_seq stays 0
            got.update(sparse.acks({seq + 1}))
        assert all(v in VERDICTS for s, v in got.items() if s < 64)
        assert all(v == "error:seq_gap" for s, v in got.items() if s >= 64)
        good = Device(ctx, node.endpoint, "good")
        assert good.hello()["type"] == "welcome" and set(stream(good, range(16), window=8).values()) <= VERDICTS
        good.close()
        sparse.close()
    finally:
        assert node.stop() == 0, node.log()
    assert set(_verdicts(node.state_dir, "sparse")) == set(range(1, 64, 2))
