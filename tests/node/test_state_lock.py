"""One node per state folder (issue 24 G12, issue 23 item 1): ``edge-node run`` locks ``node.state_dir``.

A second real node on a folder in use exits 2 at once with one line naming the folder and the
holder's pid and endpoint, and leaves every file of the folder byte-identical; the first node keeps
serving. The lock is an ``flock`` the kernel drops with its process, so after a SIGKILL the next node
takes the folder over.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import zmq

from edge_runtime.node.startup import LOCK_FILE, StartupError, lock_state_dir
from tests.support.nodeclient import Device
from tests.support.nodeproc import ROOT, NodeProcess

#: Nothing the first node writes on its own while idle: status.json once at start, no history rows.
QUIET = {"node": {"status_every_s": 3600.0, "history_every_s": None}}


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def _digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (folders listed too, as "dir")."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _run_second(tmp: Path, state_dir: Path, timeout: float = 120.0) -> tuple[int, str]:
    """``edge-node run`` on ``state_dir`` (another port); exit code and stderr."""
    cfg = {"node": {"bind": "tcp://127.0.0.1:*", "state_dir": str(state_dir), "log_format": "json"}, "num_threads": 1}
    path = tmp / "second.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "run", "--config", str(path)],
                       capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=timeout)
    return r.returncode, r.stderr


def _message(stderr: str) -> str:
    """The only line of stderr: the refused node logs nothing before its error."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-node: "), stderr
    return lines[0]


@pytest.mark.slow
def test_second_node_on_a_folder_in_use_is_refused_and_changes_nothing(tmp_path):
    first = NodeProcess(tmp_path, QUIET, name="first").start()
    try:
        state = first.state_dir
        _wait_for(state / "status.json")  # written just after node.json; then nothing until the node stops
        holder = json.loads((state / LOCK_FILE).read_text())
        assert holder["pid"] == first.proc.pid and holder["endpoint"] == first.endpoint
        before = _digest(state)

        code, err = _run_second(tmp_path, state)

        assert code == 2, err
        msg = _message(err)
        assert str(state) in msg and "in use" in msg
        assert f"pid {first.proc.pid}" in msg and first.endpoint in msg
        assert _digest(state) == before, "the refused node changed the state folder"
        assert first.proc.poll() is None, "the first node must keep running"

        ctx = zmq.Context()
        dev = Device(ctx, first.endpoint, "uav-after-refusal")
        try:
            assert dev.hello()["type"] == "welcome"
        finally:
            dev.close()
            ctx.term()
        assert json.loads((state / "node.json").read_text())["pid"] == first.proc.pid
        assert first.stop() == 0, first.log()
        assert first.summary()["endpoint"] == first.endpoint
    finally:
        first.kill()


@pytest.mark.slow
def test_lock_of_a_killed_node_is_taken_over(tmp_path):
    first = NodeProcess(tmp_path, name="crashed").start()
    second = None
    try:
        old_pid = first.proc.pid
        first.kill()  # SIGKILL: no clean-up; the kernel drops its flock with the process
        second = NodeProcess(tmp_path, {"node": {"state_dir": str(first.state_dir)}}, name="next")
        second.state_dir = first.state_dir  # start() waits for node.json there
        second.start()
        assert second.proc.pid != old_pid
        holder = json.loads((first.state_dir / LOCK_FILE).read_text())
        assert holder["pid"] == second.proc.pid and holder["endpoint"] == second.endpoint
        code, err = _run_second(tmp_path, first.state_dir)  # and the new holder's lock is a real one
        assert code == 2 and f"pid {second.proc.pid}" in _message(err)
        assert second.stop() == 0, second.log()
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_lock_is_per_process_and_refuses_another_process(tmp_path):
    """In-process: taking the lock twice returns the one held; another process is refused until this one ends."""
    state = tmp_path / "state"
    code = ("import sys\nfrom pathlib import Path\nfrom edge_runtime.node.startup import lock_state_dir, StartupError\n"
            "try:\n    lock_state_dir(Path(sys.argv[1]))\nexcept StartupError as err:\n    print(err)\n    sys.exit(2)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run([sys.executable, "-c", code, str(state)], capture_output=True, text=True, env=env, timeout=60)
    assert child.returncode == 0, child.stderr  # free before; the child's lock ended with it
    lock = lock_state_dir(state)
    assert lock_state_dir(state) is lock and lock.info["pid"] == os.getpid()
    lock.record(endpoint="tcp://127.0.0.1:1")
    child = subprocess.run([sys.executable, "-c", code, str(state)], capture_output=True, text=True, env=env, timeout=60)
    assert child.returncode == 2
    assert f"pid {os.getpid()}" in child.stdout and "tcp://127.0.0.1:1" in child.stdout and str(state) in child.stdout


def test_state_dir_that_is_a_file_is_reported_before_locking(tmp_path):
    (tmp_path / "state").write_text("not a folder")
    with pytest.raises(StartupError, match="is a file"):
        lock_state_dir(tmp_path / "state")
    assert (tmp_path / "state").read_text() == "not a folder"
