"""Import direction: the layers of edge_runtime, and no import circle.

Every ``import`` / ``from ... import`` statement of every module counts: those inside functions
(a lazy import is still a dependency), those under ``if TYPE_CHECKING:`` (a circle hidden there
is still a circle of the design), and every ``"package.module:Name"`` string (a registry entry,
imported by name later).
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Layer:
    """One row of :data:`LAYERS`: a package and what its modules may import besides their own package.

    ``only`` None: the packages of the rows above this one that have no ``only`` (the lower layers);
    otherwise exactly these packages (and everything under them).  ``never``: lower packages it
    may not import all the same; ``also``: packages it may import beyond that.
    """

    package: str
    only: frozenset[str] | None = None
    never: frozenset[str] = field(default_factory=frozenset)
    also: frozenset[str] = field(default_factory=frozenset)


#: The layers of edge_runtime, bottom to top, then the packages beside them.  A package's own
#: ``__init__`` outside every row (``edge_runtime``: only the version) may be imported by anyone
#: as long as it imports nothing itself.
LAYERS: tuple[Layer, ...] = (
    Layer("edge_runtime.core"),
    Layer("edge_runtime.wire"),
    Layer("edge_runtime.learning", never=frozenset({"edge_runtime.wire"})),
    Layer("edge_runtime.export"),
    Layer("edge_runtime.ops"),
    Layer("edge_runtime.federation"),
    Layer("edge_runtime.node"),
    Layer("edge_runtime.cli", also=frozenset({"device_sim"})),  # the demos start simulated devices
    # a device speaks the wire and runs the exported model (on-device inference), nothing of the node
    Layer("device_sim", only=frozenset({"edge_runtime.core", "edge_runtime.wire", "edge_runtime.export"})),
    Layer("benchmarks", only=frozenset({"edge_runtime", "device_sim"})),  # anything of both; nothing imports benchmarks
)

#: The packages :data:`LAYERS` covers, walked by the tests.
PACKAGES = ("edge_runtime", "device_sim", "benchmarks")


# --------------------------------------------------------------------------- the walker
def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (a folder under ``root``)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(root: Path, name: str, path: Path, local: set[str]) -> set[str]:
    """The modules of the packages ``local`` (folders under ``root``) that module ``name`` imports:
    at the top, in a function, under TYPE_CHECKING, or as a ``"module:Name"`` string."""
    is_pkg = path.name == "__init__.py"
    target = re.compile(rf"((?:{'|'.join(map(re.escape, sorted(local)))})(?:\.\w+)+):\w+")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_pkg else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if _is_module(root, sub) else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and target.fullmatch(node.value):
            found.add(target.fullmatch(node.value).group(1))
    return {m for m in found if m.split(".")[0] in local and m != name}


def import_graph(root: Path = ROOT, package: str = "edge_runtime") -> dict[str, set[str]]:
    """Module of ``package`` -> the modules under ``root`` it imports (of any package there)."""
    local = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    return {name: imports(root, name, path, local) for name, path in modules(root, package).items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), among the graph's own modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in graph:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def _under(module: str, packages: set[str] | frozenset[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _layer(module: str, layers: tuple[Layer, ...]) -> tuple[int, Layer] | tuple[None, None]:
    """The row of ``layers`` whose package holds ``module`` (the longest match)."""
    rows = [(i, layer) for i, layer in enumerate(layers) if _under(module, {layer.package})]
    return max(rows, key=lambda row: len(row[1].package)) if rows else (None, None)


def layer_violations(graph: dict[str, set[str]], layers: tuple[Layer, ...] = LAYERS) -> list[str]:
    """One line per import that breaks ``layers``, and per module that belongs to no layer."""
    out = []
    for name in sorted(graph):
        row, layer = _layer(name, layers)
        if layer is None:
            if "." in name or graph[name]:
                out.append(f"{name} belongs to no layer")
            continue
        allowed = set(layer.only) if layer.only is not None else {lower.package for lower in layers[:row] if lower.only is None}
        allowed = (allowed - layer.never) | layer.also | {layer.package}
        for dep in sorted(graph[name]):
            _, owner = _layer(dep, layers)
            if owner is None and "." not in dep:
                continue  # a package's bare __init__
            if not _under(dep, allowed):
                out.append(f"{name} imports {dep} ({layer.package} may not import {owner.package if owner else dep})")
    return out


# --------------------------------------------------------------------------- the checks bite
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


FAKE_LAYERS = (Layer("pkg.core"), Layer("pkg.learning"), Layer("sim", only=frozenset({"pkg.core"})))


def test_an_upward_import_is_reported_with_both_modules(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/core/__init__.py": "",
        "pkg/core/config.py": "def load():\n    from pkg.learning.model import Net  # lazy, still upward\n",
        "pkg/core/fine.py": "from pkg.core import config\nimport pkg\n",
        "pkg/learning/__init__.py": "",
        "pkg/learning/model.py": "from pkg.core.config import load\nclass Net: ...\n",
        "pkg/learning/registry.py": 'TABLE = {"x": "pkg.learning.model:Net"}\n',
        "sim/__init__.py": "",
        "sim/client.py": "from pkg.core.fine import config\nfrom pkg.learning import model\n",
    })
    graph = import_graph(tmp_path, "pkg") | import_graph(tmp_path, "sim")
    assert graph["pkg.learning.registry"] == {"pkg.learning.model"}  # a registry string is an import
    assert layer_violations(graph, FAKE_LAYERS) == [
        "pkg.core.config imports pkg.learning.model (pkg.core may not import pkg.learning)",
        "sim.client imports pkg.learning.model (sim may not import pkg.learning)",
    ]
    assert cycles(graph) == [["pkg.core.config", "pkg.learning.model"]]


def test_a_circle_hidden_under_type_checking_is_reported(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/learning/__init__.py": "",
        "pkg/learning/losses.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from pkg.learning.base import Selection
            """,
        "pkg/learning/base.py": """\
            import typing
            if typing.TYPE_CHECKING:
                from .losses import UpdateStep
            """,
        "pkg/learning/alone.py": "import os\n",
    })
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.learning.losses"] == {"pkg.learning.base"} and graph["pkg.learning.base"] == {"pkg.learning.losses"}
    assert cycles(graph) == [["pkg.learning.base", "pkg.learning.losses"]]


