"""The exception tree drawn in ``connector.errors``'s docstring against the classes that exist.

The tree is the one place a reader learns every error the connector can raise and when; a class
added beside the code that raises it (``connector.lake.lock.LockHeld``, ...) must appear there
too, under its own base, naming its module.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

import pytest

import connector
from connector import errors
from connector.errors import ConnectorError

# connector.airflow needs Airflow (tested in its own environment); the emulator is the fake
# service, not the connector: neither defines errors the connector raises.
LEFT_OUT = ("connector.airflow", "connector.emulator")

# One entry a line: the branch drawing (four characters a level), the class, when it is raised,
# and the module in brackets for a class defined outside connector.errors.
ENTRY = re.compile(
    r"(?P<branch>(?:│   |    )*(?:├── |└── )?)(?P<name>[A-Z]\w+) +(?P<when>\S.*?)"
    r"(?: \[(?P<module>[\w.]+)\])?"
)


@dataclass(frozen=True)
class Entry:
    """One line of the drawn tree."""

    name: str
    parent: str | None
    when: str
    module: str | None


def _package_modules(package: str, path: list[str]) -> list[str]:
    """Every module under ``package``, not entering the packages left out (importing
    ``connector.airflow`` would need Airflow)."""
    found = []
    for info in pkgutil.iter_modules(path, package + "."):
        if info.name.startswith(LEFT_OUT):
            continue
        found.append(info.name)
        if info.ispkg:
            module = importlib.import_module(info.name)
            found.extend(_package_modules(info.name, list(module.__path__)))
    return found


def _defined_errors() -> dict[str, type[ConnectorError]]:
    """Every subclass of ``ConnectorError`` the package defines, by name, after importing
    every module of it."""
    modules = _package_modules("connector", list(connector.__path__))
    for name in modules:
        importlib.import_module(name)
    found: dict[str, type[ConnectorError]] = {}
    pending: list[type[ConnectorError]] = [ConnectorError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        # Tests define subclasses of their own; only the package's count.
        if not cls.__module__.startswith("connector.") or cls.__module__.startswith(LEFT_OUT):
            continue
        other = found.setdefault(cls.__name__, cls)
        assert other is cls, (
            f"two errors named {cls.__name__}: {other.__module__}, {cls.__module__}"
        )
    return found


def _drawn_tree() -> list[Entry]:
    """The entries of the tree in the module docstring, each with the entry it hangs from."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    entries: list[Entry] = []
    ancestors: list[str] = []
    for line in block.splitlines():
        match = ENTRY.fullmatch(line.removeprefix("    "))
        assert match is not None, f"not one entry on one line: {line!r}"
        depth = len(match["branch"]) // 4
        assert depth <= len(ancestors), f"{match['name']} hangs from nothing"
        del ancestors[depth:]
        parent = ancestors[-1] if ancestors else None
        entries.append(Entry(match["name"], parent, match["when"], match["module"]))
        ancestors.append(match["name"])
    return entries


DEFINED = _defined_errors()
DRAWN = _drawn_tree()


def test_the_tree_lists_every_error_of_the_package_once() -> None:
    """Every ``ConnectorError`` subclass in the package is drawn exactly once, and nothing else."""
    drawn = [entry.name for entry in DRAWN]
    assert sorted(DEFINED) == sorted(drawn)


def test_the_errors_are_found_beyond_errors_py() -> None:
    """The walk reaches the modules that define errors of their own (else the test above proves
    less than it says)."""
    assert {"LockHeld", "VerificationError", "DeletionRefused", "TooManyPages"} <= set(DEFINED)


@pytest.mark.parametrize("entry", DRAWN[1:], ids=lambda entry: entry.name)
def test_each_error_hangs_from_one_of_its_bases(entry: Entry) -> None:
    """The entry an error is drawn under is a class it directly derives from."""
    bases = [base.__name__ for base in DEFINED[entry.name].__bases__]
    assert entry.parent in bases


@pytest.mark.parametrize("entry", DRAWN, ids=lambda entry: entry.name)
def test_each_error_names_the_module_it_lives_in(entry: Entry) -> None:
    """A class defined outside ``connector.errors`` names its module in brackets; the others
    name none."""
    module = DEFINED[entry.name].__module__
    expected = None if module == "connector.errors" else module.removeprefix("connector.")
    assert expected == entry.module


def test_the_root_is_connector_error() -> None:
    """The tree starts at ``ConnectorError``, the one root."""
    assert Entry("ConnectorError", None, DRAWN[0].when, None) == DRAWN[0]
