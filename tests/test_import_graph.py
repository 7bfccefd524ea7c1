"""No import cycles anywhere in the package, counted the strictest way: every import
statement, including those inside functions and under ``TYPE_CHECKING``, and a package's
``__init__`` as a module of its own (``from connector.airflow import lineage`` imports the
package ``connector.airflow`` too). The layer contracts in pyproject.toml check the layers;
this checks the modules inside one layer as well."""

from __future__ import annotations

import ast
from pathlib import Path

import connector

PACKAGE = Path(connector.__file__).parent


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of ``root`` (the emulator left out: a test server, not the product) and
    the package's modules it imports."""
    paths = {module_name(p, root): p for p in root.rglob("*.py") if "emulator" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in paths and t not in (name, "connector")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert [] == cycles(import_graph())


def test_a_cycle_is_found(tmp_path: Path) -> None:
    """The check sees a cycle through a package's ``__init__`` and a ``TYPE_CHECKING`` import."""
    root = tmp_path / "connector"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("from connector.sub.b import thing\n")
    (root / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from connector.sub import other\n"
        "thing = 1\n"
    )
    (root / "sub" / "other.py").write_text("")
    assert [["connector.sub", "connector.sub.b"]] == cycles(import_graph(root))
