"""The control channel under attack (issue 24, G8 and G9): real ZeroMQ sockets, real ``edge-node run`` where needed.

G8: a put that is refused changes nothing (every field checked first), FedProx mu and weights are
bounded, the control endpoint is local unless CURVE guards it. G9: a frame over
``federation.control_max_bytes`` is dropped by libzmq before it is read, too many frames or bytes in
all are refused, ``control.jsonl`` is rotated at its cap with header strings cut, and a record that
cannot be written (a full disk) neither kills the control thread nor stops its answers.
"""

from __future__ import annotations

import errno
import json
import stat
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from tests.support.nodeproc import NodeProcess
from tests.support.wait import wait_until

from edge_runtime.core.config import ConfigError, config_from_dict
from edge_runtime.federation import control
from edge_runtime.federation.arrays import COUNTS
from edge_runtime.federation.control import ControlClient, ControlError, ControlServer, read_records

NODE = {  # small and quick, as tests/federation/test_federation.py
    "model": {"embed_dim": 32, "audio_channels": 32, "tiny_channels": 8},
    "node": {"batch_size": 16, "checkpoint_every_s": 2.0},
    "buffer": {"max_items": 120},
    "training": {"replay_steps": 1},
    "federation": {"enabled": True},
}


def _status_server(tmp: Path, **kwargs) -> ControlServer:
    handlers = {"status": lambda h, a: ({"type": "status", "round": 0, "samples_since_round": 0, "samples_total": 0}, None)}
    server = ControlServer(f"ipc://{tmp / 'control.ipc'}", handlers, records=tmp / "control.jsonl", **kwargs)
    server.start()
    return server


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# ---------------------------------------------------------------------- G8: configuration
@pytest.mark.parametrize("mu", [float("inf"), 1e6, 10.5])
def test_g8_config_refuses_a_proximal_mu_out_of_range_naming_the_key(mu):
    with pytest.raises(ConfigError, match="federation.proximal_mu"):
        config_from_dict({"federation": {"proximal_mu": mu}})
    assert config_from_dict({"federation": {"proximal_mu": 10.0}}).federation.proximal_mu == 10.0


@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:5599", "tcp://*:5599", "tcp://10.1.2.3:5599", "tcp://eth0:5599", "udp://127.0.0.1:1"])
def test_g8_control_bind_must_be_local_naming_the_key(bind):
    with pytest.raises(ConfigError, match="federation.control_bind"):
        config_from_dict({"federation": {"control_bind": bind}})


def test_g8_local_control_binds_are_accepted_and_remote_ones_need_the_explicit_setting():
    for bind in ["ipc:///run/edge/control.ipc", "tcp://127.0.0.1:*", "tcp://[::1]:5599", "tcp://localhost:5599"]:
        assert config_from_dict({"federation": {"control_bind": bind}}).federation.control_bind == bind
    fc = config_from_dict({"federation": {"control_bind": "tcp://0.0.0.0:5599", "control_allow_remote": True}}).federation
    assert fc.control_allow_remote and fc.control_bind == "tcp://0.0.0.0:5599"


# ---------------------------------------------------------------------- G9: in-process server, real sockets
def test_g9_control_thread_survives_a_full_disk(tmp_path, monkeypatch):
    """Every record write fails with ENOSPC: all 60 requests are still answered; records resume once space is back."""
    server = _status_server(tmp_path)
    client = ControlClient(server.endpoint, timeout_s=30)
    try:
        assert client.status()["round"] == 0
        real_open = open
        records = str(tmp_path / "control.jsonl")

        def full_disk(path, *args, **kwargs):
            if str(path) == records:
                raise OSError(errno.ENOSPC, "No space left on device", records)
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(control, "open", full_disk, raising=False)
        before = len(read_records(tmp_path / "control.jsonl"))
        for _ in range(60):
            assert client.status()["type"] == "status"
        assert len(read_records(tmp_path / "control.jsonl")) == before  # nothing could be written
        monkeypatch.undo()  # space freed

        def resumed() -> bool:
            client.status()
            return len(read_records(tmp_path / "control.jsonl")) > before

        _wait(resumed, "records were not written again after space was freed")
        assert server.alive
    finally:
        server.stop()


@pytest.mark.slow
def test_g9_control_thread_survives_a_failing_request(tmp_path, monkeypatch):
    """A failure outside the handlers' error handling (here: memory) is logged; the thread keeps answering."""
    calls = {"n": 0}
    real = ControlServer._answer

    def failing(self, body):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise MemoryError("simulated")
        return real(self, body)

    monkeypatch.setattr(ControlServer, "_answer", failing)
    server = _status_server(tmp_path)
    try:
        for _ in range(3):
            with pytest.raises(ControlError) as err:
                ControlClient(server.endpoint, timeout_s=2).status()  # its request failed: no answer
            assert err.value.code == "timeout"
        assert calls["n"] == 3
        assert ControlClient(server.endpoint, timeout_s=60).status()["type"] == "status"
        assert server.alive and server.failures == 3
    finally:
        server.stop()


