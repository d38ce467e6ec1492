"""Hostile input and CURVE against a real node process.

* 2,000+ generated messages: malformed ones of every rejection class (each answered with an
  ``invalid:<reason>`` ack or an ``error`` message, none learned from), mixed with valid samples of
  every length, frames of other sizes, empty and over-long tensors, extreme seqs and labels, and
  routing-id collisions; the node never stops, and a well-formed device streaming at the same time
  is unaffected.
* CURVE on: an unknown key gets no sample in; the right key works.
"""

from __future__ import annotations

import pytest

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import zmq
import zmq.auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.nodeproc import ROOT, NodeProcess

GOOD_AUDIO = np.zeros((5, 13), "<f4")
GOOD_VIDEO = np.zeros((2, 1, 16, 16), "<f4")


def _entry(name, arr):
    return {"name": name, "dtype": "float32", "shape": list(arr.shape)}


def _header(seq, **over):
    h = {"v": 1, "type": "sample", "seq": seq, "ts": 0.0, "label": 1, "split": "train",
         "tensors": [_entry("audio", GOOD_AUDIO), _entry("video", GOOD_VIDEO)]}
    h.update(over)
    return h


def _frames(h, *tensors):
    return [msgpack.packb(h), *[t.tobytes() for t in tensors]]


