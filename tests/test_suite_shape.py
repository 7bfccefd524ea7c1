"""The suite's own shape: shared code lives in helper modules, never in a test module that
another one imports (importing a test module runs its fixtures' and parameters' set-up twice,
and makes one test file's refactoring break another)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_modules_imported(source: str) -> set[str]:
    """The ``test_*`` modules that ``source`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.rsplit(".", 1)[-1].startswith("test_"))
    return found


test_modules_imported.__test__ = False  # type: ignore[attr-defined]


def test_no_test_module_imports_another() -> None:
    importing = {
        str(path.relative_to(TESTS)): sorted(test_modules_imported(path.read_text()))
        for path in TESTS.rglob("*.py")
    }
    assert {} == {path: modules for path, modules in importing.items() if modules}


def test_the_check_sees_an_import() -> None:
    assert {"tests.test_docs"} == test_modules_imported("from tests.test_docs import blocks\n")
    assert {"tests.test_workers"} == test_modules_imported("import tests.test_workers\n")
    assert set() == test_modules_imported("from tests.helpers import write_config\n")