def test_g9_control_log_is_rotated_at_its_cap_and_header_strings_are_cut(tmp_path):
    cap = 64 * 1024
    server = _status_server(tmp_path, log_max_bytes=cap)
    client = ControlClient(server.endpoint, timeout_s=30)
    try:
        for _ in range(3):
            client.request({"type": "status", "note": "x" * 500_000})
        for _ in range(1500):  # about 240 bytes of records each
            client.status()
    finally:
        server.stop()
    files = sorted(p.name for p in tmp_path.glob("control.jsonl*"))
    assert files == ["control.jsonl", "control.jsonl.1"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= cap, name
    lines = [line for name in files for line in (tmp_path / name).read_text().splitlines()]
    assert max(len(line) for line in lines) < 2048
    assert all(r["type"] == "status" for r in map(json.loads, lines))


def test_g9_header_strings_are_cut_in_records(tmp_path):
    server = _status_server(tmp_path)
    client = ControlClient(server.endpoint, timeout_s=30)
    try:
        client.request({"type": "status", "note": "y" * 300_000})
        with pytest.raises(ControlError) as err:
            client.request({"type": "z" * 300_000})
        assert err.value.code == "bad_request" and len(err.value.message) < 1000
    finally:
        server.stop()
    size = (tmp_path / "control.jsonl").stat().st_size
    assert size < 4096, f"4 records of 300 KB headers took {size} bytes"
    note = [r for r in read_records(tmp_path / "control.jsonl") if "note" in r][0]["note"]
    assert note.startswith("y" * control.RECORD_STR_MAX) and len(note) < control.RECORD_STR_MAX + 40


def test_g9_a_frame_over_control_max_bytes_drops_the_connection_unread(tmp_path):
    server = _status_server(tmp_path, max_bytes=2**20, max_frames=4)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(server.endpoint)
        sock.send_multipart([b"\x00" * (2**20 + 1)])
        assert monitor.poll(60_000), "the node kept a connection that sent a frame over control_max_bytes"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        assert not sock.poll(100)  # no reply: the frame was never read
        client = ControlClient(server.endpoint, timeout_s=30)
        assert client.status()["type"] == "status"  # the channel serves on
        # every frame under the limit, too many in all: refused once it has arrived
        frames = {f"model.w{i}": np.zeros(400_000, np.uint8) for i in range(3)}
        with pytest.raises(ControlError) as err:
            client.request({"type": "status"}, frames)
        assert err.value.code == "too_large" and "federation.control_max_bytes" in err.value.message
        with pytest.raises(ControlError) as err:
            client.request({"type": "status"}, {f"a{i}": np.zeros(1, np.uint8) for i in range(5)})
        assert err.value.code == "too_large"
    finally:
        monitor.close(0)
        sock.close(0)
        ctx.term()
        server.stop()


@pytest.mark.slow
def test_g9_a_real_node_drops_a_frame_over_the_default_control_max_bytes(tmp_path):
    """65 MiB in one frame (the default limit is 64 MiB): the connection is dropped unread, the channel serves on."""
    node = NodeProcess(tmp_path, NODE, name="g9frame").start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(node.info["control_endpoint"])
        sock.send_multipart([b"", b"\x00" * (65 * 2**20)])
        assert monitor.poll(120_000), "the node read a frame over federation.control_max_bytes"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        assert ControlClient(node.info["control_endpoint"], timeout_s=60).status()["round"] == 0
    finally:
        monitor.close(0)
        sock.close(0)
        ctx.term()
        assert node.stop() == 0


# ---------------------------------------------------------------------- G8: a real node
def _bad_puts(arrays: dict[str, np.ndarray]) -> list[tuple[str, dict, dict, str]]:
    """(what, header fields, arrays, expected code): each must be refused and change nothing."""
    glob = {k: (v + 0.25).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    glob[COUNTS] = np.ones_like(arrays[COUNTS])
    w = next(k for k in arrays if k.startswith("model.") and arrays[k].ndim == 2)
    out = []
    for rnd in [True, 2**64 - 1, 2**63, -1, 1.5, "3", None]:
        out.append((f"round {rnd!r}", {"round": rnd, "proximal_mu": 0.0}, glob, "bad_request"))
    for mu in ["abc", float("inf"), float("nan"), -0.1, 10.5, True, None, [1]]:
        out.append((f"proximal_mu {mu!r}", {"round": 3, "proximal_mu": mu}, glob, "bad_request"))
    out.append(("weights of 1e38", {"round": 3, "proximal_mu": 0.0}, {**glob, w: np.full_like(glob[w], 1e38)}, "out_of_range"))
    one = glob[w].copy()
    one.flat[0] = -2e4  # beyond the default federation.max_abs_weight (1e4)
    out.append(("a weight of -2e4", {"round": 3, "proximal_mu": 0.0}, {**glob, w: one}, "out_of_range"))
    out.append(("a NaN weight", {"round": 3, "proximal_mu": 0.0}, {**glob, w: np.full_like(glob[w], np.nan)}, "mismatch"))
    out.append(("prototypes of inf", {"round": 3, "proximal_mu": 0.0}, {**glob, "proto.audio": np.full_like(glob["proto.audio"], np.inf)}, "mismatch"))
    out.append(("negative counts", {"round": 3, "proximal_mu": 0.0}, {**glob, COUNTS: -glob[COUNTS]}, "out_of_range"))
    out.append(("an extra array", {"round": 3, "proximal_mu": 0.0}, {**glob, "model.extra": np.zeros(2, np.float32)}, "mismatch"))
    out.append(("a missing array", {"round": 3, "proximal_mu": 0.0}, {k: v for k, v in glob.items() if k != w}, "mismatch"))
    return out


@pytest.mark.slow
def test_g8_a_refused_put_changes_nothing(tmp_path):
    node = NodeProcess(tmp_path, NODE, name="g8").start()
    try:
        ipc = node.info["control_endpoint"][len("ipc://"):]
        assert stat.S_IMODE(Path(ipc).stat().st_mode) == 0o600, "the control socket is open to other users"
        client = ControlClient(node.info["control_endpoint"], timeout_s=60)
        _, before = client.get()
        for what, fields, arrays, code in _bad_puts(before):
            with pytest.raises(ControlError) as err:
                client.request({"type": "put", **fields}, arrays)
            assert err.value.code == code, (what, err.value.code, err.value.message)
            assert "nothing changed" in err.value.message, what
            header, after = client.get()
            assert header["round"] == 0, what
            assert set(after) == set(before)
            for name in before:  # bitwise: weights, prototypes and counts
                assert after[name].tobytes() == before[name].tobytes(), (what, name)
        # the channel still applies a valid put
        glob = {k: (v + 0.25).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in before.items()}
        assert client.put(5, glob, proximal_mu=10.0)["round"] == 5
        header, after = client.get()
        assert header["round"] == 5 and all(np.array_equal(after[k], glob[k]) for k in glob if k.startswith("model."))
    finally:
        assert node.stop() == 0


@pytest.mark.slow
def test_g8_put_with_infinite_mu_is_refused_and_learning_stays_finite(tmp_path):
    from tests.support.nodeclient import Device, stream

    node = NodeProcess(tmp_path, {**NODE, "selection": {"train_on": "all"}}, name="g8mu").start()
    ctx = zmq.Context()
    try:
        client = ControlClient(node.info["control_endpoint"], timeout_s=60)
        _, arrays = client.get()
        with pytest.raises(ControlError) as err:
            client.put(1, arrays, proximal_mu=float("inf"))
        assert err.value.code == "bad_request" and "proximal_mu" in err.value.message
        assert client.put(1, arrays, proximal_mu=10.0)["round"] == 1  # the largest pull there is
        dev = Device(ctx, node.endpoint, "g8mu")
        assert dev.hello()["type"] == "welcome"
        rng = np.random.default_rng(0)
        verdicts = stream(dev, range(64), audio=rng.standard_normal((5, 13)).astype("<f4"),
                          video=rng.random((2, 1, 16, 16)).astype("<f4"))
        assert not [v for v in verdicts.values() if v.startswith(("invalid", "error"))], verdicts
        _wait(lambda: client.status()["samples_since_round"] >= 48, "the node learned nothing", timeout=180)
        _, after = client.get()
        bad = [k for k, v in after.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        assert not bad, f"non-finite after learning with the largest proximal_mu: {bad[:3]}"
        changed = [k for k in arrays if k.startswith("model.") and not np.array_equal(arrays[k], after[k])]
        assert changed, "nothing was learned after the put"
        dev.close()
    finally:
        ctx.term()
        assert node.stop() == 0


@pytest.mark.slow
def test_g8_remote_control_channel_needs_curve(tmp_path):
    remote = {**NODE, "federation": {"enabled": True, "control_bind": "tcp://0.0.0.0:*", "control_allow_remote": True}}
    node = NodeProcess(tmp_path, remote, name="nocurve")
    with pytest.raises(RuntimeError, match="exited with 2") as err:
        node.start()
    assert "federation.control_allow_remote" in str(err.value) and "node.curve.enabled" in str(err.value)
    assert "Traceback" not in node.log()

    keys = tmp_path / "keys"
    allowed = keys / "allowed"
    allowed.mkdir(parents=True)
    zmq.auth.create_certificates(keys, "server")
    good_pub, good_sec = zmq.auth.create_certificates(keys, "flower")
    (allowed / "flower.key").write_text(Path(good_pub).read_text())
    _, other_sec = zmq.auth.create_certificates(keys, "stranger")
    curve = {"enabled": True, "server_secret_key": str(keys / "server.key_secret"), "allowed_keys_dir": str(allowed)}
    node = NodeProcess(tmp_path, {**remote, "node": {**NODE["node"], "curve": curve}}, name="curve").start()
    try:
        port = node.info["control_endpoint"].rsplit(":", 1)[1]
        endpoint = f"tcp://127.0.0.1:{port}"
        with pytest.raises(ControlError) as err:
            ControlClient(endpoint, timeout_s=3).status()  # no CURVE: no answer
        assert err.value.code == "timeout"
        with pytest.raises(ControlError) as err:
            ControlClient(endpoint, timeout_s=3, curve=control.client_curve_keys(other_sec, keys / "server.key")).status()
        assert err.value.code == "timeout"  # a key not in allowed_keys_dir
        allowed_client = ControlClient(endpoint, timeout_s=60, curve=control.client_curve_keys(good_sec, keys / "server.key"))
        assert allowed_client.status()["round"] == 0
    finally:
        assert node.stop() == 0


def test_check_put_refuses_bools_and_numbers_out_of_range():
    """The check itself, without a node: ``True`` is an int to Python, never a round here."""
    from edge_runtime.federation.node_link import check_put

    spec = {"model.w": ("float32", (2,)), COUNTS: ("int64", (3,))}
    arrays = {"model.w": np.zeros(2, np.float32), COUNTS: np.zeros(3, np.int64)}
    for header in [{"round": True}, {"round": 2**63}, {"round": 1, "proximal_mu": float("inf")}, {"round": 1, "proximal_mu": "0.1"}]:
        with pytest.raises(ControlError) as err:
            check_put(header, arrays, spec, 1e4)
        assert err.value.code == "bad_request"
    assert check_put({"round": 2**63 - 1, "proximal_mu": 10}, arrays, spec, 1e4) == (2**63 - 1, 10.0)
    packed = msgpack.unpackb(msgpack.packb({"round": 2**64 - 1}))
    with pytest.raises(ControlError):
        check_put(packed, arrays, spec, 1e4)


def test_g8_a_put_that_timed_out_is_never_applied_later_and_waiting_puts_are_capped(tmp_path, monkeypatch):
    """A put answered busy (the learner did not get to it in time) must not change the model when the learner
    gets there afterwards, and no more than MAX_QUEUED_REQUESTS model copies wait for the learner."""
    import threading

    from edge_runtime.federation import node_link
    from edge_runtime.learning.learner import Learner

    monkeypatch.setattr(node_link, "SERVICE_WAIT_S", 0.3)
    config = config_from_dict({"federation": {"enabled": True}, "num_threads": 1})
    learner = Learner(config)
    link = node_link.FederationLink(learner, tmp_path, config.federation, lambda: None, lambda: None, config.training.lr)
    before = node_link.learner_arrays(learner, np.zeros(config.model.num_classes, dtype=np.int64))
    moved = {k: (v + 0.5 if k.startswith(node_link.MODEL_PREFIX) else v) for k, v in before.items()}
    with pytest.raises(ControlError) as busy:  # nobody services the queue: the put times out
        link._put({"type": "put", "round": 1, "proximal_mu": 0.0}, moved)
    assert busy.value.code == "busy" and "nothing was changed" in busy.value.message
    link.service()  # the learner reaches the end of its micro-batch only now
    after = node_link.learner_arrays(learner, np.zeros(config.model.num_classes, dtype=np.int64))
    assert all(np.array_equal(after[k], before[k]) for k in before) and link.round == 0

    monkeypatch.setattr(node_link, "SERVICE_WAIT_S", 30.0)
    answers: list = []
    waiting = [threading.Thread(target=lambda: answers.append(link._put({"type": "put", "round": 2, "proximal_mu": 0.0}, moved)))
               for _ in range(node_link.MAX_QUEUED_REQUESTS)]
    for t in waiting:
        t.start()
    wait_until(lambda: len(link._requests) == node_link.MAX_QUEUED_REQUESTS, 30, "the puts to queue")
    with pytest.raises(ControlError) as full:
        link._put({"type": "put", "round": 3, "proximal_mu": 0.0}, moved)
    assert full.value.code == "busy" and len(link._requests) == node_link.MAX_QUEUED_REQUESTS
    link.service()  # the queued ones are applied and answered
    for t in waiting:
        t.join(30)
    assert link.round == 2 and not link._requests and len(answers) == node_link.MAX_QUEUED_REQUESTS
