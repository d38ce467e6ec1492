"""Start-up faults of ``edge-node run`` (issue 11, fault 7): exit code 2 and one line naming the file or key.

Each test starts the real daemon (``python -m edge_runtime.cli.main run``) on a broken configuration or
state folder and reads its stderr: the node's own JSON log lines may precede the error, but no
traceback (unless ``--debug``) and exactly one plain line, the error.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_runtime.learning.checkpoint import CheckpointManager

ROOT = Path(__file__).resolve().parents[2]


def _run_node(tmp: Path, node: dict | None = None, *extra: str, config_text: bytes | None = None) -> tuple[int, str]:
    cfg_path = tmp / "node.yaml"
    if config_text is None:
        cfg = {"node": {"bind": "tcp://127.0.0.1:*", "state_dir": str(tmp / "state"), "log_format": "json", **(node or {})},
               "num_threads": 1}
        config_text = yaml.safe_dump(cfg).encode()
    cfg_path.write_bytes(config_text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "run", "--config", str(cfg_path), *extra],
                       capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=120)
    return r.returncode, r.stderr


def _message(stderr: str) -> str:
    """The one non-log line of stderr (asserted to be the only one); log lines are JSON objects."""
    assert "Traceback" not in stderr, stderr
    plain = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            plain.append(line)
    assert len(plain) == 1, stderr
    assert plain[0].startswith("edge-node: ")
    return plain[0]


@pytest.mark.slow
def test_damaged_state_db_names_the_file_and_the_fix(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"this is not an SQLite file " * 200)
    code, err = _run_node(tmp_path)
    assert code == 2
    msg = _message(err)
    assert str(state / "state.db") in msg and "not an SQLite database" in msg and "move it aside" in msg


@pytest.mark.slow
def test_debug_flag_shows_the_traceback(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"garbage" * 1000)
    code, err = _run_node(tmp_path, None, "--debug")
    assert code == 2
    assert "Traceback" in err and str(state / "state.db") in err.splitlines()[-1]


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_line_listing_each_file(tmp_path):
    ckpts = tmp_path / "state" / "checkpoints"
    ckpts.mkdir(parents=True)
    for step in (10, 20):
        (ckpts / f"ckpt-{step:012d}.pt").write_bytes(b"EDGECKP1" + b"\0" * 64)
    code, err = _run_node(tmp_path)
    assert code == 2
    msg = _message(err)
    assert "no readable checkpoint" in msg and str(ckpts) in msg
    assert "ckpt-000000000010.pt: checksum mismatch" in msg and "ckpt-000000000020.pt" in msg
    assert "Move" in msg


@pytest.mark.slow
def test_state_dir_that_is_a_file(tmp_path):
    (tmp_path / "state").write_text("not a folder")
    code, err = _run_node(tmp_path)
    assert code == 2
    msg = _message(err)
    assert "node.state_dir" in msg and str(tmp_path / "state") in msg and "is a file" in msg


def _make_read_only(path: Path) -> list[list[str]]:
    """chmod 0555; as root (which ignores mode bits) also the immutable attribute. Returns the undo commands."""
    path.chmod(0o555)
    undo = [["chmod", "755", str(path)]]
    probe = path / "probe"
    try:
        probe.touch()
    except OSError as err:
        assert err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        return undo
    probe.unlink()
    subprocess.run(["chattr", "+i", str(path)], check=True)  # root: mode bits do not stop it, this does
    undo.insert(0, ["chattr", "-i", str(path)])
    return undo


@pytest.mark.slow
def test_read_only_state_dir(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    undo = _make_read_only(state)
    try:
        with pytest.raises(OSError):
            (state / "x").touch()  # the condition under test really holds
        code, err = _run_node(tmp_path)
    finally:
        for cmd in undo:
            subprocess.run(cmd, check=True)
    assert code == 2
    msg = _message(err)
    assert "node.state_dir" in msg and str(state) in msg and "cannot write" in msg


@pytest.mark.slow
def test_metrics_port_in_use_names_the_key(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = _run_node(tmp_path, {"metrics_port": port})
    assert code == 2
    msg = _message(err)
    assert "node.metrics_port" in msg and f"127.0.0.1:{port}" in msg and "in use" in msg.lower()


@pytest.mark.slow
def test_cuda_device_this_machine_lacks_names_the_key(tmp_path):
    import torch

    # The real check, no faked GPU: plain `cuda` where there is none, else one index past the last GPU.
    device = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    cfg = {"node": {"bind": "tcp://127.0.0.1:*", "state_dir": str(tmp_path / "state")}, "device": device}
    code, err = _run_node(tmp_path, config_text=yaml.safe_dump(cfg).encode())
    assert code == 2
    msg = _message(err)
    assert f"device: {device!r}" in msg and "device: cpu" in msg


@pytest.mark.slow
def test_non_utf8_config_names_the_file(tmp_path):
    code, err = _run_node(tmp_path, config_text=b"node:\n  state_dir: caf\xe9\n")
    assert code == 2
    msg = _message(err)
    assert str(tmp_path / "node.yaml") in msg and "not UTF-8" in msg and "0xe9" in msg


def test_failed_checkpoint_save_on_a_full_disk_leaves_no_temp_file(tmp_path):
    """/dev/full answers every write with ENOSPC: the save's temp file (a link to it) must be gone after the error."""
    if not Path("/dev/full").exists():
        pytest.fail("this test needs /dev/full (Linux)")
    mgr = CheckpointManager(tmp_path / "ckpt")
    good = mgr.save({"w": 1}, step=1)
    tmp = mgr.directory / f".ckpt-{2:012d}.pt.{os.getpid()}.tmp"  # the name save() writes to (atomic_write's)
    os.symlink("/dev/full", tmp)
    with pytest.raises(OSError) as info:
        mgr.save({"w": 2}, step=2)
    assert info.value.errno == errno.ENOSPC
    assert not os.path.lexists(tmp)
    assert sorted(p.name for p in mgr.directory.iterdir()) == [good.name]
    assert mgr.load_latest()[0] == {"w": 1}
    shutil.rmtree(mgr.directory)
