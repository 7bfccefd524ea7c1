"""One writer per output and snapshot date: lock files on a local disk, leases on object stores.

A lock is a small JSON file under ``{uri}/_staging/_locks/`` naming its owner: run id, attempt,
host, pid (with the process's start time, so a reused pid is not mistaken for the owner), the
machine's boot id and pid namespace (``connector.machine``), and when the owner's run deadline
expires. It is created exclusively, by the store (``storage.create_exclusive``: on a local disk
written under a temporary name, fsynced and hard-linked into place, so that it is whole or absent
even when the disk is full; a conditional put on an object store).

**A second writer fails at once; it does not wait.** It exits 1 with a message naming the holder
(run id, pid, host, since when) and the lock file. Waiting would tie up a scheduler slot behind a
run that may take hours or hang; a scheduler (Airflow's retries, cron's next tick) is the right
place to try again, and the message says what to do when the holder is truly gone.

A lock whose owner is dead is taken over: on the same machine the owner is dead when its pid is
gone (or belongs to another process, or the machine rebooted); from another machine nothing can
be known about the pid, so the lock is trusted until its ``expires_at`` (the owner's start plus
its run deadline plus a margin) has passed. Taking over goes through a short-lived ``.break``
file, itself created exclusively, so two runs that find the same dead lock do not both take it:
only the holder of ``.break`` deletes the dead lock, and only if it still holds what was read.

A lock file that does not parse (empty, cut short, garbage) names no one who could still be
writing it on a local disk, where it appears whole: it is taken over at once. On an object
store it is left for ``UNREADABLE_GRACE_S``, in case a writer is still uploading it.

Where the store has no conditional put, the lock is advisory (``storage.create_exclusive`` says
so once in a warning).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import pyarrow.fs as pafs

from connector import logs, machine, names
from connector.errors import ConnectorError
from connector.lake import door, layout, storage

log = logs.get_logger("connector.lake.lock")

EXPIRY_MARGIN_S = 3600.0
"""Added to a run's deadline before another machine may consider its lock abandoned."""
UNREADABLE_GRACE_S = 60.0
"""A lock file on an object store that cannot be parsed is abandoned once it is this old; before
that its creator may still be writing it. On a local disk it is abandoned at once (see the
module docstring)."""
BREAK_GRACE_S = 30.0
"""A ``.break`` file older than this was left by a process killed while taking over a lock."""

State = Literal["alive", "dead", "unknown"]


class LockHeld(ConnectorError):
    """Another run holds the lock (one writer per output and snapshot date); try again later."""

    retryable = True

    def __init__(self, message: str, holder: Owner | None = None) -> None:
        self.holder = holder
        super().__init__(message)


