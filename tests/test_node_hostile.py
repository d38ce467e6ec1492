"""Hostile input and CURVE against a real node process.

* 2,000+ generated malformed messages of every rejection class: each is answered with an
  ``invalid:<reason>`` ack or an ``error`` message, none is learned from, the node never stops,
  and a well-formed device streaming at the same time is unaffected.
* CURVE on: an unknown key gets no sample in; the right key works.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading

import msgpack
import numpy as np
import zmq
import zmq.auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeproc import ROOT, NodeProcess

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
        "label_out_of_range", "message_too_large", "bad_split", "bad_seq"]))
    a, v = GOOD_AUDIO, GOOD_VIDEO
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


def _hello(sock, rid):
    sock.send_multipart([msgpack.packb({"v": 1, "type": "hello", "device": rid, "schema": {
        "audio": {"dtype": "float32", "shape": [-1, 13]}, "video": {"dtype": "float32", "shape": [-1, 1, 16, 16]}}})])


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
    answered = {"ack": 0, "error": 0, "none": 0}

    @settings(max_examples=2100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def send_one(data):
        seq = next(counter)
        frames, (kind, code) = data.draw(malformed(seq))
        sock.send_multipart(frames)
        if kind == "none":  # over MAXMSGSIZE: ZeroMQ drops the connection, the device reconnects
            answered["none"] += 1
            sock.send_multipart(frames[:1])  # the header alone is answered, so the link is alive again
            assert sock.poll(20000), f"no answer after an oversize message ({code})"
            msg = msgpack.unpackb(sock.recv_multipart()[0])
            assert msg["type"] in ("ack", "error")
            return
        assert sock.poll(20000), f"node did not answer a {code} message"
        msg = msgpack.unpackb(sock.recv_multipart()[0])
        if kind == "ack":
            assert msg["type"] == "ack" and msg["acks"] == [[seq, f"invalid:{code}"]], (code, msg)
        else:
            assert msg["type"] == "error" and msg["code"] == code, (code, msg)
        answered[kind] += 1

    try:
        send_one()
        _, err = good.communicate(timeout=240)
        assert good.returncode == 0, err.decode()
        assert node.proc.poll() is None, "the node stopped"
        assert node.stop() == 0
    finally:
        good.kill()
        sock.close(0)
        ctx.term()
        node.kill()
    assert sum(answered.values()) >= 2000 and answered["ack"] > 500 and answered["error"] > 300
    with sqlite3.connect(node.state_dir / "state.db") as db:
        fuzz = [v for (v,) in db.execute("SELECT verdict FROM verdicts WHERE device = 'fuzzer'")]
        assert fuzz and all(v.startswith("invalid:") for v in fuzz), "a malformed sample was learned from"
        assert db.execute("SELECT COUNT(*) FROM items WHERE device = 'fuzzer'").fetchone()[0] == 0
    good_totals = json.loads((tmp_path / "good.json").read_text())["totals"]
    assert good_totals["complete"] and good_totals["decided"] == 300
    assert not any(k.startswith("invalid") for k in good_totals["verdicts"])


def test_curve_unknown_key_gets_nothing_in_right_key_works(tmp_path):
    keys = tmp_path / "keys"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "keys", str(keys)], env=env, cwd=str(ROOT), capture_output=True, text=True)
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
