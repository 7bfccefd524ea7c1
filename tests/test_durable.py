"""Durable writes, the swap, its repair, and the clean-up of dead attempts' staging."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pyarrow.fs as pafs
import pytest

from connector.lake import durable, housekeeping, lock, storage

FS = pafs.LocalFileSystem()
DATE = "2026-11-27"


def tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` with its text."""
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def make_partition(folder: Path, marker: str) -> None:
    (folder / "region=us-ashburn-1").mkdir(parents=True)
    (folder / "region=us-ashburn-1" / "part-00000.parquet").write_text(marker)
    (folder / "_manifest.json").write_text(marker)
    (folder / "_SUCCESS").write_text("")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class TestWrites:
    def test_write_durably_replaces_whole_files_and_leaves_no_temporary(
        self, tmp_path: Path
    ) -> None:
        """The file holds the new content; no temporary file is left beside it."""
        path = tmp_path / "a" / "_manifest.json"
        durable.write_durably(FS, str(path), b"old")
        durable.write_json(FS, str(path), {"rows": 3})
        assert {"rows": 3} == orjson.loads(path.read_bytes())
        assert ["_manifest.json"] == os.listdir(path.parent)

    def test_exchange_swaps_two_folders_atomically(self, tmp_path: Path) -> None:
        """renameat2(RENAME_EXCHANGE): each name now holds the other's content."""
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "f").write_text("a")
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "f").write_text("b")
        if not durable.exchange(str(tmp_path / "a"), str(tmp_path / "b")):
            pytest.skip("this filesystem cannot exchange")
        assert "b" == (tmp_path / "a" / "f").read_text()
        assert "a" == (tmp_path / "b" / "f").read_text()


class TestSwap:
    @pytest.mark.parametrize("can_exchange", [True, False], ids=["exchange", "two-renames"])
    def test_swap_replaces_the_partition_and_leaves_nothing_behind(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, can_exchange: bool
    ) -> None:
        """The new partition is published, the old one deleted, staging and trash emptied."""
        if not can_exchange:
            monkeypatch.setattr(durable, "exchange", lambda a, b: False)
        base = tmp_path / "lake"
        published = base / "images" / f"snapshot_date={DATE}"
        staged = base / "_staging/run/att/images" / f"snapshot_date={DATE}"
        trash = base / "_trash/run/att/images" / f"snapshot_date={DATE}"
        make_partition(published, "old")
        make_partition(staged, "new")
        durable.swap_in(FS, str(base), str(staged), str(published), str(trash))
        assert {"_SUCCESS", "_manifest.json", "region=us-ashburn-1/part-00000.parquet"} == set(
            tree(published)
        )
        assert "new" == (published / "_manifest.json").read_text()
        assert not staged.exists()
        assert not trash.exists()

    def test_first_publish_of_a_date(self, tmp_path: Path) -> None:
        """With nothing published yet, the staged partition is renamed into place."""
        base = tmp_path / "lake"
        published = base / "images" / f"snapshot_date={DATE}"
        staged = base / "_staging/run/att/images" / f"snapshot_date={DATE}"
        make_partition(staged, "new")
        durable.swap_in(FS, str(base), str(staged), str(published), str(base / "_trash/x"))
        assert "new" == (published / "_manifest.json").read_text()


