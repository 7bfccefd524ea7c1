"""Every deletion under the output goes through one door (``connector.lake.door``): no other
module of the package calls a filesystem's delete, and the door refuses what is not its to
delete."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from connector.lake import door

PACKAGE = Path(__file__).resolve().parent.parent / "connector"
DOOR = PACKAGE / "lake" / "door.py"

DELETES = {
    *("delete_file", "delete_dir", "delete_dir_contents", "rm", "rm_file", "rmtree", "rmdir"),
    *("delete_object", "delete_objects"),
}
"""Method names that delete on pyarrow's and fsspec's filesystems, ``os``, ``shutil`` and
botocore's S3 client."""

ALLOWED = {
    ("oci/sharedrate.py", "unlink"): "its own rate-state files in the runtime folder, never "
    "under output.uri",
}
"""Deletions that are not of the output, each with why."""


def deletions(path: Path) -> list[tuple[str, int]]:
    """(what, line) of each call in ``path`` that deletes a file or folder."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        name = node.func.attr
        receiver = node.func.value
        is_os = isinstance(receiver, ast.Name) and receiver.id == "os"
        if name in DELETES or name == "unlink" or (is_os and name == "remove"):
            found.append((name, node.lineno))
    return found


def test_no_module_outside_the_door_deletes() -> None:
    """A delete anywhere but the door (the emulator aside, which writes no lake) fails this."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if path == DOOR or relative.startswith("emulator/"):
            continue
        for name, line in deletions(path):
            if (relative, name) not in ALLOWED:
                offenders.append(f"connector/{relative}:{line} calls {name}")
    assert [] == offenders


def test_the_scan_sees_a_delete(tmp_path: Path) -> None:
    """The scan above is not blind: it finds each kind of delete call."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, shutil\n"
        "fs.delete_file(p)\nfs.delete_dir(p)\nshutil.rmtree(p)\nos.remove(p)\nPath(p).unlink()\n"
        "client.delete_object(Bucket=b, Key=k)\nitems.remove(x)\n"
    )
    assert ["delete_file", "delete_dir", "rmtree", "remove", "unlink", "delete_object"] == [
        name for name, _ in deletions(sample)
    ]


class TestSuperseded:
    def test_a_replaced_partitions_listed_file_may_go(self, tmp_path: Path) -> None:
        """A file the superseded set lists, inside a published partition, is deleted."""
        base = tmp_path.as_posix()
        partition = tmp_path / "images" / "snapshot_date=2026-11-27"
        (partition / "region=a").mkdir(parents=True)
        old = partition / "region=a" / "part-00000-r1.parquet"
        old.write_text("old")
        superseded = door.Superseded(partition.as_posix(), frozenset({old.as_posix()}))
        door.guarded_delete(pafs.LocalFileSystem(), base, old.as_posix(), superseded=superseded)
        assert not old.exists()

    def test_a_file_it_does_not_list_stays(self, tmp_path: Path) -> None:
        """A published file outside the superseded set is refused, and stays."""
        base = tmp_path.as_posix()
        partition = tmp_path / "images" / "snapshot_date=2026-11-27"
        partition.mkdir(parents=True)
        kept = partition / "_manifest.json"
        kept.write_text("{}")
        superseded = door.Superseded(partition.as_posix(), frozenset())
        with pytest.raises(door.DeletionRefused):
            door.guarded_delete(
                pafs.LocalFileSystem(), base, kept.as_posix(), superseded=superseded
            )
        assert kept.exists()

    @pytest.mark.parametrize(
        "partition",
        ["images", "somewhere/snapshot_date=2026-11-27", "images/data/region=a"],
        ids=["a-dataset-root", "not-a-dataset", "not-a-date"],
    )
    def test_only_a_published_partition(self, tmp_path: Path, partition: str) -> None:
        """Superseded files are only ever inside one date's partition of a dataset (or a
        table's data folder of one date)."""
        base = tmp_path.as_posix()
        target = tmp_path / partition / "x.parquet"
        target.parent.mkdir(parents=True)
        target.write_text("x")
        superseded = door.Superseded(
            (tmp_path / partition).as_posix(), frozenset({target.as_posix()})
        )
        with pytest.raises(door.DeletionRefused):
            door.guarded_delete(
                pafs.LocalFileSystem(), base, target.as_posix(), superseded=superseded
            )
        assert target.exists()

    def test_a_tables_data_files_of_one_date(self, tmp_path: Path) -> None:
        """An Iceberg table's data files of one date (``images/data/snapshot_date=D``) are a
        partition too: a killed run's copies there go through the door."""
        base = tmp_path.as_posix()
        folder = tmp_path / "images" / "data" / "snapshot_date=2026-11-27" / "region=a"
        folder.mkdir(parents=True)
        copy = folder / "part-00000-r1.parquet"
        copy.write_text("x")
        superseded = door.Superseded(folder.parent.as_posix(), frozenset({copy.as_posix()}))
        door.guarded_delete(pafs.LocalFileSystem(), base, copy.as_posix(), superseded=superseded)
        assert not copy.exists()
