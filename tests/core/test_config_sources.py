"""A configuration error names where the key was set: the ``--set`` it came from, or the file and its line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.core.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def _error(path, overrides) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    return str(err.value)


def test_a_set_that_does_not_fit_the_files_policy_names_the_set_not_the_file():
    msg = _error(ROOT / "configs" / "default.yaml", ["selection.keep_ratio=0.3"])
    assert msg.startswith("--set selection.keep_ratio=0.3: selection.keep_ratio is not a setting of policy all"), msg
    assert "train_on" in msg, "the policy's own settings are listed"
    assert "default.yaml" not in msg and "\n" not in msg


def test_a_bad_value_from_a_set_names_the_set(tmp_path):
    msg = _error(None, ["selection.policy=mbs", "selection.keep_ratio=2"])
    assert msg.startswith("--set selection.keep_ratio=2: selection.keep_ratio:"), msg
    assert _error(None, ["bogus=1"]).startswith("--set bogus=1: bogus: unknown key")
    assert _error(None, ["selection"]).startswith("--set selection: expected KEY=VALUE")
    assert _error(None, ["buffer.max_items=[1"]).startswith("--set buffer.max_items=[1: the value is not valid YAML")


def test_errors_from_the_file_name_file_line_and_key(tmp_path):
    f = tmp_path / "node.yaml"
    f.write_text("selection:\n  policy: all\n  keep_ratio: 0.3\nbuffer:\n  max_items: -1\n")
    msg = _error(f, [])
    lines = msg.splitlines()
    assert f"{f} line 3: selection.keep_ratio is not a setting of policy all" in lines[1], msg
    assert f"{f} line 5: buffer.max_items:" in lines[2], msg
    # the --set fixes one problem; the other still names the file's line
    assert _error(f, ["selection.policy=mbs"]).startswith(f"{f} line 5: buffer.max_items:")
    # a --set of the policy makes a key of the file wrong: both are named
    g = tmp_path / "mbs.yaml"
    g.write_text("selection:\n  policy: mbs\n  keep_ratio: 0.3\n")
    msg = _error(g, ["selection.policy=all"])
    assert msg.startswith(f"{g} line 3 (the policy comes from --set selection.policy=all): selection.keep_ratio is not"), msg


def test_the_command_line_prints_the_set_and_exits_2():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "config", "--config", "configs/default.yaml",
                        "--set", "selection.keep_ratio=0.3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and not r.stdout
    assert r.stderr.startswith("edge-node: --set selection.keep_ratio=0.3: selection.keep_ratio is not a setting of policy all")
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
