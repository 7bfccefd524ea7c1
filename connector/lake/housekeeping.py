"""What every run and every commit does first: leave the output as no dead process left it.

``start`` is the one entry; nothing else repairs, expires or removes leftovers. In order:

1. **interrupted swaps** (local disk): a partition in ``_trash`` whose published place is empty
   was moved aside by a swap that died between its two renames, and goes back; one whose place
   is filled is a finished swap's leftover, and goes;
2. **killed commits**: a commit's folder holding a journal whose owner is gone is finished (it
   had passed its commit point) or rolled back (``Publisher.recover``), for every snapshot date,
   each under its date's lock; a date another live process holds is left to it. Under a lock the
   caller holds, every journal of that date is a dead commit's;
3. **dead staging**: the attempts of processes that certainly no longer run are removed at once,
   as soon as their owner (pid and machine in ``_owner.json``) is known to be gone; finished
   shards of a sharded run wait for their ``commit``, for ``STALE_S`` at most;
4. **dead locks**: lock files whose owner certainly no longer runs;
5. **expired runs**: a run's staging whose run id is older than ``STALE_S``. Its age comes from
   the id; a run id that carries no time (``--run-id nightly``) is as old as the newest file
   in its folder (object stores keep a modification time for objects, not for folders).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs

from connector import logs
from connector.lake import door, durable, layout, lock
from connector.lake.publisher import COPY, JournaledCopy, LocalSwap, Publisher, read_journal
from connector.lake.storage import Store
from connector.lake.tables import TableWriter

log = logs.get_logger("connector.lake.housekeeping")

STALE_S = 7 * 86400
"""Finished shards whose run was never committed, and any run's staging, are kept this long
for a late ``commit``."""


def start(
    store: Store,
    owner: lock.Owner | None = None,
    *,
    held: Iterable[str] = (),
    table: TableWriter | None = None,
    now: float | None = None,
) -> list[str]:
    """Repair and clean the output (see the module docstring); the partitions put back.

    ``owner`` is who asks (for the date locks repairs take), ``held`` the snapshot dates it
    holds already, ``table`` the output's table writer (a killed table commit is looked up in
    the table).
    """
    owner = owner or lock.Owner.me("housekeeping", lock.new_attempt_id())
    held_dates = set(held)
    fs, base = store.fs, store.base
    restored = _repair_swaps(fs, base, owner, held_dates)
    _recover_commits(store, owner, held_dates, table)
    clean_dead_staging(fs, base, now=now)
    lock.remove_dead_locks(fs, base, owner)
    moment = now or time.time()
    for run_id in layout.staged_runs(fs, base):
        folder = f"{layout.staging_root(base)}/{run_id}"
        started = layout.run_started(run_id)
        if started is None:
            started = _newest_file(fs, folder)
        if started is not None and moment - started > STALE_S:
            door.guarded_delete(fs, base, folder)
        else:  # a run folder its attempts and shards have left
            door.remove_empty_dir(fs, base, f"{folder}/{layout.SHARDS}")
            door.remove_empty_dir(fs, base, folder)
    door.remove_empty_dir(fs, base, layout.staging_root(base))
    if restored:
        log.warning("publish.recovered", partitions=restored)
    return restored


def _newest_file(fs: pafs.FileSystem, folder: str) -> float | None:
    """The modification time of the newest file under ``folder`` (None if it has none): the
    age of a run whose id does not carry its start, which a live run keeps fresh."""
    try:
        found = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    except OSError:
        return None
    times = [
        info.mtime.timestamp()
        for info in found
        if info.type == pafs.FileType.File and info.mtime is not None
    ]
    return max(times, default=None)


def _under_date_lock(
    fs: pafs.FileSystem, base: str, day: str, owner: lock.Owner, held: set[str]
) -> contextlib.AbstractContextManager[Any]:
    if day in held:
        return contextlib.nullcontext()
    return lock.date_lock(fs, base, day, owner)


def _repair_swaps(fs: pafs.FileSystem, base: str, owner: lock.Owner, held: set[str]) -> list[str]:
    """Finish or undo swaps interrupted between their two renames (local disk only)."""
    restored: list[str] = []
    if not durable.is_local(fs):
        return restored
    for dataset, day, path in sorted(layout.trashed_partitions(fs, base)):
        published = layout.partition_of(base, dataset, day)
        try:
            with _under_date_lock(fs, base, day, owner, held):
                if not os.path.isdir(path):
                    continue
                if os.path.isdir(published):
                    door.guarded_delete(fs, base, path)
                else:
                    os.makedirs(published.rsplit("/", 1)[0], exist_ok=True)
                    os.rename(path, published)
                    durable.fsync_path(published.rsplit("/", 1)[0], directory=True)
                    restored.append(f"{dataset}/snapshot_date={day}")
                    log.warning("publish.restored", partition=published)
        except lock.LockHeld:
            continue
    _remove_empty_folders(fs, base, layout.trash_root(base))
    return restored


def _recover_commits(
    store: Store, owner: lock.Owner, held: set[str], table: TableWriter | None
) -> list[str]:
    """Finish or roll back every killed commit (a journal whose owner is gone); their run ids."""
    fs, base = store.fs, store.base
    repaired = []
    for attempt in list(layout.attempts(fs, base)):
        journal = read_journal(fs, attempt.folder)
        if journal is None:
            continue
        day = str(journal["snapshot_date"])
        if day not in held:
            recorded = lock.attempt_owner(fs, attempt.folder)
            if recorded is not None and recorded.state() != "dead":
                continue  # a commit that may still be running
        publisher: Publisher = (
            JournaledCopy(store, table) if journal["kind"] == COPY else LocalSwap(store)
        )
        try:
            with _under_date_lock(fs, base, day, owner, held):
                if read_journal(fs, attempt.folder) is None:
                    continue  # recovered meanwhile by the process we waited for
                publisher.recover(attempt.folder, journal)
        except lock.LockHeld:
            continue
        repaired.append(attempt.run_id)
    return repaired


def referenced_attempts(fs: pafs.FileSystem, base: str, run_id: str) -> dict[str, tuple[str, int]]:
    """The attempts that a finished shard of ``run_id`` points to: attempt → (the shard
    manifest's path, the run's shard count)."""
    found: dict[str, tuple[str, int]] = {}
    for path in layout.shard_manifests(fs, base, run_id):
        try:
            manifest = durable.read_json(fs, path)
            attempt = manifest["attempt"]
            count = int((manifest.get("shard") or {}).get("count", 1))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if isinstance(attempt, str):
            found[attempt] = (path, count)
    return found


def clean_dead_staging(fs: pafs.FileSystem, base: str, *, now: float | None = None) -> list[str]:
    """Remove the staging of attempts whose owner is gone; returns what was removed.

    Kept: attempts whose owner may still run (alive, or on another machine before its expiry),
    and the finished shards of a sharded run, which wait for ``commit`` (for ``STALE_S`` at
    most; a retried shard replaces its own). A whole run (one shard) commits itself: if its
    owner died, nobody will, and it goes with its manifest. An attempt folder with no readable
    owner file is removed once a minute old (its process died before writing it, or a
    straggler wrote into it after its owner removed it); on object stores, which keep no folder
    times, its age is its newest file's. A dead commit's folder that still holds its journal is
    left to ``_recover_commits`` (it could not take the date's lock this time).
    """
    moment = now or time.time()
    removed: list[str] = []
    by_run: dict[str, dict[str, tuple[str, int]]] = {}
    for attempt in list(layout.attempts(fs, base)):
        run_id, folder = attempt.run_id, attempt.folder
        if run_id not in by_run:
            by_run[run_id] = referenced_attempts(fs, base, run_id)
        info = fs.get_file_info(folder)
        changed = info.mtime.timestamp() if info.mtime else None
        owner = lock.attempt_owner(fs, folder)
        if owner is None and changed is None:
            changed = _newest_object(fs, folder)  # object stores keep no folder times
        age = moment - changed if changed is not None else 0.0
        dead = (
            owner.state(moment) == "dead"
            if owner is not None
            else changed is not None and age > lock.UNREADABLE_GRACE_S
        )
        referenced = by_run[run_id].get(attempt.name)
        if referenced is not None:
            manifest, count = referenced
            if count > 1 and age <= STALE_S:
                continue
            if count > 1 or dead:
                door.guarded_delete(fs, base, manifest)
                door.guarded_delete(fs, base, folder)
                del by_run[run_id][attempt.name]
                removed.append(f"{run_id}/{attempt.name}")
            continue
        if dead:
            if layout.exists(fs, attempt.journal):
                continue
            door.guarded_delete(fs, base, folder)
            removed.append(f"{run_id}/{attempt.name}")
    for run_id in by_run:
        run_dir = f"{layout.staging_root(base)}/{run_id}"
        door.remove_empty_dir(fs, base, f"{run_dir}/{layout.SHARDS}")
        door.remove_empty_dir(fs, base, run_dir)
    if removed:
        log.info("staging.cleaned", folders=removed)
    return removed


def _newest_object(fs: pafs.FileSystem, folder: str) -> float | None:
    """When the newest file below ``folder`` was written (epoch seconds); None if none is."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    times = [i.mtime.timestamp() for i in fs.get_file_info(selector) if i.mtime is not None]
    return max(times, default=None)


def _remove_empty_folders(fs: pafs.FileSystem, base: str, root: str) -> None:
    """Remove empty folders below ``root`` and ``root`` itself (local disk only)."""
    if not durable.is_local(fs) or not os.path.isdir(root):
        return
    for folder, _dirs, _files in os.walk(root, topdown=False):
        door.remove_empty_dir(fs, base, folder)
