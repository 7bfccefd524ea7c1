"""Publishing on a local disk: every dataset of a date swapped in behind one commit point, and
the repair of a swap or a commit that was interrupted."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from connector.errors import PublishError
from connector.lake import durable, housekeeping, layout, lock, publisher, storage
from connector.lake.layout import Layout
from connector.lake.manifest import Manifest, RequestCounts, read_document
from connector.sinks import FileInfo

FS = pafs.LocalFileSystem()
DATE = "2026-11-27"


def manifest_of(run_id: str, files: dict[str, str], companion: dict[str, str]) -> Manifest:
    """The manifest of a commit that staged ``files`` (images) and ``companion``
    (compartments), relative path → text."""
    return Manifest(
        run_id=run_id,
        snapshot_date=DATE,
        status="succeeded",
        started_at="2026-11-27T00:00:00.000Z",
        finished_at="2026-11-27T00:01:00.000Z",
        files=tuple(FileInfo(name, 1, len(text)) for name, text in files.items()),
        reject_files=(),
        compartments=(),
        requests=RequestCounts(),
        format="parquet",
        compression="zstd",
        platform_images="once",
        filters={},
        schema_fingerprint="sha256:x",
        connector_version="test",
        datasets={"compartments": tuple(FileInfo(n, 1, len(t)) for n, t in companion.items())},
    )


def stage(
    base: Path, run_id: str, files: dict[str, str], companion: dict[str, str] | None = None
) -> tuple[Layout, Manifest]:
    """A commit's staging holding ``files`` for images and ``companion`` for compartments."""
    companion = companion if companion is not None else {"part-00000.parquet": run_id}
    staged = Layout(base.as_posix(), run_id, DATE, "commit-1")
    for root, written in (("images", files), ("compartments", companion)):
        folder = Path(staged.staged_dataset(root))
        for name, text in written.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
    return staged, manifest_of(run_id, files, companion)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def swap(base: Path) -> publisher.Publisher:
    return publisher.for_store(storage.resolve(base.as_posix()), None)


def run_of(base: Path, dataset: str) -> str | None:
    document = read_document(FS, f"{base.as_posix()}/{dataset}/snapshot_date={DATE}")
    return None if document is None else str(document["run_id"])


class TestLocalSwap:
    def test_first_publish(self, tmp_path: Path) -> None:
        """With nothing published yet, every staged dataset moves into place with its manifest
        and marker; the commit's folder and _trash are gone."""
        staged, manifest = stage(tmp_path, "r1", {"region=a/part-00000.parquet": "new"})
        published = swap(tmp_path).publish(staged, manifest)
        assert manifest == published
        assert {
            f"images/snapshot_date={DATE}/region=a/part-00000.parquet",
            f"images/snapshot_date={DATE}/_manifest.json",
            f"images/snapshot_date={DATE}/_SUCCESS",
            f"compartments/snapshot_date={DATE}/part-00000.parquet",
            f"compartments/snapshot_date={DATE}/_manifest.json",
            f"compartments/snapshot_date={DATE}/_SUCCESS",
        } == tree(tmp_path)
        assert ["r1", "r1"] == [run_of(tmp_path, d) for d in ("images", "compartments")]

    def test_replaces_every_partition_whole(self, tmp_path: Path) -> None:
        """A file only the old partitions had does not survive: readers see the new ones alone."""
        old = {"region=a/part-00000.parquet": "old", "region=b/part-00000.parquet": "old"}
        swap(tmp_path).publish(*stage(tmp_path, "r1", old, {"part-00000.parquet": "o", "x": "o"}))
        new = {"region=a/part-00000.parquet": "new"}
        swap(tmp_path).publish(*stage(tmp_path, "r2", new, {"part-00000.parquet": "n"}))
        images = tmp_path / "images" / f"snapshot_date={DATE}"
        assert {"region=a/part-00000.parquet", "_manifest.json", "_SUCCESS"} == tree(images)
        assert "new" == (images / "region=a" / "part-00000.parquet").read_text()
        companion = tmp_path / "compartments" / f"snapshot_date={DATE}"
        assert {"part-00000.parquet", "_manifest.json", "_SUCCESS"} == tree(companion)
        assert not (tmp_path / layout.TRASH).exists()

    def test_leaves_other_runs_staging(self, tmp_path: Path) -> None:
        """Another run's staging (a backfill of another date, say) is not touched."""
        other, _ = stage(tmp_path, "r-other", {"region=a/part-00000.parquet": "other"})
        swap(tmp_path).publish(*stage(tmp_path, "r1", {"region=a/part-00000.parquet": "new"}))
        assert Path(other.staged_partition, "region=a", "part-00000.parquet").is_file()