class TestRepair:
    def test_a_swap_killed_between_its_renames_is_undone(self, tmp_path: Path) -> None:
        """Old partition in _trash, none published: the old one goes back."""
        base = tmp_path / "lake"
        trash = base / "_trash/run/att/images" / f"snapshot_date={DATE}"
        make_partition(trash, "old")
        restored = housekeeping.start(storage.resolve(str(base)), lock.Owner.me("next", "a"))
        assert [f"images/snapshot_date={DATE}"] == restored
        assert "old" == (base / "images" / f"snapshot_date={DATE}" / "_manifest.json").read_text()
        assert not (base / "_trash").exists()

    def test_the_legacy_trash_layout_is_repaired_too(self, tmp_path: Path) -> None:
        """_trash/RUN/snapshot_date=D (images, as earlier versions wrote it) is recognised."""
        base = tmp_path / "lake"
        make_partition(base / "_trash/run" / f"snapshot_date={DATE}", "old")
        housekeeping.start(storage.resolve(str(base)), lock.Owner.me("next", "a"))
        assert (base / "images" / f"snapshot_date={DATE}" / "_SUCCESS").exists()

    def test_leftover_trash_after_a_finished_swap_is_deleted(self, tmp_path: Path) -> None:
        """New partition in place, old one still in _trash: the old one goes."""
        base = tmp_path / "lake"
        make_partition(base / "images" / f"snapshot_date={DATE}", "new")
        make_partition(base / "_trash/run/att/images" / f"snapshot_date={DATE}", "old")
        assert [] == housekeeping.start(storage.resolve(str(base)), lock.Owner.me("next", "a"))
        assert "new" == (base / "images" / f"snapshot_date={DATE}" / "_manifest.json").read_text()
        assert not (base / "_trash").exists()

    def test_a_date_another_live_run_holds_is_left_to_it(self, tmp_path: Path) -> None:
        """A run mid-swap holds its date's lock; repair does not touch that date."""
        base = tmp_path / "lake"
        trash = base / "_trash/run/att/images" / f"snapshot_date={DATE}"
        make_partition(trash, "old")
        with lock.date_lock(FS, str(base), DATE, lock.Owner.me("swapping", "a")):
            assert [] == housekeeping.start(storage.resolve(str(base)), lock.Owner.me("other", "b"))
        assert trash.exists()


class TestCleanup:
    def attempt(self, base: Path, owner: lock.Owner) -> Path:
        folder = Path(lock.claim_attempt(FS, str(base), owner))
        (folder / "images").mkdir()
        (folder / "images" / "part.parquet").write_text("x")
        return folder

    def test_a_dead_attempts_staging_is_removed_at_once(self, tmp_path: Path) -> None:
        """Its owner's pid is gone: no need to wait days."""
        owner = replace(lock.Owner.me("run", "att-dead"), pid=dead_pid(), pid_started=None)
        folder = self.attempt(tmp_path, owner)
        assert ["run/att-dead"] == housekeeping.clean_dead_staging(FS, str(tmp_path))
        assert not folder.exists()
        assert not (tmp_path / "_staging" / "run").exists()

    def test_a_live_attempt_is_left_alone(self, tmp_path: Path) -> None:
        """This process is alive: its staging stays."""
        folder = self.attempt(tmp_path, lock.Owner.me("run", "att-live"))
        assert [] == housekeeping.clean_dead_staging(FS, str(tmp_path))
        assert folder.exists()

    def test_a_finished_shard_waiting_for_commit_is_kept(self, tmp_path: Path) -> None:
        """Its process has exited, but a shard manifest points to it: commit needs it."""
        owner = replace(lock.Owner.me("run", "att-done"), pid=dead_pid(), pid_started=None)
        folder = self.attempt(tmp_path, owner)
        shards = tmp_path / "_staging/run/shards"
        shards.mkdir()
        manifest = {"attempt": "att-done", "shard": {"index": 0, "count": 2}}
        (shards / "000-of-002.json").write_bytes(orjson.dumps(manifest))
        assert [] == housekeeping.clean_dead_staging(FS, str(tmp_path))
        assert folder.exists()

    def test_a_dead_whole_run_is_removed_with_its_manifest(self, tmp_path: Path) -> None:
        """A run that stages and commits itself, killed: nobody will commit it."""
        owner = replace(lock.Owner.me("run", "att-killed"), pid=dead_pid(), pid_started=None)
        folder = self.attempt(tmp_path, owner)
        shards = tmp_path / "_staging/run/shards"
        shards.mkdir()
        manifest = {"attempt": "att-killed", "shard": {"index": 0, "count": 1}}
        (shards / "000-of-001.json").write_bytes(orjson.dumps(manifest))
        assert ["run/att-killed"] == housekeeping.clean_dead_staging(FS, str(tmp_path))
        assert not folder.exists()
        assert not (tmp_path / "_staging/run").exists()

    def test_an_attempt_without_owner_file_is_removed_once_old(self, tmp_path: Path) -> None:
        """Killed between creating its folder and writing its owner: removed after a minute."""
        folder = tmp_path / "_staging/run/att-x"
        folder.mkdir(parents=True)
        assert [] == housekeeping.clean_dead_staging(FS, str(tmp_path))
        old = time.time() - 2 * lock.UNREADABLE_GRACE_S
        os.utime(folder, (old, old))
        assert ["run/att-x"] == housekeeping.clean_dead_staging(FS, str(tmp_path))

    def test_locks_folder_is_not_mistaken_for_a_run(self, tmp_path: Path) -> None:
        """_staging/_locks holds lock files, not attempts."""
        with lock.date_lock(FS, str(tmp_path), DATE, lock.Owner.me("r", "a")):
            assert [] == housekeeping.clean_dead_staging(FS, str(tmp_path))
            assert (tmp_path / "_staging/_locks").exists()


