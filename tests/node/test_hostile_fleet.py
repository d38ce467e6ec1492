"""Issue 24, the device port: G3, G5, G6, G10, G11 and the IO thread's guard, against real nodes.

Each fault is shown with raw pyzmq (or raw TCP) clients on 127.0.0.1 against an ``edge-node run``
subprocess, with counts and sizes just large enough to show it: the node's frame size comes from
its configuration (a hello cannot pin it), a frame larger than the node's schema can need is
dropped by libzmq before the message is assembled, connections are capped under the descriptor
limit, ids that never delivered a valid sample leave no rows, and hello lines are rate-limited.
"""

from __future__ import annotations

import functools
import json
import resource
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from edge_runtime.core.config import config_from_dict
from edge_runtime.node import sessions as sessions_module
from edge_runtime.node.daemon import EdgeNode, NetworkLoopError
from tests.support import nodeproc
from tests.support.nodeclient import SCHEMA_16, Device, stream
from tests.support.nodeproc import NodeProcess
from tests.support.wait import wait_until as _wait

VALID = {"admitted", "trained", "skipped", "eval"}


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)




def _events(node: NodeProcess, name: str) -> list[dict]:
    out = []
    for line in node.log().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


def _rows(state_dir: Path, devices: list[str]) -> dict[str, int]:
    """Rows of ``devices`` in each ledger table (committed)."""
    marks = ",".join("?" * len(devices))
    with sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True) as db:
        return {table: db.execute(f"SELECT COUNT(*) FROM {table} WHERE device IN ({marks})", devices).fetchone()[0]
                for table in ("verdicts", "devices", "device_keys")}


def _stop(node: NodeProcess) -> None:
    """SIGTERM: the node drains, checkpoints and exits 0 (else the end of its log says why)."""
    code = node.stop()
    assert code == 0, f"edge-node exited {code}:\n{node.log()[-4000:]}"