def test_a_module_outside_every_layer_and_a_forbidden_lower_layer_are_reported(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/stray.py": "",
        "pkg/core/__init__.py": "",
        "pkg/wire/__init__.py": "",
        "pkg/learning/__init__.py": "from pkg import wire\n",
    })
    layers = (Layer("pkg.core"), Layer("pkg.wire"), Layer("pkg.learning", never=frozenset({"pkg.wire"})))
    assert layer_violations(import_graph(tmp_path, "pkg"), layers) == [
        "pkg.learning imports pkg.wire (pkg.learning may not import pkg.wire)",
        "pkg.stray belongs to no layer",
    ]


# --------------------------------------------------------------------------- the real tree
def test_the_walker_sees_lazy_type_checking_and_registry_imports():
    graph = import_graph()
    assert "edge_runtime.node.daemon" in graph["edge_runtime.cli.main"]  # inside a function
    assert "edge_runtime.learning.batch" in graph["edge_runtime.learning.policies.base"]  # under TYPE_CHECKING
    assert "edge_runtime.learning.policies.admission.mbs" in graph["edge_runtime.learning.policies.registry"]  # a registry entry
    assert "edge_runtime.core.policy_settings" in graph["edge_runtime.core.config"]


def _whole_tree() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        graph |= import_graph(ROOT, package)
    return graph


def test_no_import_circle():
    circles = cycles(_whole_tree())
    assert circles == [], "\n".join(" <-> ".join(c) for c in circles)


def test_every_module_keeps_to_its_layer():
    violations = layer_violations(_whole_tree())
    assert violations == [], "\n".join(violations)


def test_configuration_needs_no_policy_code():
    """config.py validates the policies' settings from core.policy_settings; the policy classes are found by name."""
    graph = import_graph()
    assert not any(dep.startswith("edge_runtime.learning") for dep in graph["edge_runtime.core.config"])
    assert not any(dep.startswith("edge_runtime.learning") for dep in graph["edge_runtime.core.policy_settings"])
    registry = graph["edge_runtime.learning.policies.registry"]
    assert all(m.startswith("edge_runtime.learning.policies.") or m == "edge_runtime.core.policy_settings" for m in registry), registry


def test_nothing_that_learns_uses_the_wire_format():
    """Samples live in edge_runtime.core.sample; the wire is for the node, federation, the command lines and devices."""
    graph = _whole_tree()
    users = {name for name, deps in graph.items() if any(_under(d, {"edge_runtime.wire"}) for d in deps)}
    assert not {u for u in users if u.startswith("edge_runtime.learning")}, users
    assert "edge_runtime.core.sample" in graph["edge_runtime.learning.learner"]
    assert "edge_runtime.wire" not in graph["edge_runtime.core.sample"]
    allowed = {"edge_runtime.wire", "edge_runtime.node", "edge_runtime.federation", "edge_runtime.cli", "device_sim", "benchmarks"}
    assert {u for u in users if not _under(u, allowed)} == set()
    assert any(_under(u, {"edge_runtime.node"}) for u in users) and "device_sim.client" in users  # the two ends of the wire
