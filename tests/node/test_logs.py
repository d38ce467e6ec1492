"""Log lines of ``edge-node run``: text on a terminal, JSON lines otherwise (``node.log_format: auto``)."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from edge_runtime.node.logs import JsonFormatter, TextFormatter, resolve_format
from tests.support.nodeproc import ROOT


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(**extra) -> logging.LogRecord:
    record = logging.LogRecord("edge_runtime.node", logging.INFO, __file__, 1, "listening", (), None)
    record.__dict__.update(extra)
    return record


def test_auto_is_text_on_a_terminal_and_json_elsewhere():
    assert resolve_format("auto", _Terminal()) == "text"
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("json", _Terminal()) == "json" and resolve_format("text", io.StringIO()) == "text"


def test_text_and_json_lines_carry_the_same_fields():
    record = _record(event="listening", endpoint="tcp://127.0.0.1:5555", pid=42)
    text = TextFormatter().format(record)
    assert text.split(" ", 2)[1:] == ["INFO", "listening  endpoint='tcp://127.0.0.1:5555' pid=42"]
    forged = TextFormatter().format(_record(device="uav-1\n12:00:00 INFO stopped"))
    assert len(forged.splitlines()) == 1  # a device id cannot start a log line of its own
    data = json.loads(JsonFormatter().format(record))
    assert data["msg"] == "listening" and data["endpoint"] == "tcp://127.0.0.1:5555" and data["pid"] == 42
    assert data["event"] == "listening"


def _read_until(fd: int, word: bytes, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while word not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    return out


@pytest.mark.slow
def test_run_on_a_terminal_logs_text_and_through_a_pipe_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "edge_runtime.cli.main", "run", "--set", "node.bind=tcp://127.0.0.1:*",
            "--set", f"node.state_dir={tmp_path / 'tty'}", "--set", "num_threads=1"]
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=env, cwd=str(ROOT))
    os.close(secondary)
    try:
        seen = _read_until(primary, b"listening", timeout=120)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
    line = next(raw for raw in seen.decode(errors="replace").splitlines() if "listening" in raw)
    assert not line.lstrip().startswith("{") and " INFO listening" in line and "endpoint='tcp://127.0.0.1:" in line

    piped = subprocess.Popen([*argv[:-3], f"node.state_dir={tmp_path / 'pipe'}", "--set", "num_threads=1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
    try:
        first = json.loads(piped.stderr.readline())  # every line is a JSON object
        while first.get("event") != "listening":
            first = json.loads(piped.stderr.readline())
        piped.send_signal(signal.SIGTERM)
        assert piped.wait(60) == 0
    finally:
        if piped.poll() is None:
            piped.kill()
        piped.stderr.close()
    assert first["endpoint"].startswith("tcp://127.0.0.1:")