def _proc_status_bytes(pid: int, field: str) -> int:
    """A memory line of /proc/PID/status (``VmHWM``: peak resident set, ``VmRSS``: resident now) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field}")


def _peak_rss(pid: int) -> int:
    return _proc_status_bytes(pid, "VmHWM")


# --------------------------------------------------------------------------- G3
@pytest.mark.slow
def test_g3_a_degenerate_hello_cannot_pin_the_node_the_configuration_decides_shapes(tmp_path, ctx):
    """A hello declaring video [-1, 1, 0, 0] used to pin the node to 0 x 0 frames for everyone."""
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 8}}).start()  # features.image_size 16
    try:
        evil = Device(ctx, node.endpoint, "evil")
        degenerate = {"audio": SCHEMA_16["audio"], "video": {"dtype": "float32", "shape": [-1, 1, 0, 0]}}
        answer = evil.hello(degenerate)
        assert answer["type"] == "error" and answer["code"] == "bad_hello", answer
        assert "schema.video.shape[2] is 0" in answer["msg"], answer["msg"]
        other = {"audio": SCHEMA_16["audio"], "video": {"dtype": "float32", "shape": [-1, 1, 24, 24]}}
        answer = evil.hello(other)  # another size than the node's: refused naming the axis
        assert answer["type"] == "error" and answer["code"] == "bad_hello", answer
        assert "schema.video.shape[2] is 24 but this node takes 16" in answer["msg"], answer["msg"]
        welcome = evil.hello({})  # "the node's schema": told the node's frame size
        assert welcome["type"] == "welcome" and welcome["schema"]["video"]["shape"] == [-1, 1, 16, 16]
        evil.sample(0, video=np.ones((2, 1, 24, 24), "<f4"))  # a sample of another size cannot pin it either
        assert evil.acks({0}) == {0: "invalid:schema_mismatch"}
        evil.sample(1, video=np.ones((2, 1, 0, 0), "<f4"))
        assert evil.acks({1})[1].startswith(("invalid:", "error:"))

        good = Device(ctx, node.endpoint, "good")
        welcome = good.hello()  # declares 16 x 16
        assert welcome["type"] == "welcome" and welcome["schema"]["video"]["shape"] == [-1, 1, 16, 16], welcome
        got = stream(good, range(8))
        assert set(got.values()) <= VALID, got
    finally:
        _stop(node)


@pytest.mark.slow
def test_g3_simulated_devices_follow_the_welcome_frame_size(tmp_path):
    """device_sim's synthetic frames (16 x 16) are resized to a default node's 32 x 32, all learned."""
    from device_sim.client import ClientConfig, DeviceClient
    from device_sim.datasets.synthetic import SyntheticDataset
    from edge_runtime.wire import schema_of

    node = NodeProcess(tmp_path, {"features": {"image_size": 32}, "node": {"credit": 8, "batch_size": 8}}).start()
    try:
        data = SyntheticDataset(size=12, seed=3)
        samples = [data.sample(i) for i in range(12)]
        assert samples[0].tensors["video"].shape[2:] == (16, 16)
        client = DeviceClient(ClientConfig(endpoint=node.endpoint, device_id="sim-0", drain_timeout_s=60.0),
                              samples, schema_of(samples[0]))
        summary = client.run(deadline=time.monotonic() + 120)
        assert summary.acked == 12 and set(client.verdicts.values()) <= VALID, client.verdicts
        assert client.frame_size == (32, 32)
    finally:
        _stop(node)


# --------------------------------------------------------------------------- G5
@pytest.mark.slow
def test_g5_a_frame_larger_than_the_schema_needs_is_dropped_before_the_message_is_assembled(tmp_path, ctx):
    """16 frames of 4 MiB without a hello: before, all 64 MiB were assembled (peak RSS + 64 MiB) and then
    refused; now MAXMSGSIZE is the largest frame the node's schema can need, and libzmq drops the connection."""
    small_raw = {"max_waveform_seconds": 1.0, "max_raw_frames": 8, "max_raw_frame_size": 64}  # largest frame: 96 KiB
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 8, **small_raw}}).start()
    try:
        good = Device(ctx, node.endpoint, "good")
        assert good.hello()["type"] == "welcome"
        assert set(stream(good, range(8)).values()) <= VALID  # warmed up: the learner has run
        before = _peak_rss(node.proc.pid)

        attacker = ctx.socket(zmq.DEALER)
        attacker.setsockopt(zmq.ROUTING_ID, b"big")
        attacker.setsockopt(zmq.LINGER, 0)
        monitor = attacker.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        attacker.connect(node.endpoint)
        chunk = np.ones(4 * 2**20, np.uint8).tobytes()
        attacker.send_multipart([b"\x80"] + [chunk] * 16)  # msgpack {} then 16 x 4 MiB
        disconnected = monitor.poll(60_000) and recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        answered = attacker.poll(0)
        attacker.disable_monitor()
        monitor.close(0)
        attacker.close(0)
        assert disconnected and not answered, "the node took the whole 64 MiB message in"
        assert _peak_rss(node.proc.pid) - before < 32 * 2**20

        assert set(stream(good, range(8, 16)).values()) <= VALID
        assert node.proc.poll() is None
    finally:
        _stop(node)


def _rss(pid: int) -> int:
    return _proc_status_bytes(pid, "VmRSS")


@pytest.mark.slow
def test_g5_a_refused_large_message_is_freed_at_once(tmp_path, ctx):
    """Frames the schema may need (raw media, 8 MiB each) in a message of 8 such frames: libzmq must assemble
    it, the node refuses it, and its 64 MiB are handed back (before: held until the next message, and by
    the allocator after that)."""
    node = NodeProcess(tmp_path, {"node": {"max_message_bytes": 8 * 2**20}}).start()
    try:
        good = Device(ctx, node.endpoint, "good")
        assert good.hello()["type"] == "welcome"
        assert set(stream(good, range(8)).values()) <= VALID
        time.sleep(1.0)
        base = _rss(node.proc.pid)
        attacker = Device(ctx, node.endpoint, "big")
        chunk = np.ones(8 * 2**20 - 64, np.uint8).tobytes()
        attacker.sock.send_multipart([b"\x80"] + [chunk] * 8)
        answer = attacker.recv(60_000)
        assert answer["type"] == "error", answer  # refused after it was read
        _wait(lambda: _rss(node.proc.pid) - base < 24 * 2**20, 30, "the refused message's memory to be handed back")
        assert set(stream(good, range(8, 16)).values()) <= VALID
    finally:
        _stop(node)


