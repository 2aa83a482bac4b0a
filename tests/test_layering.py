"""The direction of imports (DESIGN.md): clipsearch (CLI) -> search_api | ui -> indexer, and the UI
reaches the library only over HTTP.

Specification:
- the import-linter contracts of pyproject.toml are kept (`lint-imports`, as CI would run it);
- no module imports a layer above its own, or a sibling layer (search_api and ui);
- no import cycle between any two modules of the four packages; imports inside functions count,
  and so does a submodule importing its own package's __init__ that imports it back;
- the checks can fail: on a small package made for the purpose, they find its cycle and its
  upward import.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

from tests.clirun import REPO

PACKAGES = ("clipsearch", "search_api", "ui", "indexer")
# What each package may import of the others.
MAY_IMPORT = {
    "clipsearch": {"search_api", "ui", "indexer"},
    "search_api": {"indexer"},
    "ui": set(),
    "indexer": set(),
}


def edges(graph: grimp.ImportGraph) -> Iterator[tuple[str, str]]:
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            yield module, imported


def upward_imports(graph: grimp.ImportGraph, may_import: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, imported in edges(graph):
        top, their_top = module.partition(".")[0], imported.partition(".")[0]
        if their_top != top and their_top in may_import and their_top not in may_import[top]:
            wrong.append(f"{module} -> {imported}")
    return wrong


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    successors: dict[str, list[str]] = {m: [] for m in graph.modules}
    for module, imported in edges(graph):
        successors[module].append(imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in successors[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(successors):
        if v not in index:
            visit(v)
    return sorted(cycles)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_import_linter_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_no_module_imports_a_layer_above_or_beside_its_own(graph: grimp.ImportGraph) -> None:
    assert graph.modules >= {"clipsearch.cli", "search_api.app", "ui.app", "indexer.search.engine"}
    assert upward_imports(graph, MAY_IMPORT) == []


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_find_a_cycle_inside_functions_and_an_upward_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    low, high = tmp_path / "lowlayer", tmp_path / "highlayer"
    for package in (low, high):
        package.mkdir()
        (package / "__init__.py").write_text("")
    (low / "a.py").write_text("def f():\n    from lowlayer import b\n    return b\n")
    (low / "b.py").write_text("def g():\n    import lowlayer.a\n")
    (low / "c.py").write_text("from highlayer import top\n")
    (high / "top.py").write_text("import lowlayer.c\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    made = grimp.build_graph("lowlayer", "highlayer", cache_dir=None)
    assert import_cycles(made) == [["highlayer.top", "lowlayer.c"], ["lowlayer.a", "lowlayer.b"]]
    assert upward_imports(made, {"highlayer": {"lowlayer"}, "lowlayer": set()}) == [
        "lowlayer.c -> highlayer.top"
    ]
