"""Specification: no module imports a test module (tests/test_*.py); what tests share lives in
tests/helpers.py (or another helper module), so running or changing one test file never runs or
breaks another's import. Function-level imports count."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imported_test_modules(tree: ast.AST) -> list[str]:
    """The test modules an AST imports (`tests.test_x`, `from tests import test_x`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module.startswith("tests.test_") else [
                f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [name for name in names if name.startswith("tests.test_")]
    return sorted(set(found))


def test_the_check_sees_each_way_of_importing_a_test_module() -> None:
    source = "from tests.test_api import serve\nimport tests.test_ui\ndef f():\n    from tests import test_x"
    found = imported_test_modules(ast.parse(source))
    assert found == ["tests.test_api", "tests.test_ui", "tests.test_x"]
    assert imported_test_modules(ast.parse("from tests.helpers import serve\nimport tests.corpus\n")) == []


def test_no_module_imports_a_test_module() -> None:
    offenders = {}
    for path in sorted(REPO.rglob("*.py")):
        if any(part.startswith(".") or part == "build" for part in path.relative_to(REPO).parts):
            continue  # .venv, .git
        imported = imported_test_modules(ast.parse(path.read_text(), str(path)))
        if imported:
            offenders[str(path.relative_to(REPO))] = imported
    assert not offenders, f"import these helpers from tests/helpers.py instead: {offenders}"
