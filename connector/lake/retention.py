"""``output.keep_days``: after a successful commit, old dates go, through the deletion door.

A run of snapshot date D with ``keep_days = K`` keeps the dates from D - K on. Every older
partition of every dataset (``images``, ``compartments``, ``changes``) is deleted whole, each
date under its own lock (a date another process holds is skipped, and expires at a later run),
and so are the ``_runs/`` records of older dates. ``door.Expiry`` is the rule each deletion must
pass: never the newest complete snapshot of ``images``, never a date with a lock the pruning
commit does not hold.

With a table format, a date's rows are deleted from the table first, by the table's own commit
(Delta: ``DELETE`` with the date's predicate; Iceberg: a delete snapshot), then the date's
manifest folders; the table's data files stay for time travel until ``VACUUM`` (Delta) or
``expire_snapshots`` (Iceberg) removes them. A date whose table delete fails keeps its folders,
so that what ``snapshots`` lists and what the table holds agree.

Pruning runs after the commit point: a failure here is logged, and changes nothing the run
published.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pyarrow.fs as pafs

from connector import logs, names
from connector.errors import ConnectorError
from connector.lake import door, durable, layout, lock
from connector.lake.storage import Store
from connector.lake.tables import TableWriter

log = logs.get_logger("connector.lake.retention")


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one pruning removed, and the dates it had to leave."""

    keep_from: str
    dates: tuple[str, ...] = ()
    records: int = 0
    skipped: tuple[str, ...] = ()
    """Expired dates left in place: the newest complete snapshot, or a date in use."""


def keep_from(snapshot_date: str, keep_days: int) -> str:
    """The oldest date ``keep_days`` keeps for a run of ``snapshot_date``."""
    day = date.fromisoformat(names.check_snapshot_date(snapshot_date))
    return (day - timedelta(days=keep_days)).isoformat()


def prune(
    store: Store,
    snapshot_date: str,
    keep_days: int,
    owner: lock.Owner,
    *,
    run_id: str,
    table: TableWriter | None = None,
) -> Pruned:
    """Delete what ``keep_days`` expires for a run of ``snapshot_date`` (nothing when 0)."""
    if keep_days <= 0:
        return Pruned(snapshot_date)
    fs, base = store.fs, store.base
    oldest = keep_from(snapshot_date, keep_days)
    expired = sorted(
        {day for dataset in names.DATASETS for day in _dates(fs, base, dataset) if day < oldest}
    )
    removed: list[str] = []
    skipped: list[str] = []
    for day in expired:
        try:
            with lock.date_lock(fs, base, day, owner):
                rule = door.expiry(fs, base, oldest, held=(day,))
                if day == rule.newest_complete:
                    skipped.append(day)
                    continue
                if table is not None and layout.exists(
                    fs, layout.partition_of(base, "images", day)
                ):
                    table.expire(run_id, day)
                for dataset in names.DATASETS:
                    partition = layout.partition_of(base, dataset, day)
                    if layout.exists(fs, partition):
                        door.guarded_delete(fs, base, partition, expired=rule)
                removed.append(day)
        except lock.LockHeld:
            skipped.append(day)
    records = _prune_records(fs, base, door.expiry(fs, base, oldest))
    pruned = Pruned(oldest, tuple(removed), records, tuple(skipped))
    if removed or records or skipped:
        log.info(
            "retention.pruned",
            keep_from=oldest,
            dates=list(removed),
            records=records,
            skipped=list(skipped),
        )
    return pruned


def prune_quietly(
    store: Store,
    snapshot_date: str,
    keep_days: int,
    owner: lock.Owner,
    *,
    run_id: str,
    table: TableWriter | None = None,
) -> Pruned | None:
    """``prune`` after a commit point: its failure is logged, never raised over a published
    run (the next run prunes again)."""
    try:
        return prune(store, snapshot_date, keep_days, owner, run_id=run_id, table=table)
    except (OSError, ConnectorError) as exc:
        log.error("retention.failed", reason=str(exc))
        return None


def _dates(fs: pafs.FileSystem, base: str, dataset: str) -> list[str]:
    """The dates of ``dataset``'s partition folders, published or not."""
    root = layout.dataset_root(base, dataset)
    return [
        entry.base_name.split("=", 1)[1]
        for entry in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if entry.type == pafs.FileType.Directory and names.PARTITION.fullmatch(entry.base_name)
    ]


def _prune_records(fs: pafs.FileSystem, base: str, rule: door.Expiry) -> int:
    """Delete the run records of dates before ``rule.keep_from``; how many went."""
    folder = layout.runs_folder(base)
    count = 0
    for entry in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        run_id = entry.base_name.removesuffix(".json")
        valid = names.RUN_ID.fullmatch(run_id) and ".." not in run_id
        if entry.type != pafs.FileType.File or not entry.base_name.endswith(".json") or not valid:
            continue
        try:
            day = names.check_snapshot_date(durable.read_json(fs, entry.path)["snapshot_date"])
        except (OSError, ValueError, KeyError, TypeError, ConnectorError):
            continue
        if day < rule.keep_from:
            door.guarded_delete(fs, base, layout.run_record(base, run_id), expired=rule)
            count += 1
    return count