class TestOneCommitPoint:
    def test_a_commit_killed_after_its_commit_point_is_finished(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Images swapped in, the companion not yet: the next start swaps the companion in, so
        both name the new run."""
        swap(tmp_path).publish(*stage(tmp_path, "r1", {"region=a/part-00000.parquet": "old"}))
        monkeypatch.setattr(publisher.LocalSwap, "_finish", lambda *args: None)
        staged, manifest = stage(tmp_path, "r2", {"region=a/part-00000.parquet": "new"})
        swap(tmp_path).publish(staged, manifest)
        assert ["r2", "r1"] == [run_of(tmp_path, d) for d in ("images", "compartments")]
        monkeypatch.undo()
        housekeeping.start(storage.resolve(tmp_path.as_posix()))
        assert ["r2", "r2"] == [run_of(tmp_path, d) for d in ("images", "compartments")]
        assert not Path(staged.run_staging).exists()

    def test_a_commit_that_fails_before_its_commit_point_changes_nothing(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The images swap fails: images and its companion both still name the old run, and
        the next start removes the failed commit's folder."""
        swap(tmp_path).publish(*stage(tmp_path, "r1", {"region=a/part-00000.parquet": "old"}))

        def refuse(*args: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(durable, "swap_in", refuse)
        staged, manifest = stage(tmp_path, "r2", {"region=a/part-00000.parquet": "new"})
        with pytest.raises(PublishError):
            swap(tmp_path).publish(staged, manifest)
        monkeypatch.undo()
        assert ["r1", "r1"] == [run_of(tmp_path, d) for d in ("images", "compartments")]
        housekeeping.start(storage.resolve(tmp_path.as_posix()))
        assert ["r1", "r1"] == [run_of(tmp_path, d) for d in ("images", "compartments")]
        assert not Path(staged.run_staging).exists()


class TestHousekeeping:
    def test_moves_back_a_partition_left_in_trash(self, tmp_path: Path) -> None:
        """A swap killed between its two renames left the old partition in _trash and none
        published: it is put back, and named."""
        trashed = tmp_path / layout.TRASH / "r2" / f"snapshot_date={DATE}" / "region=a"
        trashed.mkdir(parents=True)
        (trashed / "part-00000.parquet").write_text("old")
        restored = housekeeping.start(storage.resolve(tmp_path.as_posix()))
        assert [f"images/snapshot_date={DATE}"] == restored
        published = tmp_path / "images" / f"snapshot_date={DATE}" / "region=a"
        assert "old" == (published / "part-00000.parquet").read_text()
        assert not (tmp_path / layout.TRASH / "r2").exists()

    def test_drops_trash_once_a_partition_is_published(self, tmp_path: Path) -> None:
        """A swap killed after its second rename: the published partition wins, the trash goes."""
        swap(tmp_path).publish(*stage(tmp_path, "r1", {"region=a/part-00000.parquet": "new"}))
        trashed = tmp_path / layout.TRASH / "r1" / f"snapshot_date={DATE}"
        trashed.mkdir(parents=True)
        (trashed / "old.parquet").write_text("old")
        assert [] == housekeeping.start(storage.resolve(tmp_path.as_posix()))
        assert not (tmp_path / layout.TRASH / "r1").exists()
        partition = tmp_path / "images" / f"snapshot_date={DATE}"
        assert "new" == (partition / "region=a" / "part-00000.parquet").read_text()

    def test_removes_the_staging_of_dead_attempts_only(self, tmp_path: Path) -> None:
        """Staging whose owner has exited goes at the next start; a running one's stays."""
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        killed = replace(lock.Owner.me("r-killed", "a1"), pid=dead.pid, pid_started=None)
        running = lock.Owner.me("r-running", "a2")
        folders = [Path(lock.claim_attempt(FS, tmp_path.as_posix(), o)) for o in (killed, running)]
        housekeeping.start(storage.resolve(tmp_path.as_posix()))
        assert [False, True] == [folder.exists() for folder in folders]
