"""Every example in every ``--help`` runs as written (issue 23, item 6), and so do the README's commands.

The examples are read back from the help texts (the ``Examples:`` section, see
:mod:`edge_runtime.cli.helptext`) of ``edge-node``, ``device-sim`` and each of their sub-commands,
and run from a sandbox that looks like the repository root (``configs/`` and ``.venv`` linked in,
so the README's ``.venv/bin/...`` lines work too), with nothing mocked:

* ``edge-node run`` lines are daemons: started, waited for (``node.json``), stopped with SIGTERM
  at the end of their scenario, exit 0;
* a ``--watch`` without ``--count`` runs until Ctrl-C: it is interrupted after its first screen, exit 0;
* ``edge-node state reset`` without ``--yes`` asks: it runs on a terminal (a pty) and is answered y;
* everything else runs to its end, exit 0.

They run in the order a user would: configuration and keys, the node, the fleet, the commands that
read the node's state folder, the demo, and the reset. ``federate``'s examples (two nodes and two
rounds), ``federation-demo``'s and ``federation-sim``'s (a few minutes each) have tests of their own. README commands that are
not ``edge-node`` / ``device-sim`` lines (venv, pip, pytest) are covered in tests/test_docs.py.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pty
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from edge_runtime.cli.helptext import examples
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROGRAMS = ("edge-node", "device-sim")
#: Commands whose examples have a test of their own here (they need several nodes, or minutes).
OWN_TEST = ("federate", "federation-demo", "federation-sim")
#: The order of a user's first hour (sub-command -> rank); unknown ones run with the cheap ones.
ORDER = {"config": 0, "keys": 0, "datasets": 0, "inspect": 0, "run": 1, "device-sim run": 2,
         "status": 3, "report": 3, "export": 3, "stop": 4, "demo": 5, "state": 6}


# ----------------------------------------------------------------------------------- reading the examples
def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(command path, parser) of ``parser`` and every sub-command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


def all_parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub-)command parser of both programs, by command path, e.g. ``("edge-node", "state", "reset")``."""
    from device_sim.cli import build_parser as sim_parser
    from edge_runtime.cli.main import build_parser as node_parser

    return {path: p for root, build in (("edge-node", node_parser), ("device-sim", sim_parser)) for path, p in _parsers(build(), (root,))}


def help_examples() -> dict[tuple[str, ...], list[str]]:
    """The examples of each command's --help (commands without examples left out)."""
    found = {path: examples(p.format_help(), PROGRAMS) for path, p in all_parsers().items()}
    return {path: lines for path, lines in found.items() if lines}


def readme_commands() -> list[str]:
    """The README's ``edge-node`` / ``device-sim`` commands, as written (``.venv/bin/`` kept)."""
    from tests.test_docs import doc_commands

    return [shlex.join(c.argv) for c in doc_commands([ROOT / "README.md"]) if c.program in PROGRAMS]


def _words(command: str) -> list[str]:
    return shlex.split(command)


def _program(words: list[str]) -> str:
    return Path(words[0]).name


def _sub(words: list[str]) -> str:
    """The sub-command of a command line (``device-sim run`` is told apart from ``edge-node run``)."""
    first = next((w for w in words[1:] if not w.startswith("-")), "")
    return f"device-sim {first}" if _program(words) == "device-sim" and first == "run" else first


def _rank(command: str) -> int:
    return ORDER.get(_sub(_words(command)), 0)


def _parse(command: str) -> argparse.Namespace:
    """``command`` parsed by its program's own parser (SystemExit on a usage error)."""
    from device_sim.cli import build_parser as sim_parser
    from edge_runtime.cli.main import build_parser as node_parser

    words = _words(command)
    build = node_parser if _program(words) == "edge-node" else sim_parser
    return build().parse_args(words[1:])


