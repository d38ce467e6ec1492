"""Import direction (issue 13 item 7): no import circle among the modules of edge_runtime.

Every ``import`` / ``from ... import`` statement of every module counts, also those inside
functions (a lazy import is still a dependency), and so does every ``"edge_runtime.x.y:Name"``
string (a registry entry, imported by name later); only ``if TYPE_CHECKING:`` blocks do not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "edge_runtime"
TARGET = re.compile(r"(edge_runtime(?:\.\w+)+):\w+")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The edge_runtime modules that module ``name`` imports."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    here = name.split(".") if is_pkg else name.split(".")[:-1]
                    here = here[: len(here) - (child.level - 1)]
                    base = ".".join(here + ([base] if base else []))
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    found.add(sub if sub in modules else base)
            elif isinstance(child, ast.Constant) and isinstance(child.value, str) and TARGET.fullmatch(child.value):
                found.add(TARGET.fullmatch(child.value).group(1))
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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


def test_the_walker_sees_lazy_imports_and_finds_a_planted_circle():
    graph = import_graph()
    assert "edge_runtime.selection.registry" in graph["edge_runtime.config"]
    assert "edge_runtime.selection.mbs" in graph["edge_runtime.selection.registry"]  # a registry entry counts
    assert "edge_runtime.protocols.offline" in graph and "edge_runtime.learner" in graph["edge_runtime.protocols.offline"]
    planted = {k: set(v) for k, v in graph.items()}
    planted["edge_runtime.selection.registry"].add("edge_runtime.config")
    assert ["edge_runtime.config", "edge_runtime.selection.registry"] in cycles(planted)


def test_no_import_circle_in_edge_runtime():
    assert cycles(import_graph()) == []


def test_policies_and_the_registry_sit_below_config():
    graph = import_graph()
    # pydantic and importlib only, and the registered policy files (by name)
    assert all(m.startswith("edge_runtime.selection.") for m in graph["edge_runtime.selection.registry"])
    for name, deps in graph.items():
        if name.startswith("edge_runtime.selection.") or name.startswith("edge_runtime.scoring") or name.startswith("edge_runtime.buffer"):
            assert "edge_runtime.config" not in deps or name.startswith("edge_runtime.buffer"), name
            assert "edge_runtime.learner" not in deps and "edge_runtime.node" not in deps, name


def test_only_the_node_the_store_codec_and_devices_use_the_wire_format():
    """Issue 13 item 6: samples live in edge_runtime.sample; learning code never imports the wire."""
    graph = import_graph()
    allowed = {"edge_runtime.node", "edge_runtime.buffer.sqlite", "edge_runtime.control", "edge_runtime.publish"}
    users = {name for name, deps in graph.items() if "edge_runtime.wire" in deps}
    for name in ("edge_runtime.learner", "edge_runtime.buffer.replay", "edge_runtime.buffer.store", "edge_runtime.batch",
                 "edge_runtime.losses", "edge_runtime.validation", "edge_runtime.protocols.offline"):
        assert name not in users, name
    assert not {u for u in users if u.startswith(("edge_runtime.selection", "edge_runtime.scoring"))}
    assert "edge_runtime.sample" in graph["edge_runtime.learner"] and "edge_runtime.wire" not in graph["edge_runtime.sample"]
    assert users <= allowed | {u for u in users if u.startswith("edge_runtime.federation")}, users - allowed
