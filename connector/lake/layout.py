"""Every name under ``output.uri``, and the one walker of staged attempts.

::

    images/snapshot_date=D/region=R/part-NNNNN.parquet    published data (what readers see)
    images/snapshot_date=D/_rejects/rejects-NNNNN.jsonl   records that could not be converted
    images/snapshot_date=D/_manifest.json                 written after the data
    images/snapshot_date=D/_SUCCESS (or _PARTIAL)         written last
    compartments/snapshot_date=D/…, changes/snapshot_date=D/…   published in the same commit
    _runs/RUN_ID.json                                     every run's record, failed ones too
    _staging/_locks/snapshot_date=D.lock                  one writer per date (``lake.lock``)
    _staging/RUN_ID/ATTEMPT/_owner.json                   who writes this attempt
    _staging/RUN_ID/ATTEMPT/{dataset}/snapshot_date=D/    one attempt's files until commit
    _staging/RUN_ID/commit-ATTEMPT/_commit.json           a commit's journal
    _staging/RUN_ID/shards/III-of-NNN.json                what each finished shard staged
    _staging/_probe-TOKEN                                 a write that checks output.uri (removed)
    _trash/RUN_ID/ATTEMPT/{dataset}/snapshot_date=D       a previous partition, mid-swap

Each attempt (a process running a run, a shard or a commit, even under a run id used before)
writes only below its own ``_staging/RUN_ID/ATTEMPT``, which no reader of the datasets looks at.
This module is the only one that builds paths under the output; it reads nothing but folder
listings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow.fs as pafs

from connector import names

STAGING = "_staging"
TRASH = "_trash"
RUNS = "_runs"
LOCKS = "_locks"
SHARDS = "shards"
OWNER_FILE = "_owner.json"
JOURNAL = "_commit.json"
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
PARTIAL = "_PARTIAL"
MARKERS = (SUCCESS, PARTIAL)
REJECTS = "_rejects"
PROBE_PREFIX = "_probe-"
"""A file written and removed before a run, to learn that the output is writable."""
COMMIT_PREFIX = "commit-"
"""A commit's attempt folder is ``commit-…``: it gathers the shards' files and journals."""

IMAGES = "images"
COMPANIONS = tuple(d for d in names.DATASETS if d != IMAGES)
"""The datasets published beside ``images`` in the same commit."""

_RUN_ID_TIME = re.compile(r"^(\d{8}T\d{6}Z)")


@dataclass(frozen=True, slots=True)
class Layout:
    """Paths of one attempt's staging area and of the partitions it publishes."""

    base: str
    run_id: str
    snapshot_date: str
    attempt: str = ""
    """The attempt's folder below the run's; "" puts the files in the run's folder itself
    (as manifests written before attempts existed say)."""

    def dataset_partition(self, dataset: str) -> str:
        """Where ``dataset``'s partition of the snapshot date is published."""
        return f"{self.base}/{dataset}/snapshot_date={self.snapshot_date}"

    @property
    def partition(self) -> str:
        """Where the published ``images`` partition lives."""
        return self.dataset_partition(IMAGES)

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

    def staged_dataset(self, dataset: str) -> str:
        """``dataset``'s partition as the attempt builds it."""
        return f"{self.staging}/{dataset}/snapshot_date={self.snapshot_date}"

    @property
    def staged_partition(self) -> str:
        """The ``images`` partition as the attempt builds it."""
        return self.staged_dataset(IMAGES)

    def trash(self, dataset: str = IMAGES) -> str:
        """Where a previous partition waits during a swap made of two renames."""
        attempt = self.attempt or "_"
        day = self.snapshot_date
        return f"{self.base}/{TRASH}/{self.run_id}/{attempt}/{dataset}/snapshot_date={day}"

    @property
    def shards(self) -> str:
        """The folder of the run's shard manifests."""
        return f"{self.run_staging}/{SHARDS}"

    def shard_manifest(self, index: int, count: int) -> str:
        """Where shard ``index`` of ``count`` records what it did."""
        return f"{self.shards}/{index:03d}-of-{count:03d}.json"

    @property
    def journal(self) -> str:
        """A commit attempt's journal."""
        return f"{self.staging}/{JOURNAL}"

    def run_record(self) -> str:
        """Where the run's record goes, whatever its end."""
        return run_record(self.base, self.run_id)

    def with_attempt(self, attempt: str) -> Layout:
        """The same run and date, another attempt's folder."""
        return Layout(self.base, self.run_id, self.snapshot_date, attempt)


def run_record(base: str, run_id: str) -> str:
    """Where ``_runs/RUN_ID.json`` lives."""
    return f"{base}/{RUNS}/{names.check_run_id(run_id)}.json"


def runs_folder(base: str) -> str:
    """The folder of every run's record."""
    return f"{base}/{RUNS}"


def staging_root(base: str) -> str:
    """``{base}/_staging``."""
    return f"{base}/{STAGING}"


