"""One attempt's staging: claimed before anything is written, its shard manifest written at its
end (replacing an earlier attempt's of the same shard), and removed whole after a failure, with
the run's record saying why."""

from __future__ import annotations

import contextlib

import pyarrow as pa

from connector import logs, names
from connector._version import __version__
from connector.errors import ConnectorError
from connector.lake import committing, door, durable, housekeeping, layout, lock, rewrite, snapshots
from connector.lake.manifest import Manifest
from connector.lake.storage import Store
from connector.lake.tables import TableWriter
from connector.pages import WorkItem
from connector.sinks import FileInfo, SinkOptions
from connector.sinks.dataset import write_batches

Files = list[FileInfo]
"""Data or reject files a run staged, in order."""
Companions = dict[str, tuple[FileInfo, ...]]
"""The companion datasets' staged files, by dataset name."""

log = logs.get_logger("connector.lake.attempt")


class Staging:
    """The staging of one attempt of a run or of one shard (``layout.staging``)."""

    def __init__(
        self, store: Store, staged: layout.Layout, owner: lock.Owner, shard: tuple[int, int]
    ) -> None:
        self.store = store
        self.fs = store.fs
        self.layout = staged
        self.owner = owner
        self.shard = shard
        self.held: lock.Lock | None = None

    def acquire(self, whole_run: bool) -> lock.Lock:
        """Take the lock this attempt holds while it runs: its snapshot date's for a whole run
        (one writer per date), its shard's for one shard of a run. ``LockHeld`` if another
        live process has it."""
        fs, base, owner = self.fs, self.store.base, self.owner
        if whole_run:
            guard = lock.date_lock(fs, base, self.layout.snapshot_date, owner)
        else:
            guard = lock.shard_lock(fs, base, self.layout.run_id, *self.shard, owner)
        guard.acquire()
        self.held = guard
        return guard

    def release(self) -> None:
        """Give the lock back."""
        if self.held is not None:
            self.held.release()

    def begin(self, whole_run: bool, table: TableWriter | None) -> None:
        """Under the attempt's lock: put the output in order (``housekeeping.start``; a whole
        run holds its date), then claim the attempt's folder, its owner file first."""
        held = (self.layout.snapshot_date,) if whole_run else ()
        housekeeping.start(self.store, self.owner, held=held, table=table)
        lock.claim_attempt(self.fs, self.store.base, self.owner)
        log.info(
            "run.start",
            attempt_id=self.owner.attempt,
            snapshot_date=self.layout.snapshot_date,
            version=__version__,
        )

    def listing_pages(self) -> dict[WorkItem, int]:
        """How many pages each long listing took in the last snapshot (a hint for the fetch)."""
        return snapshots.listing_pages(self.fs, self.store.base)

    def drop_listings(
        self, files: list[FileInfo], rejects: list[FileInfo], failed: set[WorkItem]
    ) -> tuple[list[FileInfo], list[FileInfo]]:
        """The staged files without the rows of ``failed`` listings, which streamed to disk
        before they failed (a partial run that is still published)."""
        drop = {(item.region, item.compartment_id) for item in failed}
        partition = self.layout.staged_partition
        return (
            rewrite.drop_compartments(self.fs, partition, files, drop),
            rewrite.drop_compartments(self.fs, partition, rejects, drop),
        )

    def stage_dataset(
        self, name: str, table: pa.Table, options: SinkOptions
    ) -> tuple[FileInfo, ...]:
        """Write a companion dataset of this run (``compartments``) into its staging."""
        folder = self.layout.staged_dataset(name)
        return (write_batches(self.fs, folder, table.to_batches(), table.schema, options),)

    def write_shard_manifest(self, manifest: Manifest) -> None:
        """Record what this attempt staged; a previous attempt of the same shard, now replaced,
        is removed (only its own folder)."""
        path = self.layout.shard_manifest(*self.shard)
        previous: str | None = None
        if layout.exists(self.fs, path):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
                previous = durable.read_json(self.fs, path).get("attempt")
        durable.write_json(self.fs, path, manifest.as_dict())
        if previous and previous != self.owner.attempt and names.RUN_ID.fullmatch(previous):
            door.guarded_delete(
                self.fs, self.store.base, self.layout.with_attempt(previous).staging
            )

    def discard(self, whole_run: bool) -> None:
        """After a failure anywhere in the run: this attempt's files go, and so does a shard
        manifest that points to them (a whole run's; a shard's is only written at its end)."""
        try:
            path = self.layout.shard_manifest(*self.shard)
            if (
                whole_run
                and layout.exists(self.fs, path)
                and durable.read_json(self.fs, path).get("attempt") == self.owner.attempt
            ):
                door.guarded_delete(self.fs, self.store.base, path)
            self.remove()
        except (OSError, ValueError, ConnectorError) as exc:
            log.warning("staging.not_removed", path=self.layout.staging, reason=str(exc))

    def remove(self) -> None:
        """Remove this attempt's folder (and the run's and ``_staging`` if now empty)."""
        base = self.store.base
        door.guarded_delete(self.fs, base, self.layout.staging)
        door.remove_empty_dir(self.fs, base, self.layout.shards)
        door.remove_empty_dir(self.fs, base, self.layout.run_staging)
        door.remove_empty_dir(self.fs, base, layout.staging_root(base))

    def record_failure(self, manifest: Manifest, reason: str) -> None:
        """Leave ``_runs/RUN_ID.json`` (status failed, the reason, each listing's error); not
        when the lock was another run's, whose record it is to write."""
        if self.held is None:
            return
        document = committing.run_record(
            self.layout.run_id, self.layout.snapshot_date, manifest, "failed", False, reason
        )
        committing.write_record(self.fs, self.layout.run_record(), document)
