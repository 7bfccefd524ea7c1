"""Print the entries of requirements.lock that a light install needs, hashes and all.

``make demo`` installs only the core dependencies (``[project] dependencies`` in the
pyproject.toml beside the lock) and the packages named on the command line (DuckDB, to query
the demo's output), with everything they depend on, at the versions and hashes of the one
lock: no second lock to keep in step. What depends on what is read from the lock's own
``# via`` comments, which uv writes for every entry::

    python scripts/lock_subset.py requirements.lock duckdb > requirements-demo.txt
    pip install --require-hashes --no-deps -r requirements-demo.txt

A package pulled in only under an environment marker (typing-extensions for older Pythons) is
included as well: installing it is harmless, leaving it out could break an import.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(lock: str) -> dict[str, tuple[str, set[str]]]:
    """Each locked package: (its lines, the packages it is there for)."""
    found: dict[str, tuple[str, set[str]]] = {}
    name = ""
    in_via = False
    for line in lock.splitlines():
        match = _NAME.match(line)
        if match:
            name = canonical(match.group(1))
            found[name] = (line + "\n", set())
            in_via = False
            continue
        if not name:
            continue
        text, via = found[name]
        stripped = line.strip()
        if stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                via.add(canonical(rest.split()[0]))
        elif in_via and stripped.startswith("#"):
            via.add(canonical(stripped.lstrip("#").split()[0]))
        elif stripped.startswith("--hash"):
            found[name] = (text + line + "\n", via)
    return found


def subset(lock: str, roots: set[str]) -> str:
    """The entries of ``roots`` and of everything they depend on, as lock lines."""
    locked = entries(lock)
    missing = sorted(roots - set(locked))
    if missing:
        raise SystemExit(f"not in the lock: {', '.join(missing)}")
    wanted = set(roots)
    while True:
        more = {name for name, (_, via) in locked.items() if via & wanted} - wanted
        if not more:
            break
        wanted |= more
    return "".join(locked[name][0] for name in sorted(wanted))


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print("usage: lock_subset.py LOCK [PACKAGE ...]", file=sys.stderr)
        return 2
    lock = Path(argv[0])
    project = tomllib.loads((lock.parent / "pyproject.toml").read_text())["project"]
    roots = {canonical(n) for n in argv[1:]}
    for requirement in project["dependencies"]:
        match = _REQUIREMENT.match(requirement)
        if match:
            roots.add(canonical(match.group(1)))
    sys.stdout.write(subset(lock.read_text(), roots))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