# --------------------------------------------------------------------------- G6
def _limit_nofile(n: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
    return preexec


@pytest.mark.slow
def test_g6_idle_connections_past_the_cap_are_closed_and_the_node_keeps_its_descriptors(tmp_path, ctx, monkeypatch):
    """With 128 descriptors, 100 idle connections (handshake done, no hello) used to take every descriptor:
    no welcome for new devices, and the next checkpoint failed with EMFILE (exit 1). Now connections are
    capped 64 under the descriptor limit and the ones over the cap are closed."""
    monkeypatch.setattr(nodeproc.subprocess, "Popen", functools.partial(subprocess.Popen, preexec_fn=_limit_nofile(128)))
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 8, "checkpoint_every_s": 0.2}}).start()
    monkeypatch.undo()
    idle: list[zmq.Socket] = []
    monitors: list[zmq.Socket] = []
    try:
        good = Device(ctx, node.endpoint, "good")
        assert good.hello()["type"] == "welcome"
        for k in range(100):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.ROUTING_ID, f"idle-{k}".encode())
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.HANDSHAKE_IVL, 0)  # never gives up by itself: only the node can close it
            if k >= 70:
                monitors.append(s.get_monitor_socket(zmq.EVENT_DISCONNECTED))
            s.connect(node.endpoint)
            idle.append(s)
        closed: set[int] = set()

        def count_closed() -> bool:
            for i, m in enumerate(monitors):
                if i not in closed and m.poll(0):
                    closed.add(i)
            return len(closed) >= 15
        _wait(count_closed, 60, "connections over the cap to be closed by the node")
        checkpoints = len(_events(node, "checkpoint"))
        for k in range(4):  # learning, hence checkpoints, while the idle connections keep (re)connecting
            assert set(stream(good, range(8 * k, 8 * k + 8)).values()) <= VALID
            time.sleep(0.3)
        assert len(_events(node, "checkpoint")) > checkpoints
        assert node.proc.poll() is None, node.log()[-3000:]
    finally:
        for s, m in zip(idle[70:], monitors):
            s.disable_monitor()
            m.close(0)
        for s in idle:
            s.close(0)
    try:
        def welcomed() -> bool:  # the node may not have seen every idle connection close yet: then try again
            d = Device(ctx, node.endpoint, "late")
            try:
                return d.hello()["type"] == "welcome"
            except TimeoutError:
                return False
            finally:
                d.close()
        _wait(welcomed, 120, "a new device's welcome")
        assert "Too many open files" not in node.log()
        assert [e["soft"] for e in _events(node, "nofile")] == [128]  # the start-up line about the descriptor limit
    finally:
        _stop(node)


@pytest.mark.slow
def test_g6_a_connection_over_node_max_connections_is_told_why_and_closed(tmp_path, ctx):
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 8, "max_connections": 2}}).start()
    try:
        a, b = Device(ctx, node.endpoint, "a"), Device(ctx, node.endpoint, "b")
        assert a.hello()["type"] == "welcome" and b.hello()["type"] == "welcome"
        c = Device(ctx, node.endpoint, "c")
        monitor = c.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        answer = c.hello()
        assert answer["type"] == "error" and answer["code"] == "too_many_connections", answer
        assert "node.max_connections" in answer["msg"]
        assert monitor.poll(30_000), "the refused connection was not closed"
        c.sock.disable_monitor()
        monitor.close(0)
        c.close()
        a.close()  # a slot frees once the node sees a's disconnect

        def welcomed() -> bool:  # until the node has seen the connection close, a new one is over the cap
            d = Device(ctx, node.endpoint, "d")
            try:
                return d.hello()["type"] == "welcome"
            except TimeoutError:
                return False
            finally:
                d.close()
        _wait(welcomed, 120, "a welcome once a connection closed")
        assert set(stream(b, range(4)).values()) <= VALID
    finally:
        _stop(node)


# --------------------------------------------------------------------------- G10
def _hello(ctx: zmq.Context, endpoint: str, rid: str, keys: tuple, tries: int = 40) -> Device:
    """A device whose hello on a new connection was answered (``.last``); retried while the id's previous
    connection is still held by libzmq."""
    for _ in range(tries):
        d = Device(ctx, endpoint, rid, keys)
        d.send({"v": 1, "type": "hello", "device": rid, "schema": SCHEMA_16})
        try:
            d.last = d.recv(1000)
            return d
        except TimeoutError:
            d.close()
    raise AssertionError(f"no answer to a hello of {rid}")


