"""The daemon in a real subprocess, spoken to by an outside client written from docs/protocol.md alone.

The client below uses only pyzmq, msgpack and numpy (not ``edge_runtime.wire``), so these tests
check that the node implements the wire protocol as written, not as our codec happens to do it.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.request

import msgpack
import numpy as np
import pytest
import zmq

from tests.support.nodeproc import NodeProcess

VERDICTS = {"admitted", "trained", "skipped", "eval"}


class RawDevice:
    """A DEALER that speaks protocol v1 by hand."""

    def __init__(self, endpoint: str, device: str) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, device.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.device = device

    def send(self, header: dict, *frames: bytes) -> None:
        self.sock.send_multipart([msgpack.packb(header), *frames])

    def recv(self, timeout_ms: int = 20000) -> dict:
        if not self.sock.poll(timeout_ms):
            raise TimeoutError("no answer from the node")
        frames = self.sock.recv_multipart()
        return msgpack.unpackb(frames[0])

    def hello(self, audio_features: int = 13) -> dict:
        self.send({"v": 1, "type": "hello", "device": self.device, "schema": {
            "audio": {"dtype": "float32", "shape": [-1, audio_features]},
            "video": {"dtype": "float32", "shape": [-1, 1, 16, 16]}}})
        return self.recv()

    def sample(self, seq: int, label, rng: np.random.Generator, split: str = "train", audio=None) -> None:
        audio = rng.normal(size=(20, 13)).astype("<f4") if audio is None else audio
        video = rng.normal(size=(4, 1, 16, 16)).astype("<f4")
        self.send({"v": 1, "type": "sample", "seq": seq, "ts": 0.0, "label": label, "split": split,
                   "tensors": [{"name": "audio", "dtype": "float32", "shape": list(audio.shape)},
                               {"name": "video", "dtype": "float32", "shape": list(video.shape)}]},
                  audio.tobytes(), video.tobytes())

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def node(tmp_path):
    proc = NodeProcess(tmp_path, {"node": {"metrics_port": 0, "credit": 16}}).start()
    yield proc
    proc.kill()


def _collect_acks(dev: RawDevice, want: set[int]) -> dict[int, str]:
    got: dict[int, str] = {}
    while not want <= set(got):
        msg = dev.recv()
        assert msg["type"] == "ack", msg
        for seq, status in msg["acks"]:
            got.setdefault(seq, status)
    return got


@pytest.mark.slow
def test_outside_client_streams_and_every_sample_gets_one_verdict(node):
    rng = np.random.default_rng(0)
    dev = RawDevice(node.endpoint, "raw-1")
    try:
        welcome = dev.hello()
        assert welcome["type"] == "welcome" and welcome["v"] == 1
        assert welcome["next_seq"] == 0 and welcome["credit"] == 16 and welcome["num_classes"] == 10
        assert welcome["schema"]["audio"] == {"dtype": "float32", "shape": [-1, 13]}
        acks: dict[int, str] = {}
        for start in range(0, 64, 16):  # respect the credit window: 16 in flight, then wait
            for seq in range(start, start + 16):
                dev.sample(seq, int(seq % 10), rng, split="eval" if seq % 8 == 7 else "train")
            acks.update(_collect_acks(dev, set(range(start, start + 16))))
        assert sorted(acks) == list(range(64))
        assert set(acks.values()) <= VERDICTS
        assert all(acks[s] == "eval" for s in range(7, 64, 8))
        # a resend of a decided seq is answered with its first verdict, and not learned again
        dev.sample(5, 5, rng)
        again = dev.recv()
        assert again["acks"] == [[5, acks[5]]]
        # ping gets an empty ack carrying the credit
        dev.send({"v": 1, "type": "ping"})
        pong = dev.recv()
        assert pong["type"] == "ack" and pong["acks"] == [] and pong["credit"] == 16
        # bad input: a label out of range is decided invalid, a NaN too; neither stops the node
        dev.sample(64, 99, rng)
        bad_audio = np.full((20, 13), np.nan, dtype="<f4")
        dev.sample(65, 1, rng, audio=bad_audio)
        bad = _collect_acks(dev, {64, 65})
        assert bad == {64: "invalid:label_out_of_range", 65: "invalid:nan_inf"}
        dev.send({"v": 1, "type": "bye"})
    finally:
        dev.close()
    # metrics: decided counters match what the client saw
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.info['metrics_port']}/metrics", timeout=10).read().decode()
    decided = {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("edge_samples_decided_total{")}
    assert sum(decided.values()) == 66
    assert decided["invalid"] == 2
    assert node.stop() == 0
    summary = node.summary()
    assert summary["decided"] == 66
    with sqlite3.connect(node.state_dir / "state.db") as db:
        rows = db.execute("SELECT seq, verdict FROM verdicts WHERE device = 'raw-1' ORDER BY seq").fetchall()
        assert [r[0] for r in rows] == list(range(66))
        assert dict(rows) == {**acks, 64: "invalid:label_out_of_range", 65: "invalid:nan_inf"}
        (next_seq,) = db.execute("SELECT next_seq FROM devices WHERE device = 'raw-1'").fetchone()
        assert next_seq == 66
    assert list((node.state_dir / "checkpoints").glob("ckpt-*.pt")), "SIGTERM must leave a checkpoint"


@pytest.mark.slow
def test_protocol_errors_are_answered_not_fatal(tmp_path):
    # a long batch window: the first 16 samples wait in the queue, so the 17th is surely over credit
    node = NodeProcess(tmp_path, {"node": {"credit": 16, "batch_size": 64, "batch_window_ms": 1500.0}}).start()
    rng = np.random.default_rng(1)
    stranger = RawDevice(node.endpoint, "no-hello")
    dev = RawDevice(node.endpoint, "raw-2")
    try:
        stranger.sample(0, 1, rng)
        err = stranger.recv()
        assert err["type"] == "error" and err["code"] == "no_hello" and err["seq"] == 0
        stranger.sock.send_multipart([b"\xc1 not msgpack"])
        err = stranger.recv()
        assert err["type"] == "error" and err["code"] == "bad_msgpack" and err["seq"] is None
        stranger.send({"v": 2, "type": "hello"})
        assert stranger.recv()["code"] == "unknown_version"
        # a hello whose schema cannot feed the model is refused with a reason
        wrong = stranger.hello(audio_features=40)
        assert wrong["type"] == "error" and wrong["code"] == "bad_hello" and "audio" in wrong["msg"]
        # over the credit window: an error with the seq, not a verdict (the sample is not decided)
        assert dev.hello()["credit"] == 16
        for seq in range(17):
            dev.sample(seq, 1, rng)
        seen_no_credit, acked = False, set()
        while len(acked) < 16 or not seen_no_credit:
            msg = dev.recv()
            if msg["type"] == "error":
                assert msg["code"] == "no_credit" and msg["seq"] == 16
                seen_no_credit = True
            else:
                acked |= {s for s, _ in msg["acks"]}
        assert 16 not in acked
        dev.sample(16, 1, rng)  # resent once credit is back: now decided
        assert _collect_acks(dev, {16})[16] in VERDICTS
    finally:
        stranger.close()
        dev.close()
        if node.proc.poll() is None and node.stop() != 0:
            pytest.fail(node.log())
    assert json.loads((node.state_dir / "summary.json").read_text())["decided"] == 17
