"""The floors hold: each package imports only what stands below it, and no module imports itself in a loop.

Read statically (every ``import`` in every module, wherever it stands), so a lazy import inside a function cannot
hide a crossing or a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("postlens", "stream", "trainer", "model_repository", "deploy", "bench")
# What each package may import of the others (its own modules always).
ALLOWED = {
    "postlens": set(),
    "stream": {"postlens"},
    "trainer": {"postlens"},
    "model_repository": {"postlens"},
    "deploy": {"postlens", "stream", "trainer"},
    "bench": {"postlens", "stream", "trainer", "deploy"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[str]:
    """Every project module ``path`` imports (``from a.b import c`` counts as a.b, and a.b.c when that is a module)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def project_graph() -> nx.DiGraph:
    modules = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from(
            (name, target) for target in imported_modules(path) if target in modules and target != name
        )
    return graph


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return project_graph()


def test_each_package_imports_only_the_floors_below_it(graph: nx.DiGraph) -> None:
    crossings = [
        f"{source} imports {target}"
        for source, target in graph.edges
        if (top := source.split(".")[0]) != (below := target.split(".")[0]) and below not in ALLOWED[top]
    ]
    assert not crossings, "\n".join(crossings)


def test_no_module_imports_itself_through_others(graph: nx.DiGraph) -> None:
    # A package's __init__ importing its own modules is how packages re-export; only module-to-module loops count.
    modules = graph.subgraph(name for name in graph if not (ROOT / name.replace(".", "/") / "__init__.py").exists())
    cycles = list(nx.simple_cycles(modules))
    assert not cycles, "\n".join(" → ".join([*cycle, cycle[0]]) for cycle in cycles)
