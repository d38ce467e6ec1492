"""The README and docs/*.md work as written.

* Every shell command in them (each line of a fenced ``bash`` / ``sh`` / bare block, and every line
  that starts with ``edge-node``, ``device-sim``, ``python`` or ``.venv/bin/``) is either run (the cheap
  ones: ``--help``, ``edge-node config``, ``edge-node keys`` into a temporary folder, ``device-sim
  datasets`` and ``inspect``, ``benchmarks/report.py``) or checked against its ``--help``: the
  executable exists, so does its subcommand, and every option the command uses appears in the help.
  An ``edge-node`` command with ``--config`` / ``--set`` also gets its configuration validated by
  ``edge-node config`` with the same arguments. Files a command names (``-c constraints.txt``,
  ``docker ... -f FILE``, a script, a Flower app) must exist, pip extras must be in pyproject.toml,
  compose services in ``docker/compose.yaml``.
* Every relative link (and ``#anchor``) points to a file (and heading) that exists, and every
  repository path written in inline code (``edge_runtime/...``, ``tests/...::test_x``) exists.
* README.md stays at most 250 lines and keeps the exact test command CI runs.
* Every README command is run by a test: its ``edge-node`` / ``device-sim`` lines, as written, by
  ``tests/cli/test_help_examples.py`` (with every ``--help`` example); the rest (venv, pip, pytest)
  have their reason in :data:`README_NOT_RUN`.

:func:`check_commands` is the one checker: ``tests/benchmarks/test_benchmarks.py`` runs it on the
``benchmarks/`` commands (``--help`` without PYTHONPATH, as the docs run them), the slow test here
on every other command.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
SCRIPT_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
"""Commands run as the docs write them: from the repository root (or a copy of it), no PYTHONPATH."""

SHELL_FENCES = {"", "bash", "sh", "shell"}
COMMAND_PREFIXES = ("edge-node", "device-sim", "python", ".venv/bin/")
CLIS = {"edge-node", "device-sim"}
FLOWER = {"flower-superlink", "flower-supernode", "flwr"}
BUILTINS = {"export", "printf", "echo", "cd", "mkdir", "curl"}
CHEAP_SUBCOMMANDS = {("edge-node", "config"), ("edge-node", "keys"), ("device-sim", "datasets"), ("device-sim", "inspect")}
CHEAP_SCRIPTS = {"benchmarks/report.py"}
CONFIGURED = {"run", "demo", "export", "federate", "federation-demo"}
"""edge-node subcommands whose --config / --set are validated with ``edge-node config``."""
MAX_README_LINES = 250
REPO_PATH = re.compile(r"^(?:edge_runtime|device_sim|tests|benchmarks|configs|docker|docs)/[\w./-]*(?:::\w+)?$")


# ----------------------------------------------------------------------------------- reading the docs
@dataclass(frozen=True)
class Command:
    """One simple command of a doc: ``argv`` after splitting ``&&`` / ``;`` / ``&`` and dropping redirections."""

    doc: str
    line: int
    text: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()

    @property
    def program(self) -> str:
        return Path(self.argv[0]).name if self.argv[0].startswith(".venv/bin/") else self.argv[0]

    @property
    def script(self) -> str | None:
        """``benchmarks/x.py`` of ``python benchmarks/x.py ...`` (None for ``python -m ...`` and others)."""
        if self.program in ("python", "python3") and len(self.argv) > 1 and self.argv[1].endswith(".py"):
            return self.argv[1]
        return None

    @property
    def is_benchmark(self) -> bool:
        return bool(self.script and self.script.startswith("benchmarks/"))

    def where(self) -> str:
        return f"{self.doc}:{self.line}: `{self.text}`"


def _looks_like_shell(line: str) -> bool:
    word = line.strip().split(maxsplit=1)[0] if line.strip() else ""
    return line.lstrip().startswith(COMMAND_PREFIXES) or word in CLIS | FLOWER | BUILTINS | {"docker", "pip", "python3"}


def _fenced(text: str):
    """(line number, line, fence language or None outside fences) for every line of a markdown file.

    A bare fence is a shell block (language "") when its first line starts like a command, and
    "text" otherwise (a diagram or a hex dump written without a language).
    """
    lines = text.splitlines()
    lang = None
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if lang is None:
                lang = stripped[3:].strip().lower()
                if not lang:
                    first = next((x for x in lines[number:] if x.strip()), "")
                    lang = "" if _looks_like_shell(first) and not first.strip().startswith("```") else "text"
            else:
                lang = None
            continue
        yield number, line, lang


def _logical_lines(doc: Path):
    """(line number, command text) of every shell line, continuation lines (trailing ``\\``) joined."""
    pending, start = "", 0
    for number, line, lang in _fenced(doc.read_text()):
        shell = lang in SHELL_FENCES or (lang is None and line.lstrip().startswith(COMMAND_PREFIXES))
        if not shell or not line.strip():
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, (pending + line).strip()
        pending = ""


def _simple_commands(text: str):
    """Split one shell line into simple commands: (argv, env assignments)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    commands, current = [], []
    skip_next = False
    for token in tokens:
        if skip_next:
            skip_next = False
            continue
        if token in ("&&", "||", ";", "&", "|"):
            commands.append(current)
            current = []
        elif token in (">", ">>", "<", "2>"):
            skip_next = True
        else:
            current.append(token)
    commands.append(current)
    for argv in commands:
        env = []
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            name, _, value = argv.pop(0).partition("=")
            env.append((name, value))
        if argv:
            yield tuple(argv), tuple(env)