@st.composite
def malformed(draw, seq):
    """One malformed message and the answer it must get: ("ack", reason) or ("error", code)."""
    kind = draw(st.sampled_from([
        "bad_msgpack", "not_a_map", "unknown_version", "unknown_type", "header_too_large", "too_many_tensors",
        "too_many_dims", "dtype_not_allowed", "frame_size", "frame_count", "schema_mismatch", "nan_inf",
        "label_out_of_range", "message_too_large", "bad_split", "bad_seq",
        "valid", "valid", "other_frames", "empty", "too_many_frames", "huge_seq", "far_seq", "extreme_label"]))
    a, v = GOOD_AUDIO, GOOD_VIDEO
    if kind == "valid":  # any length within the limits, any label: learned like any good sample
        arr = np.full((draw(st.integers(1, 300)), 13), 0.5, "<f4")
        vid = np.full((draw(st.integers(1, 8)), 1, 16, 16), 0.25, "<f4")
        h = _header(seq, label=draw(st.integers(0, 9) | st.none()), split=draw(st.sampled_from(["train", "eval"])),
                    tensors=[_entry("audio", arr), _entry("video", vid)])
        return _frames(h, arr, vid), ("valid", None)
    if kind == "other_frames":  # valid frames of another size than the node batches (16 x 16)
        hw = draw(st.tuples(st.integers(1, 24), st.integers(1, 24)).filter(lambda t: t != (16, 16)))
        vid = np.zeros((2, 1, *hw), "<f4")
        return _frames(_header(seq, tensors=[_entry("audio", a), _entry("video", vid)]), a, vid), ("ack", "schema_mismatch")
    if kind == "empty":
        arr = np.zeros((0, 13), "<f4")
        return _frames(_header(seq, tensors=[_entry("audio", arr), _entry("video", v)]), arr, v), ("ack", "empty")
    if kind == "too_many_frames":
        arr = np.zeros((draw(st.integers(301, 3000)), 13), "<f4")
        return _frames(_header(seq, tensors=[_entry("audio", arr), _entry("video", v)]), arr, v), ("ack", "too_many_frames")
    if kind == "huge_seq":
        return _frames(_header(draw(st.integers(2**63, 2**64 - 1) | st.integers(-2**63, -1))), a, v), ("error", "bad_header")
    if kind == "far_seq":
        return _frames(_header(draw(st.integers(10**9, 2**63 - 1))), a, v), ("error", "seq_gap")
    if kind == "extreme_label":
        label = draw(st.integers(10, 2**64 - 1) | st.integers(-2**63, -1))
        return _frames(_header(seq, label=label), a, v), ("ack", "label_out_of_range")
    if kind == "bad_msgpack":
        junk = b"\xc1" + draw(st.binary(max_size=40))  # 0xc1 is never used in msgpack
        return [junk], ("error", "bad_msgpack")
    if kind == "not_a_map":
        return [msgpack.packb(draw(st.lists(st.integers(-2**31, 2**31), max_size=3)))], ("error", "bad_header")
    if kind == "unknown_version":
        return [msgpack.packb({"v": draw(st.integers(2, 10**6)), "type": "sample", "seq": seq})], ("error", "unknown_version")
    if kind == "unknown_type":
        return [msgpack.packb({"v": 1, "type": draw(st.text(min_size=1, max_size=8).filter(lambda t: t not in ("hello", "sample", "ping", "bye")))})], ("error", "unknown_type")
    if kind == "header_too_large":
        return [msgpack.packb({"v": 1, "type": "sample", "pad": "x" * draw(st.integers(9000, 20000))})], ("error", "header_too_large")
    if kind == "bad_seq":
        return _frames(_header(draw(st.sampled_from([-1, "7", None, 1.5]))), a, v), ("error", "bad_header")
    if kind == "too_many_tensors":
        n = draw(st.integers(9, 12))
        return _frames(_header(seq, tensors=[_entry(f"t{i}", a) for i in range(n)]), *([a] * n)), ("ack", "too_many_tensors")
    if kind == "too_many_dims":
        arr = np.zeros((1,) * draw(st.integers(7, 9)), "<f4")
        return _frames(_header(seq, tensors=[_entry("audio", arr), _entry("video", v)]), arr, v), ("ack", "too_many_dims")
    if kind == "dtype_not_allowed":
        dt = draw(st.sampled_from(["complex64", "object", "float128", "bool", "U4"]))
        h = _header(seq, tensors=[{"name": "audio", "dtype": dt, "shape": [5, 13]}, _entry("video", v)])
        return _frames(h, a, v), ("ack", "dtype_not_allowed")
    if kind == "frame_size":
        cut = draw(st.integers(1, a.nbytes - 1))
        return [msgpack.packb(_header(seq)), a.tobytes()[:cut], v.tobytes()], ("ack", "frame_size")
    if kind == "frame_count":
        return [msgpack.packb(_header(seq)), a.tobytes()], ("ack", "frame_count")
    if kind == "schema_mismatch":
        bad = np.zeros((5, draw(st.integers(14, 40))), "<f4")
        return _frames(_header(seq, tensors=[_entry("audio", bad), _entry("video", v)]), bad, v), ("ack", "schema_mismatch")
    if kind == "nan_inf":
        arr = a.copy()
        arr[draw(st.integers(0, 4)), draw(st.integers(0, 12))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return _frames(_header(seq), arr, v), ("ack", "nan_inf")
    if kind == "label_out_of_range":
        return _frames(_header(seq, label=draw(st.integers(10, 10**6) | st.integers(-10**6, -1))), a, v), ("ack", "label_out_of_range")
    if kind == "message_too_large":
        big = np.zeros((70_000, 13), "<f4")  # 3.6 MB over the node's 1 MiB limit: refused by MAXMSGSIZE or the decoder
        return _frames(_header(seq, tensors=[_entry("audio", big), _entry("video", v)]), big, v), ("none", "message_too_large")
    return _frames(_header(seq, split=draw(st.text(max_size=6).filter(lambda s: s not in ("train", "eval")))), a, v), ("ack", "bad_split")


def _dealer(ctx, endpoint, rid, keys=None):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.ROUTING_ID, rid.encode())
    s.setsockopt(zmq.LINGER, 0)
    if keys:
        s.curve_publickey, s.curve_secretkey, s.curve_serverkey = keys
    s.connect(endpoint)
    return s


def _dealer_bytes(ctx, endpoint, rid: bytes):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.ROUTING_ID, rid)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def _hello(sock, rid):
    sock.send_multipart([msgpack.packb({"v": 1, "type": "hello", "device": rid, "schema": {
        "audio": {"dtype": "float32", "shape": [-1, 13]}, "video": {"dtype": "float32", "shape": [-1, 1, 16, 16]}}})])