def write_probe(base: str, token: str) -> str:
    """``{base}/_staging/_probe-TOKEN``: no walker of ``_staging`` takes it for a run."""
    return f"{base}/{STAGING}/{PROBE_PREFIX}{token}"


def trash_root(base: str) -> str:
    """``{base}/_trash``."""
    return f"{base}/{TRASH}"


def locks_folder(base: str) -> str:
    """Where the lock files live."""
    return f"{base}/{STAGING}/{LOCKS}"


def lock_file(base: str, name: str) -> str:
    """The path of lock ``name``."""
    return f"{locks_folder(base)}/{names.check_component(name)}"


def date_lock_name(snapshot_date: str) -> str:
    """The lock of one snapshot date (one writer at a time)."""
    return f"snapshot_date={names.check_snapshot_date(snapshot_date)}.lock"


def shard_lock_name(run_id: str, index: int, count: int) -> str:
    """The lock of one shard of one run."""
    return f"run={names.check_run_id(run_id)}.shard={index:03d}-of-{count:03d}.lock"


def dataset_root(base: str, dataset: str) -> str:
    """The folder of ``dataset``'s partitions."""
    return f"{base}/{dataset}"


def partition_of(base: str, dataset: str, snapshot_date: str) -> str:
    """A published partition."""
    return f"{base}/{dataset}/snapshot_date={names.check_snapshot_date(snapshot_date)}"


def table_data(base: str, dataset: str, snapshot_date: str) -> str:
    """Where an Iceberg table's data files of one date live (``data/snapshot_date=D/``)."""
    day = names.check_snapshot_date(snapshot_date)
    return f"{dataset_root(base, dataset)}/data/snapshot_date={day}"


def shard_prefixes(index: int, count: int) -> tuple[str, str]:
    """How the names of shard ``index`` of ``count``'s data and reject files begin; every
    shard's differ, so that a shard can remove its own files and no other's."""
    if count == 1:
        return "part-", "rejects-"
    return f"part-{index:03d}-", f"rejects-{index:03d}-"


def unique_name(relative: str, run_id: str) -> str:
    """``region=R/part-00000.parquet`` → ``region=R/part-00000-RUN_ID.parquet``: a file copied
    into a published partition never overwrites one that readers may be following."""
    folder, _, name = relative.rpartition("/")
    stem, dot, extension = name.partition(".")
    unique = f"{stem}-{run_id}{dot}{extension}"
    return f"{folder}/{unique}" if folder else unique


def run_started(run_id: str) -> float | None:
    """When a run started, from its id (``new_run_id`` puts the UTC time first); None if the
    id does not carry it."""
    match = _RUN_ID_TIME.match(run_id)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file or directory exists."""
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


# -- the one walker of _staging ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt's folder: ``_staging/RUN_ID/ATTEMPT``."""

    run_id: str
    name: str
    folder: str

    @property
    def is_commit(self) -> bool:
        """Whether a commit made it (and may hold a journal)."""
        return self.name.startswith(COMMIT_PREFIX)

    @property
    def journal(self) -> str:
        """Where its journal would be."""
        return f"{self.folder}/{JOURNAL}"

    @property
    def owner_file(self) -> str:
        """Where its owner is recorded."""
        return f"{self.folder}/{OWNER_FILE}"


def staged_runs(fs: pafs.FileSystem, base: str) -> list[str]:
    """The run ids that have a folder in ``_staging``."""
    entries = fs.get_file_info(pafs.FileSelector(staging_root(base), allow_not_found=True))
    return sorted(
        e.base_name
        for e in entries
        if e.type == pafs.FileType.Directory and names.RUN_ID.fullmatch(e.base_name)
    )


def attempts(fs: pafs.FileSystem, base: str, run_id: str | None = None) -> Iterator[Attempt]:
    """Every attempt folder of ``run_id`` (of every run when None)."""
    for run in [run_id] if run_id is not None else staged_runs(fs, base):
        folder = f"{staging_root(base)}/{run}"
        for entry in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            if entry.type == pafs.FileType.Directory and entry.base_name != SHARDS:
                yield Attempt(run, entry.base_name, entry.path)


def shard_manifests(fs: pafs.FileSystem, base: str, run_id: str) -> list[str]:
    """The paths of the run's shard manifests, in shard order."""
    folder = f"{staging_root(base)}/{run_id}/{SHARDS}"
    entries = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(
        e.path for e in entries if e.type == pafs.FileType.File and e.base_name.endswith(".json")
    )


def trashed_partitions(fs: pafs.FileSystem, base: str) -> Iterator[tuple[str, str, str]]:
    """(dataset, snapshot date, path) of every partition waiting in ``_trash`` (any depth)."""
    selector = pafs.FileSelector(trash_root(base), allow_not_found=True, recursive=True)
    for entry in fs.get_file_info(selector):
        if entry.type == pafs.FileType.Directory and names.PARTITION.fullmatch(entry.base_name):
            dataset = entry.path.rsplit("/", 2)[-2]
            day = entry.base_name.split("=", 1)[1]
            yield (dataset if dataset in names.DATASETS else IMAGES), day, entry.path