# -- who owns what ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a lock or a staging attempt."""

    run_id: str
    attempt: str
    host: str
    pid: int
    pid_started: int | None
    boot_id: str
    pid_namespace: str
    since: str
    expires_at: float | None
    """Epoch seconds after which the owner cannot be running any more (None: no deadline)."""

    @classmethod
    def me(cls, run_id: str, attempt: str, deadline_s: float = 0.0) -> Owner:
        """This process, for ``run_id``'s ``attempt``."""
        boot, namespace = machine.identity()
        now = time.time()
        return cls(
            run_id=run_id,
            attempt=attempt,
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_started=machine.process_start(os.getpid()),
            boot_id=boot,
            pid_namespace=namespace,
            since=datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            expires_at=now + deadline_s + EXPIRY_MARGIN_S if deadline_s > 0 else None,
        )

    def to_json(self) -> bytes:
        """The lock file's content."""
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Owner | None:
        """Parse a lock file; None when it is not one (empty, cut short, foreign)."""
        try:
            raw: Any = orjson.loads(data)
            return cls(
                run_id=str(raw["run_id"]),
                attempt=str(raw["attempt"]),
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                pid_started=None if raw.get("pid_started") is None else int(raw["pid_started"]),
                boot_id=str(raw.get("boot_id", "")),
                pid_namespace=str(raw.get("pid_namespace", "")),
                since=str(raw.get("since", "")),
                expires_at=None if raw.get("expires_at") is None else float(raw["expires_at"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def same_machine(self) -> bool:
        """Whether this owner's pid can be checked from here."""
        boot, namespace = machine.identity()
        return (
            self.host == socket.gethostname()
            and bool(self.boot_id)
            and self.boot_id == boot
            and self.pid_namespace == namespace
        )

    def state(self, now: float | None = None) -> State:
        """``dead`` when it certainly no longer runs, ``alive`` when it certainly does,
        ``unknown`` for a process on another machine before its expiry."""
        if self.expires_at is not None and (now or time.time()) > self.expires_at:
            return "dead"
        if (
            self.host == socket.gethostname()
            and self.boot_id
            and self.boot_id != machine.identity()[0]
        ):
            return "dead"  # this machine rebooted since
        if not self.same_machine():
            return "unknown"
        return "alive" if machine.pid_alive(self.pid, self.pid_started) else "dead"

    def describe(self) -> str:
        """For messages: run id, pid, host and since when."""
        return (
            f"run {self.run_id} (attempt {self.attempt}, pid {self.pid} on {self.host}, "
            f"since {self.since})"
        )


def new_attempt_id() -> str:
    """A unique name for one attempt's staging folder: two processes started with the same run
    id (a retry, a mistake) never write into the same folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-p{os.getpid()}-{secrets.token_hex(3)}"


def _read(fs: pafs.FileSystem, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path, compression=None) as stream:
            return bytes(stream.read())
    except (FileNotFoundError, OSError):
        return None


def _appears_whole(fs: pafs.FileSystem) -> bool:
    """Whether a lock file on ``fs`` is whole or absent, never being written: a local disk's
    (``storage.create_exclusive`` links a complete file into place). One that does not parse
    there is then dead, not in the making."""
    return isinstance(fs, pafs.LocalFileSystem)


def _age_s(fs: pafs.FileSystem, path: str) -> float:
    info = fs.get_file_info(path)
    if info.mtime is None:
        return 0.0
    return max(0.0, time.time() - info.mtime.timestamp())


class Lock:
    """An exclusive lock file (see the module docstring); ``with lock:`` holds it."""

    def __init__(self, fs: pafs.FileSystem, base: str, name: str, owner: Owner, what: str) -> None:
        self.fs = fs
        self.base = base
        self.path = layout.lock_file(base, name)
        self.owner = owner
        self.what = what
        self._data = owner.to_json()
        self.held = False

    def acquire(self) -> None:
        """Take the lock, taking over a dead owner's; ``LockHeld`` if someone alive has it."""
        for _ in range(5):
            if storage.create_exclusive(self.fs, self.path, self._data):
                self.held = True
                log.debug("lock.acquired", lock=self.path, run_id=self.owner.run_id)
                return
            seen = _read(self.fs, self.path)
            if seen is None:
                continue  # released between our create and our read: try again
            holder = Owner.from_json(seen)
            if holder is None:
                if not _appears_whole(self.fs) and _age_s(self.fs, self.path) < UNREADABLE_GRACE_S:
                    raise LockHeld(
                        f"{self.what} is being locked by another process right now "
                        f"({self.path}); try again in a minute"
                    )
            elif holder.state() != "dead":
                raise LockHeld(
                    f"{self.what} is being written by {holder.describe()}; this run stops "
                    f"rather than wait. If that process is gone for good, delete {self.path}",
                    holder,
                )
            self._break(seen, holder)
        raise LockHeld(f"{self.what}: could not take the lock {self.path} (contended)")

    def _break(self, seen: bytes, holder: Owner | None) -> bool:
        """Remove a dead owner's lock, unless it changed since we read it; whether it was."""
        breaker = self.path + ".break"
        if not storage.create_exclusive(self.fs, breaker, self._data):
            if _age_s(self.fs, breaker) > BREAK_GRACE_S:
                door.guarded_delete(self.fs, self.base, breaker)
            return False
        try:
            if _read(self.fs, self.path) != seen:
                return False
            door.guarded_delete(self.fs, self.base, self.path)
            log.warning(
                "lock.taken_over",
                lock=self.path,
                dead_owner=holder.describe() if holder else "unreadable lock file",
            )
            return True
        finally:
            door.guarded_delete(self.fs, self.base, breaker)

    def release(self) -> None:
        """Give the lock back (only if it is still ours)."""
        if not self.held:
            return
        self.held = False
        current = _read(self.fs, self.path)
        if current is None:
            return
        if current != self._data:
            log.warning("lock.lost", lock=self.path, run_id=self.owner.run_id)
            return
        door.guarded_delete(self.fs, self.base, self.path)
        folder = self.path.rsplit("/", 1)[0]
        # Both, whatever the first answers: on S3 another run may have taken the locks
        # folder's marker already, and the last one out removes ``_staging``'s.
        door.remove_empty_dir(self.fs, self.base, folder)
        door.remove_empty_dir(self.fs, self.base, folder.rsplit("/", 1)[0])

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def date_lock(fs: pafs.FileSystem, base: str, snapshot_date: str, owner: Owner) -> Lock:
    """The lock for publishing ``snapshot_date`` under ``base`` (one writer at a time)."""
    name = layout.date_lock_name(snapshot_date)
    return Lock(fs, base, name, owner, f"snapshot date {snapshot_date} of {base}")


def shard_lock(
    fs: pafs.FileSystem, base: str, run_id: str, index: int, count: int, owner: Owner
) -> Lock:
    """The lock for one shard of one run: two attempts of the same shard never run at once."""
    name = layout.shard_lock_name(run_id, index, count)
    return Lock(fs, base, name, owner, f"shard {index}/{count} of run {run_id} in {base}")


def remove_dead_locks(fs: pafs.FileSystem, base: str, asking: Owner) -> list[str]:
    """Remove the lock files whose owner certainly no longer runs; their names.

    The next run of a date takes over a dead owner's date lock, and a shard's next attempt its
    shard lock. A lock that nobody will ask for again stays otherwise: a shard's lock after its
    run was committed or given up, or the probe ``commit`` takes of each shard's lock, left by
    a process killed in the moment it held it. Owners that may still run (alive, or on another
    machine before their expiry) and, on an object store, files that do not parse (being
    uploaded right now, perhaps) are left; on a local disk such a file is dead, and so is a
    temporary file of a create killed before its link, once older than ``BREAK_GRACE_S``. A
    file that changed since it was read is not removed (``Lock._break``).
    """
    folder = layout.locks_folder(base)
    removed: list[str] = []
    whole = _appears_whole(fs)
    for entry in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        if entry.type != pafs.FileType.File:
            continue
        if whole and door.is_temporary(entry.path):
            # A create killed between its write and its link (or its clean-up).
            if _age_s(fs, entry.path) > BREAK_GRACE_S:
                door.discard_temporary(entry.path)
            continue
        if not entry.base_name.endswith(".lock"):
            continue
        seen = _read(fs, entry.path)
        if seen is None:
            continue
        holder = Owner.from_json(seen)
        if holder is None and not whole:
            continue  # an object store's: perhaps being uploaded right now
        if holder is not None and holder.state() != "dead":
            continue
        if Lock(fs, base, entry.base_name, asking, entry.base_name)._break(seen, holder):
            removed.append(entry.base_name)
    door.remove_empty_dir(fs, base, folder)
    door.remove_empty_dir(fs, base, folder.rsplit("/", 1)[0])
    return removed


# -- staging attempts -------------------------------------------------------------------------


def claim_attempt(fs: pafs.FileSystem, base: str, owner: Owner) -> str:
    """Create ``{base}/_staging/RUN_ID/ATTEMPT/`` with its owner file first; its path.

    The owner file lets the next start tell a dead attempt's leftovers (removed at once) from a
    live one's (left alone), instead of waiting days.
    """
    run = names.check_run_id(owner.run_id)
    folder = names.join(layout.staging_root(base), run, owner.attempt)
    fs.create_dir(folder, recursive=True)
    if not storage.create_exclusive(fs, f"{folder}/{layout.OWNER_FILE}", owner.to_json()):
        raise ConnectorError(f"staging attempt {folder} exists already")
    return folder


def attempt_owner(fs: pafs.FileSystem, folder: str) -> Owner | None:
    """The owner recorded in an attempt folder, if readable."""
    data = _read(fs, f"{folder}/{layout.OWNER_FILE}")
    return Owner.from_json(data) if data is not None else None