# ----------------------------------------------------------------------------------- running them
@contextlib.contextmanager
def fixed_ports() -> Iterator[None]:
    """Held while examples bind the fixed ports a user's examples name (5555, 9100, 5561, 5562): a second
    run of these tests on the same machine waits here instead of failing on a port in use."""
    with open(Path(tempfile.gettempdir()) / "edge-runtime-help-examples.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sandbox(tmp: Path) -> Path:
    """A folder that looks like the repository root to the examples: configs/ and .venv linked in."""
    box = tmp / "repo"
    box.mkdir()
    for name in ("configs", ".venv"):
        if (ROOT / name).exists():
            (box / name).symlink_to(ROOT / name)
    return box


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # as a user runs them
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _argv(command: str) -> list[str]:
    words = _words(command)
    return [str(BIN / words[0])] + words[1:] if words[0] in PROGRAMS else words


def _state_dir(command: str, box: Path) -> Path:
    """The node.state_dir an ``edge-node run`` line uses (its --config and --set, relative to the sandbox)."""
    from edge_runtime.core.config import load_config

    args = _parse(command)
    config_path = Path(box, args.config) if args.config else None
    return box / load_config(config_path, args.set).node.state_dir


class Daemon:
    """An ``edge-node run`` example: started, ready once its node.json is written, stopped with SIGTERM."""

    def __init__(self, command: str, box: Path) -> None:
        self.command, self.box = command, box
        self.state_dir = _state_dir(command, box)
        (self.state_dir / "node.json").unlink(missing_ok=True)
        self.log = open(box / f"daemon-{abs(hash(command))}.log", "wb")
        self.proc = subprocess.Popen(_argv(command), cwd=box, env=_env(), stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self, timeout: float = 120) -> "Daemon":
        def up() -> bool:
            assert self.proc.poll() is None, f"`{self.command}` exited {self.proc.returncode}:\n{self.output()}"
            return (self.state_dir / "node.json").exists()

        wait_until(up, timeout, f"`{self.command}` to write node.json", interval=0.1)
        return self

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """SIGTERM: the node drains, checkpoints and exits 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(120)
        finally:
            self.log.close()
        assert code == 0, f"`{self.command}` exited {code} after SIGTERM:\n{self.output()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if not self.log.closed:
            self.log.close()


def run_once(command: str, box: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``command`` to its end in ``box``; assert exit 0."""
    r = subprocess.run(_argv(command), cwd=box, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"`{command}` exited {r.returncode}:\n{(r.stdout + r.stderr)[-3000:]}"
    return r


def run_until_interrupted(command: str, box: Path) -> None:
    """A command that runs until Ctrl-C (``status --watch``): SIGINT after its first output; exit 0."""
    proc = subprocess.Popen(_argv(command), cwd=box, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # the first screen's first line
        assert first, f"`{command}` printed nothing: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, f"`{command}` exited {proc.returncode} on Ctrl-C: {proc.stderr.read()[-2000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def run_answering(command: str, box: Path, answer: str) -> subprocess.CompletedProcess:
    """Run ``command`` with a terminal (pty) as stdin, ``answer`` typed into it; returns the finished process."""
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(_argv(command), cwd=box, env=_env(), stdin=terminal, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        os.write(controller, answer.encode())
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(controller)
        os.close(terminal)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _unique(commands: list[str]) -> list[str]:
    """``commands`` without repeats: the same words (``.venv/bin/edge-node`` is ``edge-node``) run once, as first written."""
    seen: dict[str, str] = {}
    for command in commands:
        words = _words(command)
        seen.setdefault(shlex.join([_program(words), *words[1:]]), command)
    return list(seen.values())


def _is_daemon(command: str) -> bool:
    return _program(_words(command)) == "edge-node" and _sub(_words(command)) == "run"


def _runs_until_interrupted(command: str) -> bool:
    words = _words(command)
    return "--watch" in words and "--count" not in words


def _asks(command: str) -> bool:
    words = _words(command)
    return _sub(words) == "state" and "--yes" not in words and "-y" not in words


def _outside(command: str) -> bool:
    """A path of the writer's machine (``--root /data/CREMA-D``): not runnable here."""
    return any(w.startswith("/") for w in _words(command)[1:])


def run_examples(commands: list[str], box: Path) -> list[str]:
    """Run ``commands`` (examples and README lines) in the order of a user's first hour; returns what ran.

    The daemons stay up for the commands after them and are stopped (SIGTERM, exit 0) before the demo.
    """
    daemons: list[Daemon] = []
    ran: list[str] = []
    try:
        # the node with /metrics last among the daemons: it serves the commands after it (status --metrics)
        for command in sorted(_unique(commands), key=lambda c: (_rank(c), "metrics_port" in c)):
            if _rank(command) >= ORDER["stop"]:
                for d in daemons:
                    d.stop()
                daemons.clear()
            if _outside(command):
                continue
            if _is_daemon(command):
                for d in daemons:  # one node at a time on the default endpoint and state folder
                    d.stop()
                daemons = [Daemon(command, box).ready()]
            elif _runs_until_interrupted(command):
                run_until_interrupted(command, box)
            elif _asks(command):
                r = run_answering(command, box, "y\n")
                assert r.returncode == 0, f"`{command}` answered y exited {r.returncode}: {r.stderr[-2000:]}"
            else:
                run_once(command, box)
            ran.append(command)
        for d in daemons:
            d.stop()
        daemons.clear()
    finally:
        for d in daemons:
            d.kill()
    return ran


# ----------------------------------------------------------------------------------- the tests
def test_every_command_has_examples_and_each_parses_with_valid_settings():
    """Fast: every edge-node command shows examples; each one (device-sim's too) parses and its settings validate."""
    from edge_runtime.core.config import load_config

    found = help_examples()
    node_commands = [path for path in all_parsers() if path[0] == "edge-node"]
    missing = [" ".join(path) for path in node_commands if path not in found]
    assert not missing, f"--help without an Examples: section: {missing}"
    for path, lines in found.items():
        for command in lines:
            assert _program(_words(command)) == path[0], (path, command)
            args = _parse(command)  # SystemExit (usage error) fails the test
            if getattr(args, "set", None) and path[0] == "edge-node":
                load_config(ROOT / args.config if getattr(args, "config", None) else None, args.set)


def test_the_examples_reader_reads_sections_and_drops_comments():
    text = "usage: x\n\nExamples:\n  edge-node run   # a comment\n  # only a comment\n  edge-node config --set a=1\n\nOther:\n  edge-node no\n"
    assert examples(text) == ["edge-node run", "edge-node config --set a=1"]


def test_readme_and_help_agree_on_the_commands_a_first_hour_runs():
    """The README's node-and-fleet commands are what the scenario below runs (by their words, .venv/bin/ aside)."""
    readme = {shlex.join([_program(_words(c)), *_words(c)[1:]]) for c in readme_commands()}
    assert {"edge-node demo", "edge-node run --config configs/default.yaml --set node.metrics_port=9100",
            "device-sim run --endpoint tcp://127.0.0.1:5555 --devices 4 --samples 2000 --eval-every 10"} <= readme


@pytest.mark.slow
def test_examples_and_readme_commands_run_as_written(tmp_path):
    """Every example outside federation, and every README edge-node / device-sim line, in one sandbox."""
    box = _sandbox(tmp_path)
    commands = [c for path, lines in help_examples().items() if not set(path) & set(OWN_TEST) for c in lines]
    readme = [c for c in readme_commands() if _sub(_words(c)) not in OWN_TEST]
    with fixed_ports():
        ran = run_examples(readme + commands, box)  # README lines first: a line in both runs as the README writes it
    assert set(ran) == {c for c in _unique(readme + commands) if not _outside(c)}
    # what they left: the README's outputs, and the state folder moved aside by the reset example
    assert (box / "demo-out" / "report.json").is_file() and (box / "edge-report" / "index.html").is_file()
    assert (box / "model.onnx").is_file() and (box / "keys" / "allowed" / "uav-0.key").is_file()
    assert not (box / "edge-state").exists()
    backups = list(box.glob("edge-state.bak-*"))
    assert len(backups) == 1 and (backups[0] / "state.db").is_file() and list((backups[0] / "checkpoints").glob("ckpt-*.pt"))


@pytest.mark.slow
def test_federate_examples_run_and_print_each_round_as_it_ends(tmp_path):
    """federate's examples: two nodes, then two rounds; round 1 is printed while round 2 still runs."""
    pytest.importorskip("flwr", reason="the federation extra: pip install -e '.[federation]'")
    box = _sandbox(tmp_path)
    lines = help_examples()[("edge-node", "federate")]
    (federate,) = [c for c in lines if not _is_daemon(c)]
    with fixed_ports():
        _federate(lines, federate, box)


def _federate(lines: list[str], federate: str, box: Path) -> None:
    daemons = [Daemon(c, box) for c in lines if _is_daemon(c)]
    try:
        for d in daemons:
            d.ready()
        proc = subprocess.Popen(_argv(federate), cwd=box, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        printed: list[str] = []
        running_when_round_1_printed = None
        for line in proc.stdout:
            printed.append(line.rstrip("\n"))
            if line.startswith("round 1:"):
                running_when_round_1_printed = proc.poll() is None and not (box / "federation-out" / "done.json").exists()
        assert proc.wait(600) == 0, "\n".join(printed) + proc.stderr.read()[-3000:]
        rounds = [line for line in printed if re.match(r"round \d+:", line)]
        assert [r.split(":")[0] for r in rounds] == ["round 1", "round 2"], printed
        assert running_when_round_1_printed, "round 1 was printed only after the last round"
        log = json.loads((box / "federation-out" / "rounds.json").read_text())["rounds"]
        assert [r["replies"] for r in log] == [2, 2], log
        for d in daemons:
            d.stop()
    finally:
        for d in daemons:
            d.kill()


@pytest.mark.slow
def test_federation_demo_example_runs_as_written(tmp_path):
    """The README's and the help's `edge-node federation-demo --out fed-demo` (a few minutes on 2 cores)."""
    pytest.importorskip("flwr", reason="the federation extra: pip install -e '.[federation]'")
    box = _sandbox(tmp_path)
    (command,) = help_examples()[("edge-node", "federation-demo")]
    assert command in {shlex.join([_program(_words(c)), *_words(c)[1:]]) for c in readme_commands()}
    run_once(command, box, timeout=900)
    report = json.loads((box / "fed-demo" / "report.json").read_text())
    assert report, "the federation demo wrote its report"