@pytest.mark.slow
def test_g10_ids_that_never_delivered_a_valid_sample_leave_no_rows(tmp_path, ctx):
    """Fresh ids with one invalid sample each used to leave permanent rows in devices and verdicts."""
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 8, "device_idle_s": 1.0}}).start()
    junk = [f"junk-{k}" for k in range(60)]
    try:
        for k, rid in enumerate(junk):
            d = Device(ctx, node.endpoint, rid)
            assert d.hello()["type"] == "welcome"
            d.sample(0, label=10_000)  # label out of range: invalid
            assert d.acks({0})[0].startswith("invalid:")
            if k % 2 == 0:
                d.send({"v": 1, "type": "bye"})  # half say bye, half go silent (freed after node.device_idle_s)
            d.close()
        good = Device(ctx, node.endpoint, "good")
        assert good.hello()["type"] == "welcome"
        assert set(stream(good, range(4)).values()) <= VALID
        good.sample(4, label=10_000)
        assert good.acks({4})[4].startswith("invalid:")
        good.send({"v": 1, "type": "bye"})
        _wait(lambda: _rows(node.state_dir, junk) == {"verdicts": 0, "devices": 0, "device_keys": 0}, 60,
              "the rows of the junk ids to go")
        assert _rows(node.state_dir, ["good"]) == {"verdicts": 5, "devices": 1, "device_keys": 0}  # valid: kept
        again = Device(ctx, node.endpoint, "junk-0")
        assert again.hello()["next_seq"] == 0  # the id is free again, as never seen
    finally:
        _stop(node)


@pytest.mark.slow
def test_g10_one_curve_key_holds_at_most_max_ids_per_key(tmp_path, ctx):
    """With CURVE one allowed key used to bind 5,000 ids for good; now node.curve.max_ids_per_key, and an
    id that never delivered a valid sample is released when its state is freed."""
    keys, allowed = tmp_path / "keys", tmp_path / "keys" / "allowed"
    allowed.mkdir(parents=True)
    zmq.auth.create_certificates(keys, "server")
    zmq.auth.create_certificates(allowed, "evil")
    zmq.auth.create_certificates(allowed, "owner")
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 8, "device_idle_s": 60.0, "curve": {
        "enabled": True, "server_secret_key": str(keys / "server.key_secret"), "allowed_keys_dir": str(allowed),
        "max_ids_per_key": 3}}}).start()
    server_public, _ = zmq.auth.load_certificate(keys / "server.key")
    evil = (*zmq.auth.load_certificate(allowed / "evil.key_secret"), server_public)
    owner = (*zmq.auth.load_certificate(allowed / "owner.key_secret"), server_public)
    try:
        devices = []
        for k in range(3):
            d = Device(ctx, node.endpoint, f"id-{k}", evil)
            assert d.hello()["type"] == "welcome"
            devices.append(d)
        extra = Device(ctx, node.endpoint, "id-3", evil)
        answer = extra.hello()
        assert answer["type"] == "error" and answer["code"] == "too_many_ids", answer
        assert "node.curve.max_ids_per_key" in answer["msg"]
        extra.close()  # (libzmq holds a second connection with a routing id in use until the first is gone)
        mine = _hello(ctx, node.endpoint, "id-3", owner)  # its real owner is not locked out
        assert mine.last["type"] == "welcome", mine.last
        assert set(stream(mine, range(4)).values()) <= VALID
        mine.close()

        devices[0].sample(0, label=10_000)
        assert devices[0].acks({0})[0].startswith("invalid:")
        devices[0].send({"v": 1, "type": "bye"})  # never delivered a valid sample: released
        _wait(lambda: _rows(node.state_dir, ["id-0"]) == {"verdicts": 0, "devices": 0, "device_keys": 0}, 60,
              "id-0 to be released")
        extra2 = Device(ctx, node.endpoint, "id-4", evil)
        assert extra2.hello()["type"] == "welcome"  # the key's share freed
        taken = _hello(ctx, node.endpoint, "id-3", evil)
        assert taken.last["code"] == "id_bound", taken.last  # an id that delivered stays its owner's
    finally:
        _stop(node)