@pytest.mark.slow
def test_two_thousand_malformed_messages_answered_none_learned(tmp_path):
    node = NodeProcess(tmp_path, {"node": {"batch_window_ms": 1.0, "max_message_bytes": 2**20, "credit": 64}}).start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    good = subprocess.Popen([sys.executable, "-m", "device_sim.cli", "run", "--endpoint", node.endpoint, "--devices", "1",
                             "--samples", "300", "--rate", "40", "--no-progress", "--summary", str(tmp_path / "good.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
    ctx = zmq.Context()
    sock = _dealer(ctx, node.endpoint, "fuzzer")
    _hello(sock, "fuzzer")
    assert sock.poll(20000) and msgpack.unpackb(sock.recv_multipart()[0])["type"] == "welcome"
    counter = iter(range(10**9))
    answered = {"ack": 0, "error": 0, "none": 0, "valid": 0, "bad_rid": 0}
    valid: set[int] = set()
    strangers = [_dealer_bytes(ctx, node.endpoint, rid) for rid in (b"fuzzer\xff", b"fuzzer\xfe", b"\xc3\x28")]

    @settings(max_examples=2100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def send_one(data):
        seq = next(counter)
        frames, (kind, code) = data.draw(malformed(seq))
        sock.send_multipart(frames)
        if kind == "none":  # over MAXMSGSIZE: ZeroMQ drops the connection, the device reconnects
            answered["none"] += 1
            for _ in range(20):  # a new connection: it must say hello again (the old one may still answer first)
                _hello(sock, "fuzzer")
                assert sock.poll(20000), f"no answer after an oversize message ({code})"
                msg = msgpack.unpackb(sock.recv_multipart()[0])
                if msg["type"] == "welcome":
                    return
            raise AssertionError("no welcome after an oversize message")
        assert sock.poll(20000), f"node did not answer a {code} message"
        msg = msgpack.unpackb(sock.recv_multipart()[0])
        if kind == "valid":
            assert msg["type"] == "ack" and len(msg["acks"]) == 1 and msg["acks"][0][0] == seq, msg
            assert msg["acks"][0][1] in ("admitted", "trained", "skipped", "eval"), msg
            valid.add(seq)
        elif kind == "ack":
            assert msg["type"] == "ack" and msg["acks"] == [[seq, f"invalid:{code}"]], (code, msg)
        else:
            assert msg["type"] == "error" and msg["code"] == code, (code, msg)
        answered[kind] += 1

    try:
        send_one()
        for i in range(60):  # id collisions: non-UTF-8 routing ids, refused by name, never folded into one device
            stranger = strangers[i % len(strangers)]
            stranger.send_multipart(_frames(_header(i), GOOD_AUDIO, GOOD_VIDEO))
            assert stranger.poll(20000) and msgpack.unpackb(stranger.recv_multipart()[0])["code"] == "bad_routing_id"
            answered["bad_rid"] += 1
        twin = _dealer(ctx, node.endpoint, "fuzzer")  # the same id on a second connection: parked, never answered
        _hello(twin, "fuzzer")
        assert not twin.poll(1000), "a second connection on a live id was answered"
        twin.close(0)
        _, err = good.communicate(timeout=240)
        assert good.returncode == 0, err.decode()
        assert node.proc.poll() is None, "the node stopped"
        assert node.stop() == 0
    finally:
        good.kill()
        sock.close(0)
        for stranger in strangers:
            stranger.close(0)
        ctx.term()
        node.kill()
    assert sum(answered.values()) >= 2000 and answered["ack"] > 500 and answered["error"] > 300
    assert answered["valid"] > 100 and answered["bad_rid"] > 10
    with sqlite3.connect(node.state_dir / "state.db") as db:
        fuzz = dict(db.execute("SELECT seq, verdict FROM verdicts WHERE device = 'fuzzer'").fetchall())
        assert all(v.startswith("invalid:") for s, v in fuzz.items() if s not in valid), "a malformed sample was learned from"
        assert all(not fuzz[s].startswith("invalid:") for s in valid)
        stored = {s for (s,) in db.execute("SELECT seq FROM items WHERE device = 'fuzzer'")}
        assert stored <= valid
        assert not {d for (d,) in db.execute("SELECT DISTINCT device FROM verdicts")} - {"fuzzer", "uav-0"}
    good_totals = json.loads((tmp_path / "good.json").read_text())["totals"]
    assert good_totals["complete"] and good_totals["decided"] == 300
    assert not any(k.startswith("invalid") for k in good_totals["verdicts"])


@pytest.mark.slow
def test_curve_unknown_key_gets_nothing_in_right_key_works(tmp_path):
    keys = tmp_path / "keys"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "keys", str(keys)], env=env, cwd=str(ROOT), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    node = NodeProcess(tmp_path, {"node": {"curve": {"enabled": True, "server_secret_key": str(keys / "server.key_secret"),
                                                      "allowed_keys_dir": str(keys / "allowed")}}}).start()
    ctx = zmq.Context()
    try:
        server_public, _ = zmq.auth.load_certificate(keys / "server.key")
        stranger_public, stranger_secret = zmq.curve_keypair()
        intruder = _dealer(ctx, node.endpoint, "intruder", (stranger_public, stranger_secret, server_public))
        _hello(intruder, "intruder")
        plain = _dealer(ctx, node.endpoint, "plaintext")
        _hello(plain, "plaintext")
        assert not intruder.poll(2000), "a device with an unknown key got an answer"
        assert not plain.poll(500), "a device without CURVE got an answer"
        intruder.close(0)
        plain.close(0)
        sim = subprocess.run([sys.executable, "-m", "device_sim.cli", "run", "--endpoint", node.endpoint, "--devices", "1",
                              "--samples", "64", "--curve-dir", str(keys), "--no-progress"],
                             env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=120)
        assert sim.returncode == 0, sim.stderr
        assert json.loads(sim.stdout)["totals"]["decided"] == 64
        assert node.stop() == 0
    finally:
        ctx.term()
        node.kill()
    with sqlite3.connect(node.state_dir / "state.db") as db:
        devices = {d for (d,) in db.execute("SELECT DISTINCT device FROM verdicts")}
    assert devices == {"uav-0"}


@pytest.mark.slow
def test_curve_device_id_belongs_to_its_first_key_and_revoked_keys_cannot_connect(tmp_path):
    """Fault 3 with CURVE: another allowed key cannot claim a device id; a removed key opens nothing."""
    from tests.support.nodeclient import Device, stream

    keys, allowed = tmp_path / "keys", tmp_path / "keys" / "allowed"
    allowed.mkdir(parents=True)
    zmq.auth.create_certificates(keys, "server")
    for name in ("a", "b"):
        zmq.auth.create_certificates(allowed, name)
    node = NodeProcess(tmp_path, {"node": {"credit": 8, "batch_size": 8, "curve": {
        "enabled": True, "server_secret_key": str(keys / "server.key_secret"), "allowed_keys_dir": str(allowed),
        "reload_s": 0.3}}}).start()
    server_public, _ = zmq.auth.load_certificate(keys / "server.key")
    pub_a, sec_a = zmq.auth.load_certificate(allowed / "a.key_secret")
    pub_b, sec_b = zmq.auth.load_certificate(allowed / "b.key_secret")
    key_a, key_b = (pub_a, sec_a, server_public), (pub_b, sec_b, server_public)
    ctx = zmq.Context()

    def claim(rid: str, keys: tuple) -> tuple[Device, dict]:
        """A new connection's hello, retried while libzmq still parks it behind a closing one."""
        for _ in range(10):
            d = Device(ctx, node.endpoint, rid, keys)
            d.send({"v": 1, "type": "hello", "device": rid, "schema": {}})
            try:
                return d, d.recv(1000)
            except TimeoutError:
                d.close()
        raise AssertionError(f"no answer to a hello of {rid}")

    try:
        a, w = claim("uav-a", key_a)
        assert w["type"] == "welcome"
        first = stream(a, range(8), window=8)
        b, w = claim("uav-b", key_b)
        assert w["type"] == "welcome"
        a.close()
        thief, err = claim("uav-a", key_b)  # an allowed key, but not the one that registered uav-a
        assert err["type"] == "error" and err["code"] == "id_bound"
        thief.sample(8)
        assert thief.recv()["code"] == "no_hello"
        thief.close()
        (allowed / "b.key").unlink()  # revoke b
        time.sleep(1.0)  # > node.curve.reload_s
        b.send({"v": 1, "type": "ping"})
        assert b.recv()["code"] == "key_revoked"  # its open connection is refused message by message
        late = Device(ctx, node.endpoint, "uav-b2", key_b)
        late.send({"v": 1, "type": "hello", "device": "uav-b2", "schema": {}})
        assert late.silent(1500), "a revoked key opened a connection"
        late.close()
        b.close()
        a2, w = claim("uav-a", key_a)  # the rightful key resumes where it stopped
        assert w["type"] == "welcome" and w["next_seq"] == 8
        a2.close()
        assert node.stop() == 0, node.log()
    finally:
        ctx.destroy(linger=0)
        node.kill()
    with sqlite3.connect(node.state_dir / "state.db") as db:
        bindings = dict(db.execute("SELECT device, key FROM device_keys").fetchall())
        rows = dict(db.execute("SELECT seq, verdict FROM verdicts WHERE device = 'uav-a'").fetchall())
    assert bindings == {"uav-a": pub_a.decode(), "uav-b": pub_b.decode()}
    assert rows == first
