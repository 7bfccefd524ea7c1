"""The run stays thin: the orchestrating class is short and its module leans on few others.

Issue 25's bounds: ``Export`` at most 200 lines, ``connector/pipeline.py`` importing at most
12 of the package's modules. A growing run trips this test before review does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import connector

PACKAGE = Path(connector.__file__).parent
PIPELINE = PACKAGE / "pipeline.py"


def package_modules_imported(path: Path) -> set[str]:
    """The package's modules a file imports (``from connector.x import y`` counts ``x.y``
    when ``y`` is a module, else ``x``)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("connector"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                relative = Path(*full.split(".")[1:])
                is_module = (PACKAGE / relative).with_suffix(".py").exists() or (
                    PACKAGE / relative
                ).is_dir()
                found.add(full if is_module else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("connector."))
    return found


def test_the_run_imports_at_most_twelve_modules() -> None:
    imported = package_modules_imported(PIPELINE)
    assert len(imported) <= 12, sorted(imported)


def test_the_export_class_is_at_most_200_lines() -> None:
    tree = ast.parse(PIPELINE.read_text())
    (export,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Export"]
    assert export.end_lineno is not None
    assert export.end_lineno - export.lineno + 1 <= 200


def test_the_counter_counts(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from connector import errors, logs\n"
        "from connector.lake.manifest import Manifest\n"
        "from connector.errors import ConnectorError\n"
        "import connector.schema\n"
    )
    assert package_modules_imported(sample) == {
        "connector.errors",
        "connector.logs",
        "connector.lake.manifest",
        "connector.schema",
    }
