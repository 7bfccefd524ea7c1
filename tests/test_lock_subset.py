"""scripts/lock_subset.py: what `make demo` installs, picked from the one lock."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "lock_subset", ROOT / "scripts" / "lock_subset.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_gets_the_core_and_duckdb_with_their_dependencies() -> None:
    """The subset holds every core dependency, DuckDB and what they need (read from the lock's
    `# via` lines), verbatim with its hashes, and none of the extras or development tools."""
    result = subprocess.run(
        [sys.executable, "scripts/lock_subset.py", "requirements.lock", "duckdb"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    names = set(re.findall(r"^([a-z0-9][a-z0-9._-]*)==", result.stdout, re.M))
    core = {
        re.match(r"[A-Za-z0-9._-]+", r).group(0).lower()  # type: ignore[union-attr]
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    assert core | {"duckdb"} <= names
    assert {"yarl", "multidict", "cffi", "pycparser", "aiohappyeyeballs"} <= names  # needed
    assert not names & {"oci", "mypy", "pytest", "moto", "deltalake", "pyiceberg", "numpy"}
    assert len(names) < 25
    lock = (ROOT / "requirements.lock").read_text()
    for entry in re.split(r"(?m)^(?=[a-z0-9])", result.stdout):
        if entry:
            assert "--hash=sha256:" in entry
            assert entry.split("\n", 1)[0] + "\n" in lock


def test_dependencies_are_followed_through_via_lines() -> None:
    """A package another one in the subset is there for comes along, transitively; one that
    only an unrelated package needs does not."""
    lock = (
        "a==1 \\\n    --hash=sha256:aa\n    # via oci-images-connector (pyproject.toml)\n"
        "b==2 \\\n    --hash=sha256:bb\n    # via\n    #   a\n    #   z\n"
        "c==3 \\\n    --hash=sha256:cc\n    # via b\n"
        "d==4 \\\n    --hash=sha256:dd\n    # via z\n"
    )
    text = load().subset(lock, {"a"})
    assert ["a==1", "b==2", "c==3"] == re.findall(r"^\w==\d", text, re.M)
    assert "--hash=sha256:cc" in text