def doc_commands(docs: list[Path] = DOCS) -> list[Command]:
    """Every shell command of ``docs``, in the order they appear."""
    out = []
    for doc in docs:
        for line, text in _logical_lines(doc):
            for argv, env in _simple_commands(text):
                out.append(Command(str(doc.relative_to(ROOT)), line, text, argv, env))
    return out


def _options(args) -> list[str]:
    """The options (``--x``, ``-x``; ``--x=v`` as ``--x``) among ``args``; negative numbers are values."""
    return [a.split("=", 1)[0] for a in args if a.startswith("-") and not re.match(r"^-\d", a) and a != "-"]


# ----------------------------------------------------------------------------------- static checks
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _compose_services() -> set[str]:
    import yaml

    return set(yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"])


def static_problems(cmd: Command) -> list[str]:
    """What is wrong with ``cmd`` without starting a process: unknown program, missing file, unknown extra."""
    problems = []
    argv, prog = cmd.argv, cmd.program
    if prog in CLIS | FLOWER:
        if not (BIN / prog).exists():
            problems.append(f"{prog} is not installed next to {sys.executable}")
        if prog == "flwr" and len(argv) > 2 and argv[1] == "run" and not (ROOT / argv[2]).is_dir():
            problems.append(f"Flower app {argv[2]} is not a folder of the repository")
    elif prog in ("python", "python3"):
        if len(argv) > 2 and argv[1] == "-m":
            if argv[2] != "venv" and importlib.util.find_spec(argv[2]) is None:
                problems.append(f"module {argv[2]} is not importable")
        elif cmd.script and not (ROOT / cmd.script).is_file():
            problems.append(f"{cmd.script} is not a file of the repository")
    elif prog == "pip":
        if "-c" in argv and not (ROOT / argv[argv.index("-c") + 1]).is_file():
            problems.append(f"constraints file {argv[argv.index('-c') + 1]} does not exist")
        if "-e" in argv:
            target = argv[argv.index("-e") + 1]
            extras = re.fullmatch(r"\.(?:\[(.+)\])?", target)
            if not extras:
                problems.append(f"pip -e {target}: not the project")
            else:
                known = set(_pyproject()["project"]["optional-dependencies"])
                problems += [f"extra {e} is not in pyproject.toml" for e in (extras.group(1) or "").split(",") if e and e not in known]
    elif prog == "docker":
        files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-f"] + [v for _, v in cmd.env if "/" in v]
        problems += [f"{f} does not exist" for f in files if not (ROOT / f).is_file()]
        if "compose" in argv and "up" in argv:
            services = [a for a in argv[argv.index("up") + 1:] if not a.startswith("-")]
            problems += [f"no service {s} in docker/compose.yaml" for s in services if s not in _compose_services()]
    elif prog not in BUILTINS:
        problems.append(f"unknown program {argv[0]} (teach tests/test_docs.py how to check it)")
    return problems


# ----------------------------------------------------------------------------------- process checks
@functools.lru_cache(maxsize=None)
def _run(argv: tuple[str, ...], cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, env=SCRIPT_ENV, timeout=300)


def _help(argv: tuple[str, ...]) -> tuple[int, str]:
    """Exit code and output of ``argv + --help``, run from the repository root (cached)."""
    r = _run(tuple(argv) + ("--help",), str(ROOT))
    return r.returncode, r.stdout + r.stderr


def _help_options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


def _executable(cmd: Command) -> list[str]:
    if cmd.program in CLIS | FLOWER:
        return [str(BIN / cmd.program)]
    return [sys.executable]


def _sandbox(tmp: Path) -> Path:
    """A folder that looks like the repository root (links to its entries) where commands may write."""
    box = tmp / "repo"
    if not box.exists():
        box.mkdir(parents=True)
        for entry in ROOT.iterdir():
            if entry.name not in (".git", ".venv"):
                (box / entry.name).symlink_to(entry)
    return box


def process_problems(cmd: Command, tmp: Path) -> list[str]:
    """Run ``cmd`` if it is cheap, else check it against its ``--help``; validate an edge-node configuration."""
    argv, prog = cmd.argv, cmd.program
    if prog in FLOWER and importlib.util.find_spec("flwr") is None:
        return []  # the federation extra is not installed here; the static check names the executable
    if prog not in CLIS | FLOWER and not cmd.script:
        return []
    exe = _executable(cmd)
    head = [cmd.script] if cmd.script else []
    rest = list(argv[2:] if cmd.script else argv[1:])
    # the subcommand: the first word that is not an option (edge-node, device-sim, flwr)
    sub = []
    if prog in CLIS or prog == "flwr":
        first = next((i for i, a in enumerate(rest) if not a.startswith("-")), len(rest))
        top = rest[:first]  # options before the subcommand (edge-node --debug run ...)
        if first < len(rest):
            sub, rest = [rest[first]], rest[first + 1:]
        code, text = _help(tuple(exe))
        if code != 0:
            return [f"{prog} --help exits {code}: {text[-600:]}"]
        missing = [o for o in _options(top) if o not in _help_options(text)]
        if missing:
            return [f"{prog} has no option {', '.join(missing)}"]
    code, text = _help(tuple(exe + head + sub))
    if code != 0 or "usage" not in text.lower():
        return [f"`{' '.join([prog, *head, *sub])} --help` exits {code}: {text[-600:]}"]
    missing = sorted({o for o in _options(rest) if o not in _help_options(text)})
    if missing:
        return [f"option(s) {', '.join(missing)} not in `{' '.join([prog, *head, *sub])} --help`"]
    box = _sandbox(tmp)
    outside = any(a.startswith("/") for a in rest)  # a path of the writer's machine (/data/CREMA-D)
    cheap = ("--help" in rest or "-h" in rest or (prog, *sub) in CHEAP_SUBCOMMANDS or cmd.script in CHEAP_SCRIPTS)
    if cheap and not outside:
        r = subprocess.run(exe + head + sub + rest, capture_output=True, text=True, cwd=box, env=SCRIPT_ENV, timeout=300)
        if r.returncode != 0:
            return [f"exits {r.returncode}: {(r.stdout + r.stderr)[-800:]}"]
    elif prog == "edge-node" and sub and sub[0] in CONFIGURED:
        args = []
        for i, a in enumerate(rest):
            if a in ("--config", "--set") and i + 1 < len(rest):
                args += [a, rest[i + 1]]
        if args:
            r = subprocess.run(exe + ["config", *args], capture_output=True, text=True, cwd=box, env=SCRIPT_ENV, timeout=300)
            if r.returncode != 0:
                return [f"its configuration does not validate (`edge-node config {' '.join(args)}` exits {r.returncode}): "
                        f"{(r.stdout + r.stderr)[-800:]}"]
    return []


def check_commands(commands: list[Command], tmp: Path) -> list[str]:
    """Every problem of ``commands`` (static, then run / --help), one line each, naming doc and line."""
    problems = []
    for cmd in commands:
        found = static_problems(cmd)
        if not found:
            found = process_problems(cmd, tmp)
        problems += [f"{cmd.where()}: {p}" for p in found]
    return problems


# ----------------------------------------------------------------------------------- links and paths
def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line, lang in _fenced(doc.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line) if lang is None else None
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def _prose(doc: Path):
    """(line number, line with inline code removed, inline code spans) outside fenced blocks."""
    for number, line, lang in _fenced(doc.read_text()):
        if lang is None:
            spans = re.findall(r"`([^`]+)`", line)
            yield number, re.sub(r"`[^`]*`", "", line), spans


def link_problems(doc: Path) -> list[str]:
    problems = []
    for number, line, _ in _prose(doc):
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(ROOT)}:{number}: ({target})"
            if not dest.exists():
                problems.append(f"{where}: {path} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def path_problems(doc: Path) -> list[str]:
    problems = []
    for number, _, spans in _prose(doc):
        for word in (w for span in spans for w in span.split()):
            if not REPO_PATH.match(word):
                continue
            path, _, test = word.partition("::")
            where = f"{doc.relative_to(ROOT)}:{number}: `{word}`"
            if not (ROOT / path).exists():
                problems.append(f"{where}: {path} does not exist")
            elif test and not re.search(rf"^def {re.escape(test)}\(", (ROOT / path).read_text(), re.M):
                problems.append(f"{where}: no test {test} in {path}")
    return problems


# ----------------------------------------------------------------------------------- tests
def test_readme_is_short_and_keeps_the_ci_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= MAX_README_LINES, f"README.md has {len(readme.splitlines())} lines"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pytest" in line]
    assert ci and ci[-1].strip() in readme.splitlines(), "README.md must keep the test command .ci/run runs"


def test_docs_cite_no_path_outside_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "../shared" not in text and "shared/DESIGN.md" not in text, doc


def test_relative_links_and_anchors_resolve():
    problems = [p for doc in DOCS for p in link_problems(doc)]
    assert not problems, "\n".join(problems)


def test_repository_paths_in_inline_code_exist():
    problems = [p for doc in DOCS for p in path_problems(doc)]
    assert not problems, "\n".join(problems)


def test_the_checker_reads_what_the_docs_write():
    cmds = doc_commands()
    programs = {c.program for c in cmds}
    assert {"edge-node", "device-sim", "python", "pip", "docker"} <= programs, programs
    # continuation lines are one command; redirections and trailing & are not arguments
    federate = [c for c in cmds if c.argv[1:2] == ("federate",)]
    assert federate and "--out" in federate[0].argv and "\\" not in federate[0].argv
    assert all("&" not in c.argv and ">" not in c.argv for c in cmds)
    # shell output shown in ```text blocks is not a command
    assert not any(c.argv[:2] == ("edge-node", "running") for c in cmds)
    assert len({c.script for c in cmds if c.is_benchmark}) >= 10


def test_every_command_names_real_programs_files_and_extras():
    problems = [f"{c.where()}: {p}" for c in doc_commands() for p in static_problems(c)]
    assert not problems, "\n".join(problems)


def test_learning_step_has_the_seven_steps_the_code_cites():
    design = (ROOT / "docs" / "design.md").read_text()
    section = design.split("## The learning step", 1)[1].split("\n## ", 1)[0]
    steps = [int(n) for n in re.findall(r"^(\d)\. ", section, re.M)]
    assert steps == [1, 2, 3, 4, 5, 6, 7], steps
    assert "ER-ACE" in section and "teacher" in section and "class_balanced" in design
    cited = set()
    for path in (ROOT / "edge_runtime").rglob("*.py"):
        for a, b in re.findall(r"steps? (\d)(?:-(\d))? \(docs/design\.md\)", path.read_text()):
            cited |= {int(a), int(b or a)}
    assert cited and cited <= set(steps), cited


def test_architecture_picture_redraws_from_its_source(tmp_path):
    from PIL import Image

    spec = importlib.util.spec_from_file_location("architecture", ROOT / "docs" / "architecture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.draw(tmp_path / "architecture.png")
    with Image.open(out) as fresh, Image.open(ROOT / "docs" / "architecture.png") as committed:
        assert fresh.size == committed.size
    assert ".venv/bin/python docs/architecture.py" in (ROOT / "docs" / "design.md").read_text()


#: README commands no test runs, and why (every README ``edge-node`` / ``device-sim`` line is run as written by
#: tests/cli/test_help_examples.py; the cheap ones also here).
README_NOT_RUN = {
    ("python3", "-m", "venv"): "creates the virtual environment; .ci/run runs this exact line on a clean clone",
    ("pip",): "installs packages from the network; .ci/run runs the README's install line on a clean clone",
    ("python", "-m", "pytest"): "the test suite itself; .ci/run runs the README's test command",
}


def _readme_reason(cmd: Command) -> str | None:
    """Why ``cmd`` (a README command) is not run by a test, or None when it is."""
    if cmd.program in CLIS:
        return None  # run by tests/cli/test_help_examples.py (and the cheap ones by the slow test here)
    words = (Path(cmd.argv[0]).name, *cmd.argv[1:])
    return next((why for prefix, why in README_NOT_RUN.items() if words[:len(prefix)] == prefix), None)


def test_every_readme_command_is_run_by_a_test_or_says_why_not():
    from tests.cli.test_help_examples import readme_commands

    readme = doc_commands([ROOT / "README.md"])
    unexplained = [c.where() for c in readme if c.program not in CLIS and _readme_reason(c) is None]
    assert not unexplained, "README commands no test runs, without a reason in README_NOT_RUN:\n" + "\n".join(unexplained)
    run_there = set(readme_commands())
    assert all(shlex.join(c.argv) in run_there for c in readme if c.program in CLIS)


@pytest.mark.slow
def test_every_doc_command_runs_or_matches_its_help(tmp_path):
    """Runs the cheap commands and checks the rest against their --help (benchmark scripts: test_benchmarks.py)."""
    problems = check_commands([c for c in doc_commands() if not c.is_benchmark], tmp_path)
    assert not problems, "\n".join(problems)
    keys = tmp_path / "repo" / "keys"  # operations.md: what `edge-node keys keys/` writes
    for name in ("server.key", "server.key_secret", "device.key", "device.key_secret", "allowed/device.key"):
        assert (keys / name).is_file(), name
