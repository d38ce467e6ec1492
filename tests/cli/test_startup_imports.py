"""``edge-node config`` and ``edge-node run --help`` start without torch (a quick start on a small box).

Each command runs in a fresh interpreter through ``edge_runtime.cli.main:main`` (the ``edge-node``
entry point); the interpreter then reports whether torch, or any policy file, was imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

_CODE = """\
import sys
from edge_runtime.cli.main import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exit:
    rc = exit.code
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "edge_runtime.learning.policies.")))
print("IMPORTED", rc, ",".join(heavy) or "-", file=sys.stderr)
"""


def _edge_node(*argv: str) -> tuple[int, str, list[str]]:
    """``(exit code, stdout, heavy modules imported)`` of ``edge-node ARGV`` in a fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", _CODE, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _, rc, heavy = r.stderr.strip().splitlines()[-1].split(" ")
    return int(rc), r.stdout, [] if heavy == "-" else heavy.split(",")


@pytest.mark.parametrize("argv", [
    ["config", "--config", "configs/default.yaml"],
    ["config", "--config", "configs/default.yaml", "--set", "selection.policy=bmmal", "--set", "replay.policy=bss"],
], ids=["default", "bmmal-bss"])
def test_config_prints_the_configuration_without_torch(argv):
    rc, out, heavy = _edge_node(*argv)
    assert (rc, heavy) == (0, [])
    printed = yaml.safe_load(out)
    assert printed["selection"]["policy"] == ("bmmal" if "selection.policy=bmmal" in argv else "all")
    assert printed["replay"]["policy"] == ("bss" if "replay.policy=bss" in argv else "uniform")


def test_run_help_answers_without_torch():
    rc, out, heavy = _edge_node("run", "--help")
    assert (rc, heavy) == (0, [])
    assert out.startswith("usage: edge-node run")
