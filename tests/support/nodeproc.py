"""Start and stop a real ``edge-node run`` subprocess for the tests (loopback, state under tmp_path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


class NodeProcess:
    """``edge-node run`` in a child process; ``endpoint`` is read from state_dir/node.json."""

    def __init__(self, tmp: Path, overrides: dict[str, Any] | None = None, name: str = "node") -> None:
        self.state_dir = tmp / f"{name}-state"
        self.config_path = tmp / f"{name}.yaml"
        cfg: dict[str, Any] = {
            "node": {"bind": "tcp://127.0.0.1:*", "state_dir": str(self.state_dir), "batch_window_ms": 20.0,
                     "log_format": "json", "heartbeat_ivl_ms": 500, "heartbeat_timeout_ms": 3000},
            "num_threads": 1,
            # The node's frame size comes from its configuration (issue 24, G3): the test devices
            # (tests/support/nodeclient.py, SCHEMA_16) send 16 x 16 frames.
            "features": {"image_size": 16},
        }
        for section, values in (overrides or {}).items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.info: dict[str, Any] = {}

    def start(self, timeout: float = 60.0) -> "NodeProcess":
        info = self.state_dir / "node.json"
        if info.exists():
            info.unlink()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli.main", "run", "--config", str(self.config_path)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge-node exited with {self.proc.returncode}:\n{self.log()}")
            if info.exists():
                self.info = json.loads(info.read_text())
                self.endpoint = self.info["endpoint"]
                return self
            time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"edge-node did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for the drain + checkpoint; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if hasattr(self, "_log") and not self._log.closed:
            self._log.close()

    def summary(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "summary.json").read_text())


def stop_federation(fleets: list, federation: Any, nodes: dict) -> None:
    """Tear down a federation scenario: the device fleets, then the Flower processes, then the daemons."""
    for f in fleets:
        if f.poll() is None:
            f.terminate()
            f.wait(30)
    federation.close()
    for n in nodes.values():
        if n.proc is not None and n.proc.poll() is None:
            n.stop()