# --------------------------------------------------------------------------- G11
@pytest.mark.slow
def test_g11_hello_lines_are_rate_limited_and_the_rest_counted(tmp_path, ctx):
    """Each hello used to write an INFO line (50,000 hellos: 7 MiB of log)."""
    node = NodeProcess(tmp_path).start()  # node.hello_log_per_s: 20
    n = 1500
    try:
        d = Device(ctx, node.endpoint, "chatty")
        for _ in range(n):
            assert d.hello()["type"] == "welcome"

        def counted() -> tuple[int, int] | None:
            logged = len(_events(node, "hello"))
            suppressed = sum(e["count"] for e in _events(node, "hello_suppressed"))
            return (logged, suppressed) if logged + suppressed == n else None
        logged, suppressed = _wait(counted, 30, "every hello logged or counted")
        assert logged < n / 5 and suppressed > 0
        assert all("hellos not logged" in e["msg"] for e in _events(node, "hello_suppressed"))
    finally:
        _stop(node)


# --------------------------------------------------------------------------- the IO thread's guard
@pytest.mark.slow
def test_io_guard_one_failing_message_is_answered_and_a_failing_loop_stops_the_node(tmp_path, ctx, monkeypatch):
    """An exception while handling one message answers it (internal_error) and the node serves on; a
    failure of the loop itself stops the node cleanly (learner joined, checkpoint written) with the reason."""
    real_decode = sessions_module.wire.decode

    def decode(body, **kw):
        if bytes(body[0].bytes if hasattr(body[0], "bytes") else body[0]) == b"\x81\xa4boom\xc3":  # {"boom": true}
            raise KeyError("a bug the wire layer did not foresee")
        return real_decode(body, **kw)
    monkeypatch.setattr(sessions_module.wire, "decode", decode)
    cfg = config_from_dict({"node": {"bind": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state"), "log_format": "text",
                                     "batch_window_ms": 2.0, "frame_size": [16, 16]}, "num_threads": 1})
    node = EdgeNode(cfg)
    ready = threading.Event()
    result: list = []

    def run() -> None:
        try:
            result.append(node.run(ready=ready))
        except BaseException as err:  # what the test asserts
            result.append(err)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60)
    dev = Device(ctx, node.endpoint, "dev")
    assert dev.hello()["type"] == "welcome"
    dev.send({"boom": True})
    answer = dev.recv()
    assert answer["type"] == "error" and answer["code"] == "internal_error", answer
    assert set(stream(dev, range(4)).values()) <= VALID  # served on

    def broken_sweep(now: float) -> None:
        raise RuntimeError("the loop itself broke")
    monkeypatch.setattr(node._sessions, "sweep_idle", broken_sweep)
    thread.join(60)
    assert not thread.is_alive(), "a live node serving nobody"
    assert len(result) == 1 and isinstance(result[0], NetworkLoopError), result
    assert "the loop itself broke" in str(result[0])
    assert list((tmp_path / "state" / "checkpoints").glob("*")), "no final checkpoint"


@pytest.mark.slow
def test_g10_a_hello_right_after_bye_waits_for_the_release_and_resumes_where_the_ledger_does(tmp_path, ctx):
    """bye then hello in one burst, from a device that never delivered a valid sample: the release of its rows
    must not race the welcome (a welcome from rows about to be deleted left the ledger and the IO thread apart)."""
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 4, "frame_size": [16, 16]}}).start()
    try:
        dev = Device(ctx, node.endpoint, "flaky")
        assert dev.hello()["type"] == "welcome"
        for seq in range(3):
            dev.sample(seq, label=10**6)
        assert set(dev.acks({0, 1, 2}).values()) == {"invalid:label_out_of_range"}
        dev.send({"v": 1, "type": "bye"})
        dev.send({"v": 1, "type": "hello", "device": "flaky", "schema": SCHEMA_16})
        answers = [dev.recv()]
        while answers[-1]["type"] == "error":
            assert answers[-1]["code"] == "busy", answers
            dev.send({"v": 1, "type": "hello", "device": "flaky", "schema": SCHEMA_16})
            answers.append(dev.recv())
        assert answers[-1]["type"] == "welcome" and answers[-1]["next_seq"] == 0, answers  # its rows are gone
        assert stream(dev, range(4)) and all(v in VALID for v in stream(dev, range(4, 8)).values())
        dev.close()
        _stop(node)
        with sqlite3.connect(node.state_dir / "state.db") as db:
            assert db.execute("SELECT next_seq FROM devices WHERE device = 'flaky'").fetchone() == (8,)
    finally:
        node.kill()
