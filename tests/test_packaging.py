"""The distribution: what the wheel installs, that the sdist rebuilds the same wheel, and the
package metadata an index shows. Built offline with the build backend itself (hatchling, as
pinned in ``[build-system]``), called as a build frontend calls it."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def build(hook: str, source: Path, out: Path) -> Path:
    """Run the backend's PEP 517 ``hook`` (build_sdist, build_wheel) in ``source``."""
    out.mkdir(parents=True, exist_ok=True)
    code = f"from hatchling.build import {hook}; print({hook}({str(out)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, check=True
    )
    return out / done.stdout.strip().splitlines()[-1]


def contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The wheel built from the tree, and the one built from the sdist built from the tree."""
    base = tmp_path_factory.mktemp("dist")
    from_tree = build("build_wheel", ROOT, base / "tree")
    sdist = build("build_sdist", ROOT, base / "sdist")
    with tarfile.open(sdist) as archive:
        archive.extractall(base / "unpacked", filter="data")
    (unpacked,) = (base / "unpacked").iterdir()
    from_sdist = build("build_wheel", unpacked, base / "from-sdist")
    return from_tree, from_sdist


def test_wheel_installs_the_connector_only(wheels: tuple[Path, Path]) -> None:
    """Top level: the `connector` package and the dist-info; no benchmarks, tests, scripts."""
    names = contents(wheels[0])
    tops = {name.split("/")[0] for name in names}
    (info,) = [t for t in tops if t.endswith(".dist-info")]
    assert {"connector", info} == tops
    assert "connector/_data/demo.toml" in names  # `oci-images demo` reads it
    assert "connector/py.typed" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_from_sdist_equals_wheel_from_tree(wheels: tuple[Path, Path]) -> None:
    """The same files with the same bytes, whichever way the wheel was built."""
    from_tree, from_sdist = (contents(w) for w in wheels)
    assert sorted(from_tree) == sorted(from_sdist)
    assert [] == [name for name in from_tree if from_tree[name] != from_sdist[name]]


def test_metadata_declares_license_classifiers(wheels: tuple[Path, Path]) -> None:
    """An SPDX license expression with its file (PEP 639), and valid trove classifiers."""
    from trove_classifiers import classifiers as known

    files = contents(wheels[0])
    (name,) = [n for n in files if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(files[name].decode())
    assert "Apache-2.0" == metadata["License-Expression"]
    assert ["LICENSE"] == metadata.get_all("License-File")
    assert metadata["License"] is None  # not the legacy field
    assert f"{name.rsplit('/', 1)[0]}/licenses/LICENSE" in files
    declared = metadata.get_all("Classifier") or []
    assert "Framework :: Apache Airflow :: Provider" in declared
    assert [] == [c for c in declared if c not in known]
    assert not [c for c in declared if c.startswith("License ::")]  # PEP 639 forbids both
