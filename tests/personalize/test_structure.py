"""The personalize package's shape, checked from its source (ast, nothing imported): no
function over 120 lines, and no import circle between its modules, counting imports made
only for type checking (a circle there still ties two modules' designs together)."""

from __future__ import annotations

import ast
from pathlib import Path

import feddx.personalize

PACKAGE = "feddx.personalize"
ROOT = Path(feddx.personalize.__file__).parent
MAX_LINES = 120


def _modules() -> dict[str, ast.Module]:
    return {
        f"{PACKAGE}.{p.stem}": ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
        for p in sorted(ROOT.glob("*.py"))
        if p.stem != "__init__"
    }


def long_functions(trees: dict[str, ast.Module], limit: int) -> list[str]:
    """``module.function (N lines)`` for every function or method longer than ``limit``
    lines, decorators and docstring included."""
    out = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = (node.end_lineno or node.lineno) - first + 1
                if n > limit:
                    out.append(f"{name}.{node.name} ({n} lines)")
    return out


def import_graph(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere (top level, inside functions,
    under ``if TYPE_CHECKING``), ``from feddx.personalize import x`` included."""
    graph: dict[str, set[str]] = {name: set() for name in trees}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph[name] |= {t for t in targets if t in trees and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path (``a -> b -> a``), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_function_in_personalize_is_over_120_lines() -> None:
    assert long_functions(_modules(), MAX_LINES) == []


def test_the_checks_catch_what_they_guard() -> None:
    long_src = "def f():\n" + "    x = 1\n" * 130
    assert long_functions({"m": ast.parse(long_src)}, MAX_LINES) == ["m.f (131 lines)"]
    a = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import X\n")
    b = ast.parse("from p import a\n")
    graph = import_graph({"p.a": a, "p.b": b})
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.a"}}
    assert find_cycle(graph) == ["p.a", "p.b", "p.a"]


def test_personalize_imports_have_no_circle() -> None:
    graph = import_graph(_modules())
    assert "feddx.personalize.registry" in graph["feddx.personalize.register"]  # it sees edges
    assert find_cycle(graph) is None


def test_experiment_is_the_list_of_stages() -> None:
    tree = _modules()[f"{PACKAGE}.experiment"]
    defs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    assert len(defs) <= 4
    run = next(n for n in defs if n.name == "run_experiment")
    assert (run.end_lineno or 0) - run.lineno < 90
