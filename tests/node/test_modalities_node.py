"""A node of named modalities (``accel`` + ``gyro``, two 3-axis IMU series), spoken to over real ZeroMQ as an
outside client would: hand-packed msgpack headers and raw tensor frames, no ``edge_runtime.wire``.

The hello is refused naming the tensors the node lacks and the ones missing; raw media is refused (it needs one
audio and one frames modality); a sample with a wrong channel count is ``invalid:schema_mismatch`` (the node's
log names the modality and the shape) while another device keeps being served and every accepted sample is in
the ledger; the stored state and checkpoint of these modalities restore, and another configuration's modalities
are refused at start naming them. Each modality's own head's streamed eval accuracy reaches every operator view
by its name.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import yaml
import zmq

from tests.support.nodeclient import Device
from tests.support.nodeproc import ROOT, NodeProcess

IMU = {"modalities": {"accel": {"kind": "series", "channels": 3}, "gyro": {"kind": "series", "channels": 3}},
       "node": {"credit": 16, "batch_size": 8}}
SERIES_3 = {"dtype": "float32", "shape": [-1, 3]}


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def send_sample(dev: Device, seq: int, tensors: dict[str, np.ndarray], label: int | None = 1, split: str = "train") -> None:
    """One sample message as protocol v1 writes it: a header naming each tensor, then one frame per tensor."""
    arrays = {name: np.ascontiguousarray(t, "<f4") for name, t in tensors.items()}
    dev.send({"v": 1, "type": "sample", "seq": seq, "ts": 0.0, "label": label, "split": split,
              "tensors": [{"name": n, "dtype": "float32", "shape": list(a.shape)} for n, a in arrays.items()]},
             *(a.tobytes() for a in arrays.values()))


def imu(seq: int, steps: int = 20, gyro_channels: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seq)
    return {"accel": rng.normal(size=(steps, 3)).astype("<f4"), "gyro": rng.normal(size=(steps, gyro_channels)).astype("<f4")}


def events(node: NodeProcess, name: str) -> list[dict]:
    out = []
    for line in node.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == name:
            out.append(entry)
    return out


def stop(node: NodeProcess) -> None:
    code = node.stop()
    assert code == 0, f"edge-node exited {code}:\n{node.log()[-4000:]}"


@pytest.mark.slow
def test_a_hello_is_refused_naming_the_modalities_the_node_lacks_and_the_missing_ones(tmp_path, ctx):
    node = NodeProcess(tmp_path, IMU).start()
    try:
        dev = Device(ctx, node.endpoint, "imu-0")
        answer = dev.hello({"accel": SERIES_3, "mag": SERIES_3})
        assert answer["type"] == "error" and answer["code"] == "bad_hello", answer
        assert "'mag' is not a modality of this node" in answer["msg"], answer["msg"]
        assert "missing: 'gyro'" in answer["msg"], answer["msg"]
        assert "['accel', 'gyro']" in answer["msg"], answer["msg"]

        raw = {"waveform": {"dtype": "float32", "shape": [-1]}, "frames": {"dtype": "uint8", "shape": [-1, -1, -1, 3]}}
        answer = dev.hello(raw)  # raw media needs one audio and one frames modality: this node has neither
        assert answer["type"] == "error" and answer["code"] == "bad_hello", answer
        assert "raw media" in answer["msg"] and "one audio and one frames modality" in answer["msg"], answer["msg"]
        assert "accel (series), gyro (series)" in answer["msg"], answer["msg"]

        wrong_rank = dev.hello({"accel": SERIES_3, "gyro": {"dtype": "float32", "shape": [-1, 3, 1]}})
        assert wrong_rank["type"] == "error" and "'gyro'" in wrong_rank["msg"], wrong_rank

        welcome = dev.hello({})  # "the node's schema": its modalities, by name; no frame size anywhere
        assert welcome["type"] == "welcome", welcome
        assert welcome["schema"] == {"accel": SERIES_3, "gyro": SERIES_3}
        declared = dev.hello({"accel": {"dtype": "float32", "shape": [20, 3]}, "gyro": SERIES_3})
        assert declared["type"] == "welcome" and declared["schema"] == welcome["schema"], declared
    finally:
        stop(node)


@pytest.mark.slow
def test_a_wrong_channel_count_is_schema_mismatch_naming_the_modality_and_no_accepted_sample_is_lost(tmp_path, ctx):
    node = NodeProcess(tmp_path, IMU).start()
    try:
        good, mixed = Device(ctx, node.endpoint, "imu-good"), Device(ctx, node.endpoint, "imu-mixed")
        assert good.hello({"accel": SERIES_3, "gyro": SERIES_3})["type"] == "welcome"
        assert mixed.hello({})["type"] == "welcome"
        verdicts: dict[str, dict[int, str]] = {"imu-good": {}, "imu-mixed": {}}
        for start in range(0, 40, 8):  # interleaved: the good device's windows between the mixed one's
            for seq in range(start, start + 8):
                send_sample(good, seq, imu(seq), label=seq % 4)
            if start < 24:
                for seq in range(start, start + 8):
                    bad = seq == 10
                    send_sample(mixed, seq, imu(1000 + seq, steps=17, gyro_channels=4 if bad else 3), label=seq % 4)
                verdicts["imu-mixed"].update(mixed.acks(set(range(start, start + 8))))
            verdicts["imu-good"].update(good.acks(set(range(start, start + 8))))
        assert verdicts["imu-mixed"][10] == "invalid:schema_mismatch", verdicts["imu-mixed"]
        others = {seq: v for seq, v in verdicts["imu-mixed"].items() if seq != 10}
        assert len(others) == 23 and not any(v.startswith(("invalid", "error")) for v in others.values()), others
        assert len(verdicts["imu-good"]) == 40, verdicts["imu-good"]
        assert not any(v.startswith(("invalid", "error")) for v in verdicts["imu-good"].values()), verdicts["imu-good"]
        assert {"trained", "admitted"} & set(verdicts["imu-good"].values())
        refused = events(node, "sample_refused")
        assert any("'gyro'" in e["msg"] and "[17, 4]" in e["msg"] and e["device"] == "imu-mixed" and e["seq"] == 10
                   for e in refused), refused
        good.close()
        mixed.close()
    finally:
        stop(node)
    # every accepted sample's verdict is durable, as acked; the refused one too
    with sqlite3.connect(node.state_dir / "state.db") as db:
        rows = {(d, s): v for d, s, v in db.execute("SELECT device, seq, verdict FROM verdicts")}
        stored = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    for device, got in verdicts.items():
        for seq, verdict in got.items():
            assert rows.get((device, seq)) == verdict, (device, seq, verdict, rows.get((device, seq)))
    admitted = sum(v == "admitted" for got in verdicts.values() for v in got.values())
    assert stored == admitted > 0, (stored, admitted)

    # the state of these modalities restores (stored samples + checkpoint of an accel/gyro model) ...
    node.start()
    try:
        dev = Device(ctx, node.endpoint, "imu-good")
        welcome = dev.hello({})
        assert welcome["type"] == "welcome" and welcome["next_seq"] == 40, welcome
        dev.close()
    finally:
        stop(node)
    assert events(node, "restored"), "the checkpoint of the accel/gyro model was not restored"

    # ... and a configuration of other modalities is refused at start, naming them; the folder is unchanged
    other = yaml.safe_load(node.config_path.read_text())
    other["modalities"] = {"accel": {"kind": "series", "channels": 3}, "mag": {"kind": "series", "channels": 3}}
    other_path = tmp_path / "other.yaml"
    other_path.write_text(yaml.safe_dump(other))
    refused = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "run", "--config", str(other_path)],
                             capture_output=True, text=True, timeout=300, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert refused.returncode == 2, refused.stderr[-3000:]
    line = next(ln for ln in refused.stderr.splitlines() if ln.startswith("edge-node:"))
    assert "['accel', 'mag']" in line and "gyro" in line and "mag" in line, line
    assert "Traceback" not in refused.stderr


@pytest.mark.slow
def test_each_modality_heads_streamed_eval_accuracy_by_name_in_metrics_status_history_and_summary(tmp_path, ctx):
    """A node of accel + gyro: the per-modality streamed eval accuracy reaches /metrics, status.json, `edge-node
    status --json`, history.csv and summary.json, keyed by these names, and survives a restart (checkpoint)."""
    from urllib.request import urlopen

    from edge_runtime.ops.history import read_history
    from edge_runtime.ops.snapshot import from_metrics, parse_metrics_text
    from tests.support.wait import wait_until

    overrides = {**IMU, "node": {**IMU["node"], "metrics_port": 0, "status_every_s": 0.2, "history_every_s": 0.3}}
    node = NodeProcess(tmp_path, overrides).start()
    url = f"http://127.0.0.1:{node.info['metrics_port']}/metrics"
    try:
        dev = Device(ctx, node.endpoint, "imu-0")
        assert dev.hello({})["type"] == "welcome"
        for start in range(0, 32, 8):  # 16 train samples, then 16 eval samples
            for seq in range(start, start + 8):
                send_sample(dev, seq, imu(seq), label=seq % 4, split="train" if seq < 16 else "eval")
            dev.acks(set(range(start, start + 8)))
        dev.close()

        def scraped() -> dict | None:
            heads = from_metrics(parse_metrics_text(urlopen(url, timeout=10).read().decode()))["accuracy"]["modality_streamed_eval"]
            return heads if heads and set(heads) == {"accel", "gyro"} else None

        live = wait_until(scraped, what="edge_modality_eval_accuracy{modality} for accel and gyro")
        assert all(0.0 <= v <= 1.0 for v in live.values())
    finally:
        stop(node)
    summary = json.loads((node.state_dir / "summary.json").read_text())
    heads = summary["modality_eval_accuracy"]
    assert list(heads) == ["accel", "gyro"] and all(v is not None for v in heads.values()), heads
    assert heads == live  # no sample after the scrape
    status = json.loads((node.state_dir / "status.json").read_text())
    assert status["accuracy"]["modality_streamed_eval"] == heads
    cli = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "status", "--state-dir", str(node.state_dir), "--json"],
                         capture_output=True, text=True, timeout=120, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["accuracy"]["modality_streamed_eval"] == heads
    last = read_history(node.state_dir)[-1]
    assert {n: last[f"modality_eval_accuracy_{n}"] for n in ("accel", "gyro")} == heads
    node.start()  # the checkpoint carries the per-modality counts: a restarted node's summary has them, no sample sent
    stop(node)
    assert json.loads((node.state_dir / "summary.json").read_text())["modality_eval_accuracy"] == heads