class TestDeadLocks:
    def test_locks_of_dead_owners_go_and_the_others_stay(self, tmp_path: Path) -> None:
        """A shard's lock (here `commit`'s probe of it) left by a killed process goes at the
        next start, and so does an empty one (on a local disk a lock file is linked into place
        whole, so an empty one is being written by no one); a live owner's and another
        machine's before its expiry stay. Only the sweep's own date lock is held by the asking
        run."""
        base = str(tmp_path / "lake")
        me = lock.Owner.me("asking", "att-me")
        dead = replace(lock.Owner.me("killed", "commit-probe"), pid=dead_pid(), pid_started=None)
        elsewhere = replace(
            lock.Owner.me("remote", "att-remote"), host="elsewhere", expires_at=time.time() + 600
        )
        lock.shard_lock(FS, base, "20261127T000000Z-aaaaaa", 0, 1, dead).acquire()
        live = lock.shard_lock(FS, base, "20261127T000000Z-bbbbbb", 0, 2, me)
        live.acquire()
        lock.shard_lock(FS, base, "20261127T000000Z-cccccc", 1, 2, elsewhere).acquire()
        folder = tmp_path / "lake/_staging/_locks"
        (folder / "run=20261127T000000Z-dddddd.shard=000-of-001.lock").write_text("")
        with lock.date_lock(FS, base, DATE, me):
            assert [
                "run=20261127T000000Z-aaaaaa.shard=000-of-001.lock",
                "run=20261127T000000Z-dddddd.shard=000-of-001.lock",
            ] == sorted(lock.remove_dead_locks(FS, base, me))
            assert {
                f"snapshot_date={DATE}.lock",
                "run=20261127T000000Z-bbbbbb.shard=000-of-002.lock",
                "run=20261127T000000Z-cccccc.shard=001-of-002.lock",
            } == {p.name for p in folder.iterdir()}

    def test_each_start_removes_them(self, tmp_path: Path) -> None:
        """`housekeeping.start`, which every run calls at its start, sweeps dead owners' locks,
        and the folders they leave empty."""
        base = str(tmp_path / "lake")
        dead = replace(lock.Owner.me("killed", "commit-probe"), pid=dead_pid(), pid_started=None)
        lock.shard_lock(FS, base, "20261127T000000Z-aaaaaa", 0, 1, dead).acquire()
        housekeeping.start(storage.resolve(base), lock.Owner.me("next", "att"))
        assert not (tmp_path / "lake/_staging").exists()


@pytest.mark.parametrize(("age_days", "kept"), [(8, False), (1, True)])
def test_a_run_id_without_a_time_ages_by_its_files(
    tmp_path: Path, age_days: int, kept: bool
) -> None:
    """``--run-id nightly`` carries no start time: its staging (a finished shard waiting for
    its commit) is as old as its newest file, removed past a week, kept before."""
    base = tmp_path / "lake"
    shards = base / "_staging" / "nightly" / "shards"
    shards.mkdir(parents=True)
    manifest = shards / "000-of-002.json"
    manifest.write_bytes(b"{}")
    then = time.time() - age_days * 86400
    os.utime(manifest, (then, then))
    housekeeping.start(storage.resolve(str(base)), lock.Owner.me("next", "a"))
    assert kept == manifest.exists()
