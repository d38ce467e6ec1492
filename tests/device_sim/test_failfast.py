"""device-sim fails fast and says why (no node, refused CURVE key), says what resuming did, --fresh,
and stops cleanly on a first Ctrl-C. Real ``edge-node run`` processes and ``device-sim`` subprocesses on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zmq.auth

from tests.support.nodeproc import ROOT, NodeProcess
from tests.support.wait import wait_until

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Sim:
    """``device-sim run`` in a child process; stderr lines are collected with the time each arrived."""

    def __init__(self, endpoint: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "device_sim.cli", "run", "--endpoint", endpoint, "--no-progress", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=str(ROOT), text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first(self, text: str) -> float | None:
        return next((t for t, line in self.lines if text in line), None)

    def finish(self, timeout: float = 60) -> tuple[int, dict, str]:
        self.proc.wait(timeout)  # the JSON summary fits the pipe's buffer
        out = self.proc.stdout.read()  # type: ignore[union-attr]  # not communicate(): the reader thread owns stderr
        self._reader.join(5)
        return self.proc.returncode, json.loads(out) if out.strip() else {}, "\n".join(line for _, line in self.lines)


def test_no_node_exits_1_within_the_hello_timeout_naming_the_endpoint():
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    sim = _Sim(endpoint, "--devices", "2", "--samples", "20", "--hello-timeout", "3")
    rc, _, err = sim.finish(timeout=120)
    ended = time.monotonic()
    started = sim.first("connecting")
    assert started is not None, err
    assert rc == 1, err
    assert ended - started <= 3 + 2, f"took {ended - started:.1f} s after connecting"
    failures = [line for line in err.splitlines() if "no edge node answered" in line]
    assert len(failures) == 1 and endpoint in failures[0], err


@pytest.mark.slow
def test_refused_curve_key_says_so(tmp_path):
    keys = tmp_path / "keys"
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "keys", str(keys)], env=ENV, cwd=str(ROOT),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    zmq.auth.create_certificates(keys, "stranger")  # a key pair the node's allowed folder does not hold
    node = NodeProcess(tmp_path, {"node": {"curve": {"enabled": True, "server_secret_key": str(keys / "server.key_secret"),
                                                      "allowed_keys_dir": str(keys / "allowed")}}}).start()
    try:
        sim = _Sim(node.endpoint, "--devices", "1", "--samples", "10", "--curve-dir", str(keys), "--curve-name", "stranger")
        rc, _, err = sim.finish(timeout=120)
    finally:
        node.kill()
    assert rc == 1, err
    assert f"the node at {node.endpoint} refused this device's CURVE key" in err
    assert "allowed_keys_dir" in err


@pytest.mark.slow
def test_rerun_says_the_node_holds_everything_and_fresh_streams_again(tmp_path):
    node = NodeProcess(tmp_path).start()
    try:
        args = ("--devices", "2", "--samples", "40")
        rc, first, err = _Sim(node.endpoint, *args).finish()
        assert rc == 0 and first["totals"]["sent"] == 40, err
        rc, again, err = _Sim(node.endpoint, *args).finish()
        assert rc == 0, err
        assert again["totals"]["sent"] == 0 and again["totals"]["skipped_resume"] == 40
        assert "2 devices: the node already holds every sample of this run" in err and "--fresh" in err
        rc, fresh, err = _Sim(node.endpoint, *args, "--fresh").finish()
        assert rc == 0, err
        assert fresh["totals"]["sent"] == 40 and fresh["totals"]["acked"] == 40 and fresh["totals"]["skipped_resume"] == 0
        ids = [d["device"] for d in fresh["devices"]]
        assert all(i.startswith(f"uav-{k}.") for k, i in enumerate(ids)) and len(set(ids)) == 2
    finally:
        node.kill()


@pytest.mark.slow
def test_first_ctrl_c_stops_sending_drains_and_prints_the_summary(tmp_path):
    node = NodeProcess(tmp_path).start()
    try:
        sim = _Sim(node.endpoint, "--devices", "2", "--samples", "4000", "--rate", "20")
        wait_until(lambda: (node.state_dir / "status.json").exists()
                   and json.loads((node.state_dir / "status.json").read_text())["samples"]["decided"] > 0,
                   timeout=60, what="the node's first verdicts")
        sim.proc.send_signal(signal.SIGINT)
        rc, summary, err = sim.finish(timeout=60)
    finally:
        node.kill()
    assert rc == 130, err
    assert "Traceback" not in err and "interrupted" in err
    t = summary["totals"]
    assert summary["interrupted"] and 0 < t["sent"] < 4000
    error_verdicts = sum(n for v, n in t["verdicts"].items() if v.startswith("error:"))
    assert t["sent"] == t["acked"] + t["unanswered"] + error_verdicts, "nothing accepted is lost from the count"
