"""No two modules of tumor_edge import each other, directly or around a loop, counting imports inside functions
and under TYPE_CHECKING: a cycle hidden in a function is still a cycle a reader has to untangle.

The graph is grimp's (the library import-linter runs on), built from the source, so the test sees exactly what
`lint-imports` sees. Each cycle is reported as its strongly connected component: the set of modules that all
reach each other.

KNOWN_CYCLES is debt, listed so it can only shrink: the test fails on any cycle not listed here, and on a listed
one that no longer exists (delete its entry when you fix it).
"""

from __future__ import annotations

import grimp
import pytest

KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


def import_cycles(package: str = "tumor_edge") -> set[frozenset[str]]:
    """Every strongly connected component of more than one module in the package's import graph (Tarjan,
    iterative: the graph has a few hundred modules, and recursion depth must not depend on it)."""
    graph = grimp.build_graph(package, cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for root in edges:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges.get(node, [])
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _describe(cycles: set[frozenset[str]]) -> str:
    return "; ".join(" <-> ".join(sorted(c)) for c in sorted(cycles, key=sorted))


@pytest.fixture(scope="module")
def cycles() -> set[frozenset[str]]:
    return import_cycles()


def test_no_new_import_cycle(cycles):
    new = cycles - KNOWN_CYCLES
    assert not new, f"modules that import each other (break it by moving the shared code): {_describe(new)}"


def test_fixed_cycles_leave_the_list(cycles):
    fixed = KNOWN_CYCLES - cycles
    assert not fixed, f"no longer a cycle, delete it from KNOWN_CYCLES: {_describe(fixed)}"


def test_the_finder_finds_a_cycle_through_a_function_level_import(tmp_path, monkeypatch):
    """The finder itself: a package whose two modules import each other, one of them inside a function."""
    package = tmp_path / "cyclepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclepkg import b\n")
    (package / "b.py").write_text("def f():\n    from cyclepkg import a\n    return a\n")
    (package / "c.py").write_text("from cyclepkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("cyclepkg") == {frozenset({"cyclepkg.a", "cyclepkg.b"})}
