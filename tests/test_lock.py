"""One writer per output and snapshot date: lock files, stale owners, leases, attempts."""

from __future__ import annotations

import errno
import itertools
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import fsspec.implementations.memory
import orjson
import pyarrow.fs as pafs
import pytest

from connector.lake import layout, lock, storage

DATE = "2026-11-27"


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def lock_file(base: Path) -> Path:
    return base / "_staging" / "_locks" / f"snapshot_date={DATE}.lock"


def plant(base: Path, owner: lock.Owner) -> None:
    """A lock file left by ``owner``."""
    path = lock_file(base)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(owner.to_json())


class TestLocalLock:
    def test_a_second_writer_fails_with_the_holder_named(self, tmp_path: Path) -> None:
        """While one run holds the date, another fails at once, told who holds it and where."""
        fs = pafs.LocalFileSystem()
        first = lock.Owner.me("run-a", "att-1")
        with lock.date_lock(fs, str(tmp_path), DATE, first), pytest.raises(lock.LockHeld) as caught:
            lock.date_lock(fs, str(tmp_path), DATE, lock.Owner.me("run-b", "att-2")).acquire()
        message = str(caught.value)
        for expected in ("run-a", f"pid {os.getpid()}", first.host, str(lock_file(tmp_path))):
            assert expected in message
        assert not lock_file(tmp_path).exists()

    def test_the_same_run_id_twice_is_still_two_writers(self, tmp_path: Path) -> None:
        """Two processes started with one run id do not share the lock."""
        fs = pafs.LocalFileSystem()
        holder = lock.Owner.me("same", "att-1")
        with lock.date_lock(fs, str(tmp_path), DATE, holder), pytest.raises(lock.LockHeld):
            lock.date_lock(fs, str(tmp_path), DATE, lock.Owner.me("same", "att-2")).acquire()

    def test_other_dates_are_independent(self, tmp_path: Path) -> None:
        """The lock is per snapshot date."""
        fs = pafs.LocalFileSystem()
        owner = lock.Owner.me("run-a", "att-1")
        with (
            lock.date_lock(fs, str(tmp_path), DATE, owner),
            lock.date_lock(fs, str(tmp_path), "2026-11-28", owner),
        ):
            pass

    def test_a_dead_owners_lock_is_taken_over(self, tmp_path: Path) -> None:
        """A lock whose pid is gone, on this machine, is stale: the next run takes it."""
        plant(tmp_path, replace(lock.Owner.me("killed", "att-0"), pid=dead_pid(), pid_started=None))
        fs = pafs.LocalFileSystem()
        me = lock.Owner.me("next", "att-1")
        with lock.date_lock(fs, str(tmp_path), DATE, me):
            assert "next" == orjson.loads(lock_file(tmp_path).read_bytes())["run_id"]

    def test_a_reused_pid_does_not_keep_a_lock_alive(self, tmp_path: Path) -> None:
        """The pid exists but started at another time: another process, so the owner is dead."""
        me = lock.Owner.me("old", "att-0")
        assert me.pid_started is not None
        plant(tmp_path, replace(me, pid_started=me.pid_started - 1))
        lock.date_lock(pafs.LocalFileSystem(), str(tmp_path), DATE, me).acquire()

    def test_a_lock_from_another_machine_is_trusted_until_it_expires(self, tmp_path: Path) -> None:
        """Nothing is known about another host's pid: its lock holds until expires_at."""
        fs = pafs.LocalFileSystem()
        remote = replace(
            lock.Owner.me("remote", "att-0", deadline_s=60), host="elsewhere", boot_id="other"
        )
        plant(tmp_path, remote)
        with pytest.raises(lock.LockHeld):
            lock.date_lock(fs, str(tmp_path), DATE, lock.Owner.me("me", "a")).acquire()
        plant(tmp_path, replace(remote, expires_at=time.time() - 1))
        lock.date_lock(fs, str(tmp_path), DATE, lock.Owner.me("me", "a")).acquire()

    def test_a_reboot_makes_this_machines_locks_stale(self, tmp_path: Path) -> None:
        """Same host, another boot id: every pid in the lock died with the old boot."""
        plant(tmp_path, replace(lock.Owner.me("before-reboot", "att-0"), boot_id="old-boot"))
        lock.date_lock(
            pafs.LocalFileSystem(), str(tmp_path), DATE, lock.Owner.me("x", "a")
        ).acquire()

    @pytest.mark.parametrize("content", [b"", b'{"run_id": "cut', b"\x00" * 64])
    def test_an_unreadable_local_lock_is_dead_at_once(self, tmp_path: Path, content: bytes) -> None:
        """On a local disk a lock file appears whole (linked into place), so an empty, cut or
        garbage one names no one still writing it: the next run takes it over at once, and a
        start's clean-up removes it, without the object stores' grace."""
        path = lock_file(tmp_path)
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
        fs = pafs.LocalFileSystem()
        with lock.date_lock(fs, str(tmp_path), DATE, lock.Owner.me("next", "a")):
            assert "next" == orjson.loads(path.read_bytes())["run_id"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        assert [path.name] == lock.remove_dead_locks(fs, str(tmp_path), lock.Owner.me("x", "b"))
        assert not path.parent.exists()

    def test_a_full_disk_leaves_no_lock_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ENOSPC while the lock is written: the create fails, and neither the lock nor its
        temporary file is left behind, so the date is free the moment space is back."""
        fs = pafs.LocalFileSystem()
        real_write = os.write

        def full(fd: int, data: bytes | memoryview) -> int:
            if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("snapshot_date"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", full)
        with pytest.raises(OSError, match="No space left"):
            lock.date_lock(fs, str(tmp_path), DATE, lock.Owner.me("full", "a")).acquire()
        monkeypatch.undo()
        assert [] == list(lock_file(tmp_path).parent.iterdir())
        with lock.date_lock(fs, str(tmp_path), DATE, lock.Owner.me("later", "b")):
            assert "later" == orjson.loads(lock_file(tmp_path).read_bytes())["run_id"]

    def test_a_killed_creates_temporary_file_is_cleaned_once_old(self, tmp_path: Path) -> None:
        """A create killed between its write and its link leaves ``NAME.tmp-XXXXXXXX``: the
        lock is free all the while, and a start removes the leftover once it is old."""
        leftover = lock_file(tmp_path).with_name(lock_file(tmp_path).name + ".tmp-0123abcd")
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b'{"run_id": "killed"')
        fs = pafs.LocalFileSystem()
        lock.date_lock(fs, str(tmp_path), DATE, lock.Owner.me("x", "a")).acquire()
        lock.remove_dead_locks(fs, str(tmp_path), lock.Owner.me("y", "b"))
        assert leftover.exists()  # young: perhaps a create under way
        old = time.time() - 2 * lock.BREAK_GRACE_S
        os.utime(leftover, (old, old))
        lock.remove_dead_locks(fs, str(tmp_path), lock.Owner.me("y", "b"))
        assert not leftover.exists()

    def test_release_leaves_someone_elses_lock_alone(self, tmp_path: Path) -> None:
        """A lock that was taken over is not deleted by its former holder."""
        fs = pafs.LocalFileSystem()
        mine = lock.date_lock(fs, str(tmp_path), DATE, lock.Owner.me("mine", "a"))
        mine.acquire()
        plant(tmp_path, lock.Owner.me("theirs", "b"))
        mine.release()
        assert "theirs" == orjson.loads(lock_file(tmp_path).read_bytes())["run_id"]

    def test_racing_processes_get_one_winner(self, tmp_path: Path) -> None:
        """Eight processes started together, each trying for the lock: one holds it at a time.

        Each winner reports when it held the lock; on a loaded machine a process that starts
        late may win after the first released it, which is allowed: holdings never overlap."""
        script = (
            "import sys, time, pyarrow.fs as pafs\n"
            "from connector.lake import lock\n"
            "owner = lock.Owner.me('r' + sys.argv[2], 'a')\n"
            "start = float(sys.argv[3])\n"
            "time.sleep(max(0.0, start - time.time()))\n"
            "try:\n"
            "    with lock.date_lock(pafs.LocalFileSystem(), sys.argv[1], '2026-11-27', owner):\n"
            "        held = time.time(); time.sleep(1.0)\n"
            "        print('won', held, time.time(), flush=True)\n"
            "except lock.LockHeld:\n"
            "    print('lost')\n"
        )
        start = str(time.time() + 1.5)
        children = [
            subprocess.Popen(
                [sys.executable, "-c", script, str(tmp_path), str(i), start],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(8)
        ]
        results = [child.communicate(timeout=60)[0].strip().splitlines()[-1] for child in children]
        held = sorted(
            (float(a), float(b)) for _, a, b in (r.split() for r in results if r != "lost")
        )
        assert held, "one process got the lock"
        assert all(end <= later for (_, end), (later, _) in itertools.pairwise(held))
        assert 8 == len(held) + results.count("lost")
        assert not lock_file(tmp_path).exists()


class TestObjectStoreLease:
    def test_conditional_create_through_fsspec(self) -> None:
        """Through fsspec's mode="create" (If-None-Match on S3), the second create loses."""
        store = fsspec.implementations.memory.MemoryFileSystem()
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(store))  # type: ignore[abstract]  # stubs miss its methods
        assert storage.create_exclusive(fs, "/bucket/lake/_staging/_locks/x.lock", b"a")
        assert not storage.create_exclusive(fs, "/bucket/lake/_staging/_locks/x.lock", b"b")
        assert b"a" == store.cat_file("/bucket/lake/_staging/_locks/x.lock")

    def test_an_unreadable_lock_on_a_store_is_respected_for_a_while(self) -> None:
        """On an object store a lock may still be uploading: one that does not parse is not
        taken over at once (``UNREADABLE_GRACE_S``), nor removed by a start."""
        store = fsspec.implementations.memory.MemoryFileSystem()
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(store))  # type: ignore[abstract]  # stubs miss its methods
        base = "/bucket-unreadable/lake"
        store.pipe_file(f"{base}/_staging/_locks/snapshot_date={DATE}.lock", b"")
        with pytest.raises(lock.LockHeld, match="being locked by another process"):
            lock.date_lock(fs, base, DATE, lock.Owner.me("b", "2")).acquire()
        assert [] == lock.remove_dead_locks(fs, base, lock.Owner.me("c", "3"))

    def test_lock_on_an_object_store(self) -> None:
        """The same lock protocol, on a store: held, refused, released."""
        store = fsspec.implementations.memory.MemoryFileSystem()
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(store))  # type: ignore[abstract]  # stubs miss its methods
        base = "/bucket-lease/lake"
        with lock.date_lock(fs, base, DATE, lock.Owner.me("a", "1")), pytest.raises(lock.LockHeld):
            lock.date_lock(fs, base, DATE, lock.Owner.me("b", "2")).acquire()
        with lock.date_lock(fs, base, DATE, lock.Owner.me("b", "2")):
            pass


class TestAttempts:
    def test_each_attempt_has_its_own_folder_and_owner(self, tmp_path: Path) -> None:
        """Two attempts of one run id stage apart, each folder naming its owner."""
        fs = pafs.LocalFileSystem()
        first = lock.Owner.me("run-1", lock.new_attempt_id())
        second = lock.Owner.me("run-1", lock.new_attempt_id())
        assert first.attempt != second.attempt
        folders = {lock.claim_attempt(fs, str(tmp_path), o) for o in (first, second)}
        assert 2 == len(folders)
        found = sorted((a.run_id, a.name, a.folder) for a in layout.attempts(fs, str(tmp_path)))
        assert sorted(("run-1", o.attempt) for o in (first, second)) == [f[:2] for f in found]
        for _run, attempt, folder in found:
            owner = lock.attempt_owner(fs, folder)
            assert owner is not None
            assert attempt == owner.attempt
            assert "alive" == owner.state()
