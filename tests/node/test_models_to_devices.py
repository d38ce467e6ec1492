"""Models to end devices: a node publishes ONNX versions, devices (--infer) predict with them; a corrupt one is refused."""

from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

from edge_runtime.core.config import Config
from edge_runtime.export.onnx import onnx_bytes
from edge_runtime.learning.model import build_model
from edge_runtime.node.publish import model_message
from tests.support.nodeproc import ROOT, NodeProcess


def _sim(endpoint: str, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "device_sim.cli", "run", "--endpoint", endpoint, "--no-progress", "--summary", str(out), *args]
    return subprocess.run(cmd, capture_output=True, env=env, cwd=str(ROOT), timeout=240)


@pytest.mark.slow
def test_devices_get_several_versions_and_report_accuracy_per_version(tmp_path):
    node = NodeProcess(tmp_path, {"node": {"model_bind": "tcp://127.0.0.1:*", "model_every": 3, "model_resend_s": 0.5,
                                           "batch_size": 16}}).start()
    try:
        model_endpoint = node.info["model_endpoint"]
        assert model_endpoint.startswith("tcp://127.0.0.1:")
        out = tmp_path / "fleet.json"
        r = _sim(node.endpoint, out, "--devices", "2", "--samples", "640", "--rate", "120", "--infer", model_endpoint)
        assert r.returncode == 0, r.stderr.decode()
        assert node.stop() == 0
    finally:
        node.kill()
    fleet = json.loads(out.read_text())
    for dev in fleet["devices"]:
        inf = dev["inference"]
        versions = {int(v): s for v, s in inf["per_version"].items()}
        assert len(versions) >= 2, inf["events"]
        assert sum(s["samples"] for s in versions.values()) > 0
        for s in versions.values():
            if s["samples"]:
                assert 0.0 <= s["accuracy"] <= 1.0 and s["latency_ms_mean"] > 0
        assert all("refused" not in e for e in inf["events"])
        assert inf["model_version"] == max(versions)


@pytest.mark.slow
def test_corrupt_model_is_refused_and_the_previous_one_kept(tmp_path):
    good = onnx_bytes(build_model(Config().model))
    corrupt = good[: len(good) // 2]  # truncated in transit; its own sha256 matches, so only the ONNX check can catch it
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def publish() -> None:
        while not stop.is_set():
            pub.send_multipart(model_message(1, 10, good, 17))
            time.sleep(0.05)
            if time.monotonic() - started > 2.0:
                pub.send_multipart(model_message(2, 20, corrupt, 17))
            time.sleep(0.05)

    node = NodeProcess(tmp_path).start()
    started = time.monotonic()
    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        out = tmp_path / "fleet.json"
        r = _sim(node.endpoint, out, "--devices", "1", "--samples", "300", "--rate", "60", "--infer", f"tcp://127.0.0.1:{port}")
        assert r.returncode == 0, r.stderr.decode()
        assert node.stop() == 0
    finally:
        stop.set()
        thread.join(5)
        pub.close(0)
        ctx.term()
        node.kill()
    inf = json.loads(out.read_text())["devices"][0]["inference"]
    assert inf["model_version"] == 1
    assert any(e.startswith("model v1 loaded") for e in inf["events"])
    refused = [e for e in inf["events"] if e.startswith("model v2 refused")]
    assert len(refused) == 1 and "keeping v1" in refused[0] and "corrupt ONNX model" in refused[0]
    assert inf["per_version"]["1"]["samples"] > 0 and "2" not in inf["per_version"]
