"""Staging and atomic publishing of one snapshot partition.

Layout under the output URI::

    images/snapshot_date=D/region=R/part-NNNNN.parquet    published data (what readers see)
    images/snapshot_date=D/_rejects/rejects-NNNNN.jsonl   records that could not be converted
    images/snapshot_date=D/_manifest.json                 written after the data
    images/snapshot_date=D/_SUCCESS (or _PARTIAL)         written last
    _runs/RUN_ID.json                                     every run's record, failed ones too
    _staging/_locks/snapshot_date=D.lock                  one writer per date (connector.lake.lock)
    _staging/RUN_ID/ATTEMPT/...                           one attempt's files until commit
    _staging/RUN_ID/shards/III-of-NNN.json                what each finished shard staged
    _trash/RUN_ID/ATTEMPT/images/snapshot_date=D          the previous partition, mid-swap

Each attempt (a process running a run or a shard, even under a run id used before) writes only
below its own ``_staging/RUN_ID/ATTEMPT``, which no reader of ``images/`` looks at. Commit
checks every file the shard manifests list (``connector.lake.verify``), gathers them into one
partition, writes the manifest and the marker, and swaps it in (``connector.lake.durable``). Every
deletion goes through ``connector.lake.door.guarded_delete``. On object stores, which cannot rename,
``connector.lake.objectstore`` publishes by copies and a manifest instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow.fs as pafs

from connector.errors import PublishError
from connector.lake import (
    door,
    durable,
    lock,
)

STAGING = door.STAGING
TRASH = door.TRASH
RUNS = "_runs"


@dataclass(frozen=True, slots=True)
class Layout:
    """Paths of one attempt's staging area and of the partition it publishes."""

    base: str
    run_id: str
    snapshot_date: str
    attempt: str = ""
    """The attempt's folder below the run's; "" puts the files in the run's folder itself
    (as manifests written before attempts existed say)."""

    @property
    def partition(self) -> str:
        """Where the published partition lives."""
        return f"{self.base}/images/snapshot_date={self.snapshot_date}"

    @property
    def run_staging(self) -> str:
        """Everything staged under this run id: attempts and shard manifests."""
        return f"{self.base}/{STAGING}/{self.run_id}"

    @property
    def staging(self) -> str:
        """The attempt's private staging root."""
        if not self.attempt:
            return self.run_staging
        return f"{self.run_staging}/{self.attempt}"

    @property
    def staged_partition(self) -> str:
        """The partition as the attempt builds it."""
        return f"{self.staging}/images/snapshot_date={self.snapshot_date}"

    @property
    def trash(self) -> str:
        """Where the previous partition waits during a swap made of two renames."""
        attempt = self.attempt or "_"
        day = self.snapshot_date
        return f"{self.base}/{TRASH}/{self.run_id}/{attempt}/images/snapshot_date={day}"

    def dataset_partition(self, dataset: str) -> str:
        """Where a dataset published beside ``images`` (``compartments`` ...) lives."""
        return f"{self.base}/{dataset}/snapshot_date={self.snapshot_date}"

    def staged_dataset(self, dataset: str) -> str:
        """That dataset's partition as the run builds it."""
        return f"{self.staging}/{dataset}/snapshot_date={self.snapshot_date}"

    def shard_manifest(self, index: int, count: int) -> str:
        """Where shard ``index`` of ``count`` records what it did."""
        return f"{self.run_staging}/shards/{index:03d}-of-{count:03d}.json"

    def run_record(self) -> str:
        """Where the run's record goes, whatever its end."""
        return f"{self.base}/{RUNS}/{self.run_id}.json"


def shard_prefixes(index: int, count: int) -> tuple[str, str]:
    """How the names of shard ``index`` of ``count``'s data and reject files begin; every
    shard's differ, so that a shard can remove its own files and no other's."""
    if count == 1:
        return "part-", "rejects-"
    return f"part-{index:03d}-", f"rejects-{index:03d}-"


def utc_now() -> str:
    """Now, as the manifest writes times."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json(fs: pafs.FileSystem, path: str, payload: Any) -> None:
    """Write a JSON document whole (on a local disk: temporary file, fsync, rename)."""
    durable.write_json(fs, path, payload)


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """Read a JSON document whole (on object stores a read torn by an overwrite is repeated)."""
    return durable.read_json(fs, path)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file or directory exists."""
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


RUN_ID_TIME = re.compile(r"^(\d{8}T\d{6}Z)")
STALE_STAGING_S = 7 * 86400


def run_started(run_id: str) -> float | None:
    """When a run started, from its id (``new_run_id`` puts the UTC time first); None if the
    id does not carry it."""
    match = RUN_ID_TIME.match(run_id)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def recover(
    fs: pafs.FileSystem, base: str, owner: lock.Owner | None = None, held: Iterable[str] = ()
) -> list[str]:
    """At each start: repair interrupted swaps, remove the staging of dead attempts and the
    locks of dead owners.

    Returns the partitions put back (``images/snapshot_date=D``). ``owner`` is who asks (for the
    date locks repair takes), ``held`` the dates it holds already. See ``connector.lake.durable``.
    Besides attempts whose owner is gone, a run's staging whose run id is over a week old goes
    too: its age comes from the id, never from a modification time, which object stores do not
    keep for folders (a shard left a week without its commit will not be committed).
    """
    asking = owner or lock.Owner.me("recover", lock.new_attempt_id())
    restored = durable.repair(fs, base, asking, held)
    durable.clean_dead_staging(fs, base)
    lock.remove_dead_locks(fs, base, asking)
    now = time.time()
    for run_dir in fs.get_file_info(pafs.FileSelector(f"{base}/{STAGING}", allow_not_found=True)):
        started = run_started(run_dir.base_name)
        if started is not None and now - started > STALE_STAGING_S:
            door.guarded_delete(fs, base, run_dir.path)
    remove_if_empty(fs, base, f"{base}/{STAGING}")
    return restored


def swap_in(fs: pafs.FileSystem, layout: Layout, staged: str | None = None) -> None:
    """Replace the published partition with the staged one (``staged``, default the layout's)."""
    source = staged or layout.staged_partition
    if not exists(fs, f"{source}/_SUCCESS") and not exists(fs, f"{source}/_PARTIAL"):
        raise PublishError(f"nothing committed to publish in {source}")
    try:
        if durable.is_local(fs):
            durable.swap_in(fs, layout.base, source, layout.partition, layout.trash)
        else:
            _move_in(fs, layout, source)
    except OSError as exc:
        raise PublishError(f"publishing {layout.partition} failed: {exc}") from None
    remove_if_empty(fs, layout.base, f"{layout.base}/{TRASH}")


def _move_in(fs: pafs.FileSystem, layout: Layout, source: str) -> None:
    """Where a folder cannot be renamed (object stores): the old partition is moved aside, the
    new one moved in; the manifest and marker, written last into it, say it is whole."""
    fs.create_dir(f"{layout.base}/images", recursive=True)
    if exists(fs, layout.partition):
        fs.create_dir(layout.trash.rsplit("/", 1)[0], recursive=True)
        fs.move(layout.partition, layout.trash)
    fs.move(source, layout.partition)
    door.guarded_delete(fs, layout.base, layout.trash)


def remove_if_empty(fs: pafs.FileSystem, base: str, path: str) -> None:
    """Remove ``_staging`` or ``_trash`` (or a folder in them) if nothing is left in it."""
    door.remove_empty_dir(fs, base, path)
