"""The public API has one table of names (``connector._HOMES``): ``__all__`` and the lookup come
from it, and what the type checker sees is held to it here."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import connector

INIT = Path(connector.__file__)


def type_checking_imports() -> set[tuple[str, str]]:
    """(module, name) of every import under ``if TYPE_CHECKING:`` in ``connector/__init__.py``."""
    found = set()
    for node in ast.parse(INIT.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom)
                assert statement.module
                for alias in statement.names:
                    assert alias.asname == alias.name, "a re-export is spelled `X as X`"
                    found.add((statement.module, alias.name))
    return found


def test_the_type_checker_sees_the_table() -> None:
    """Every name of the table, and no other, is imported for the type checker from its home."""
    table = {(module, name) for module, names in connector._HOMES.items() for name in names}
    assert table == type_checking_imports()


def test_all_is_the_table() -> None:
    """``__all__`` is ``__version__`` and the table's names, each resolving from its home."""
    assert sorted(connector.__all__) == sorted(["__version__", *connector._HOME])
    for name, module in connector._HOME.items():
        assert getattr(importlib.import_module(module), name) is getattr(connector, name)
