"""Exit codes are the same in every command (issue 23, item 6): 2 usage or configuration, 1 runtime
failure, 0 success, 130 Ctrl-C (README.md "Exit codes", docs/operations.md).

In-process (``main(argv)``, what the ``edge-node`` entry point returns) for the usage and
configuration errors of each command: every one answers before it imports torch or starts anything.
"""

from __future__ import annotations

import argparse
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    """Every edge-node sub-command (state: its action)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


#: The shortest valid arguments of each command, before the option under test (folders come from tmp_path).
def _base(command: str, tmp: Path) -> list[str]:
    state = tmp / "state"
    state.mkdir(exist_ok=True)
    return {
        "export": ["export", "--state-dir", str(state), "--out", str(tmp / "m.onnx")],
        "federate": ["federate", "--control", "tcp://127.0.0.1:1"],
        "federation-keys": ["federation-keys", "--out", str(tmp / "fed-keys"), "--nodes", "box0"],
        "keys": ["keys", str(tmp / "keys")],
        "state": ["state", "reset", "--state-dir", str(state)],
        "status": ["status", "--state-dir", str(state)],
        "report": ["report", "--state-dir", str(state)],
    }.get(command, [command])


#: A configuration (or, where there is none, an argument value) the command refuses.
def _bad_setting(command: str, tmp: Path) -> list[str]:
    if command in ("run", "demo", "config", "export", "federate", "federation-demo", "federation-sim"):
        return [*_base(command, tmp), "--set", "selection.keep_ratio=0.3"]  # not a setting of the default policy
    return {
        "keys": ["keys", str(_a_file(tmp))],  # DIR is a file: nothing can be written there
        "federation-keys": ["federation-keys", "--out", str(tmp / "fed-keys"), "--nodes", "box 0"],  # not a node name
        "state": ["state", "reset", "--state-dir", str(tmp / "nowhere")],
        "status": ["status", "--state-dir", str(tmp / "state"), "--interval", "0"],
        "report": ["report", "--state-dir", str(tmp / "nowhere")],
    }[command]


def _a_file(tmp: Path) -> Path:
    path = tmp / "a-file"
    path.write_text("x")
    return path


def test_every_command_is_covered():
    assert set(_commands()) == {"run", "demo", "keys", "config", "export", "status", "report", "federate",
                                "federation-demo", "federation-keys", "federation-sim", "state"}


@pytest.mark.parametrize("command", _commands())
def test_a_usage_error_exits_2(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*_base(command, tmp_path), "--no-such-option"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize("command", _commands())
def test_a_configuration_error_exits_2_with_one_line(command, tmp_path, capsys):
    code = main(_bad_setting(command, tmp_path))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("edge-node"), err
    if "--set" in _bad_setting(command, tmp_path):  # the message names the --set, not a file
        assert "--set selection.keep_ratio=0.3: selection.keep_ratio is not a setting of policy all" in err, err


def test_a_refused_output_folder_and_a_missing_checkpoint_exit_2(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    assert main(["export", "--state-dir", str(state), "--out", str(tmp_path / "no" / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err == f"edge-node export: --out {tmp_path / 'no' / 'm.onnx'}: the folder {tmp_path / 'no'} does not exist; " \
                  f"create it first (mkdir -p {tmp_path / 'no'})\n"
    assert not (tmp_path / "no").exists(), "export creates no folder"


@pytest.mark.slow
def test_ctrl_c_at_a_question_exits_130_and_changes_nothing(tmp_path):
    """`state reset` waiting for its answer on a terminal: Ctrl-C is exit 130, one line, the folder where it was."""
    state = tmp_path / "edge-state"
    (state / "checkpoints").mkdir(parents=True)
    (state / "state.db").write_bytes(b"")
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli.main", "state", "reset", "--state-dir", str(state)],
                                stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        asked = ""
        while "[y/N]" not in asked:
            char = proc.stderr.read(1)
            assert char, f"no question asked: {asked!r}"
            asked += char
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 130, err
    assert err.strip() == "edge-node: interrupted" and "Traceback" not in err
    assert state.is_dir() and not list(tmp_path.glob("edge-state.bak-*"))
