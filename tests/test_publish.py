"""Publishing: the atomic swap of a staged partition, and the repair of an interrupted one."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from connector.errors import PublishError
from connector.lake import (
    lock,
    publish,
)

FS = pafs.LocalFileSystem()
DATE = "2026-11-27"


def stage(base: Path, run_id: str, files: dict[str, str], success: bool = True) -> publish.Layout:
    """A run's staged partition holding ``files`` (relative path → text)."""
    layout = publish.Layout(base.as_posix(), run_id, DATE)
    staged = Path(layout.staged_partition)
    for name, text in files.items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_text(text)
    if success:
        (staged / "_SUCCESS").write_text("")
    return layout


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


class TestSwapIn:
    def test_first_publish(self, tmp_path: Path) -> None:
        """With nothing published yet, the staged partition moves into place; _trash is gone
        (the run's staging is the commit's to remove)."""
        layout = stage(tmp_path, "r1", {"region=a/part-00000.parquet": "new"})
        publish.swap_in(FS, layout)
        assert {
            f"images/snapshot_date={DATE}/region=a/part-00000.parquet",
            f"images/snapshot_date={DATE}/_SUCCESS",
        } == tree(tmp_path)
        assert not Path(layout.staged_partition).exists()
        assert not (tmp_path / publish.TRASH).exists()

    def test_replaces_the_previous_partition_whole(self, tmp_path: Path) -> None:
        """A file only the old partition had does not survive: readers see the new one alone."""
        old = {"region=a/part-00000.parquet": "old", "region=b/part-00000.parquet": "old"}
        publish.swap_in(FS, stage(tmp_path, "r1", old))
        publish.swap_in(FS, stage(tmp_path, "r2", {"region=a/part-00000.parquet": "new"}))
        partition = tmp_path / "images" / f"snapshot_date={DATE}"
        assert {"region=a/part-00000.parquet", "_SUCCESS"} == tree(partition)
        assert "new" == (partition / "region=a" / "part-00000.parquet").read_text()
        assert not (tmp_path / publish.TRASH).exists()

    def test_refuses_an_uncommitted_partition(self, tmp_path: Path) -> None:
        """Without _SUCCESS there is nothing to publish; what was published stays."""
        publish.swap_in(FS, stage(tmp_path, "r1", {"region=a/part-00000.parquet": "old"}))
        layout = stage(tmp_path, "r2", {"region=a/part-00000.parquet": "new"}, success=False)
        with pytest.raises(PublishError):
            publish.swap_in(FS, layout)
        partition = tmp_path / "images" / f"snapshot_date={DATE}"
        assert "old" == (partition / "region=a" / "part-00000.parquet").read_text()

    def test_leaves_other_runs_staging(self, tmp_path: Path) -> None:
        """Another run's staging (a backfill of another date, say) is not touched."""
        other = stage(tmp_path, "r-other", {"region=a/part-00000.parquet": "other"})
        publish.swap_in(FS, stage(tmp_path, "r1", {"region=a/part-00000.parquet": "new"}))
        assert Path(other.staged_partition, "region=a", "part-00000.parquet").is_file()


class TestRecover:
    def test_moves_back_a_partition_left_in_trash(self, tmp_path: Path) -> None:
        """A swap killed between its two renames left the old partition in _trash and none
        published: it is put back, and named."""
        trashed = tmp_path / publish.TRASH / "r2" / f"snapshot_date={DATE}" / "region=a"
        trashed.mkdir(parents=True)
        (trashed / "part-00000.parquet").write_text("old")
        assert [f"images/snapshot_date={DATE}"] == publish.recover(FS, tmp_path.as_posix())
        published = tmp_path / "images" / f"snapshot_date={DATE}" / "region=a"
        assert "old" == (published / "part-00000.parquet").read_text()
        assert not (tmp_path / publish.TRASH / "r2").exists()

    def test_drops_trash_once_a_partition_is_published(self, tmp_path: Path) -> None:
        """A swap killed after its second rename: the published partition wins, the trash goes."""
        publish.swap_in(FS, stage(tmp_path, "r1", {"region=a/part-00000.parquet": "new"}))
        trashed = tmp_path / publish.TRASH / "r1" / f"snapshot_date={DATE}"
        trashed.mkdir(parents=True)
        (trashed / "old.parquet").write_text("old")
        assert [] == publish.recover(FS, tmp_path.as_posix())
        assert not (tmp_path / publish.TRASH / "r1").exists()
        partition = tmp_path / "images" / f"snapshot_date={DATE}"
        assert "new" == (partition / "region=a" / "part-00000.parquet").read_text()

    def test_removes_the_staging_of_dead_attempts_only(self, tmp_path: Path) -> None:
        """Staging whose owner has exited goes at the next start; a running one's stays."""
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        killed = replace(lock.Owner.me("r-killed", "a1"), pid=dead.pid, pid_started=None)
        running = lock.Owner.me("r-running", "a2")
        folders = [Path(lock.claim_attempt(FS, tmp_path.as_posix(), o)) for o in (killed, running)]
        publish.recover(FS, tmp_path.as_posix())
        assert [False, True] == [folder.exists() for folder in folders]
