"""Publishing a snapshot date: every dataset of the date (``images`` and its companions,
``compartments`` and ``changes``) behind one commit point, recoverably.

A commit gathers its files under its own attempt folder (``_staging/RUN_ID/commit-…/{dataset}/
snapshot_date=D/``) and hands the images manifest to a ``Publisher``, chosen once from the store:

**``LocalSwap``** (plain files on a local disk, where a folder renames atomically). Each staged
partition gets its manifest and marker (fsynced), a journal names the run and the datasets, then
the ``images`` partition is swapped in (``durable.swap_in``: one ``renameat2(RENAME_EXCHANGE)``):
that is the commit point. The companions are swapped in right after it. A commit killed before
the commit point changed nothing a reader sees; one killed after it is rolled forward by the
next start (``recover``), which swaps in the companions still staged.

**``JournaledCopy``** (object stores, which cannot rename; and Delta or Iceberg tables on any
store). In this order:

1. the journal ``_staging/RUN_ID/commit-ATTEMPT/_commit.json``: for every dataset, the files
   it adds and the files and markers of the partition it replaces;
2. every dataset's staged files are copied into its partition, server-side, under names that
   carry the run id (``region=R/part-00000-RUN_ID.parquet``), so they never overwrite a
   published file; with a table, the ``images`` rows go into the table in its one commit;
3. the ``images`` ``_manifest.json``, listing exactly its files: one upload, the commit point;
4. the companions' manifests, then every marker (``_SUCCESS``, or ``_PARTIAL`` for a published
   partial run), strictly after their manifests;
5. the previous run's files of every dataset, as its manifest listed them, go through the
   deletion door as superseded files, then the commit's folder.

A reader that follows a manifest sees the old run's files or the new run's, never a mix. A bare
glob over a partition sees both runs' files between steps 2 and 5; a killed commit's copies stay
only until the next start of any run or commit on the output (``recover``). ``recover`` finishes
a commit that passed its commit point (steps 4-5 again) and rolls back one that did not (its
copies deleted, a deleted marker put back, the table's uncommitted files discarded). Every step
of both is idempotent, so a recovery that is itself killed is repaired by the next one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol

import pyarrow.fs as pafs

from connector import logs
from connector.errors import PublishError
from connector.lake import door, durable, layout
from connector.lake.layout import Layout
from connector.lake.manifest import Manifest, read_document
from connector.lake.storage import Store
from connector.lake.tables import TableWriter
from connector.sinks import FileInfo

log = logs.get_logger("connector.lake.publisher")

SWAP = "swap"
COPY = "copy"


class Publisher(Protocol):
    """Makes a commit's staged datasets the published ones, and repairs a killed commit."""

    def publish(self, staged: Layout, manifest: Manifest) -> Manifest:
        """Publish the datasets staged under ``staged`` (the commit's attempt) as ``manifest``
        says (``files``, ``reject_files`` and ``datasets``, relative to each staged partition);
        the images manifest as published."""

    def recover(self, folder: str, journal: Mapping[str, Any]) -> bool:
        """Finish or roll back the commit journaled in ``folder`` (its owner is gone); whether
        it had passed its commit point."""


def for_store(store: Store, table: TableWriter | None) -> Publisher:
    """The one publisher for this output: a swap on a local disk, journaled copies elsewhere
    and for tables."""
    if store.is_local and table is None:
        return LocalSwap(store)
    return JournaledCopy(store, table)


def read_journal(fs: pafs.FileSystem, folder: str) -> dict[str, Any] | None:
    """The journal in a commit's folder, or None where there is none.

    A journal written before companions shared the commit (no ``kind``: one partition's copies)
    is read as a copy journal of ``images`` alone.
    """
    try:
        document: dict[str, Any] = durable.read_json(fs, f"{folder}/{layout.JOURNAL}")
    except FileNotFoundError:
        return None
    if "kind" in document:
        return document
    manifest = document["manifest"]
    return {
        "kind": COPY,
        "run_id": document["run_id"],
        "snapshot_date": manifest["snapshot_date"],
        "table_format": document.get("table_format"),
        "manifest": manifest,
        "datasets": {
            layout.IMAGES: {
                "partition": document["partition"],
                "files": document["files"],
                "marker": document["marker"],
                "document": None,
                "previous": document["previous"],
            }
        },
    }


def marker_of(manifest: Manifest) -> str:
    """``_PARTIAL`` for a published partial run, ``_SUCCESS`` otherwise."""
    return layout.PARTIAL if manifest.failed else layout.SUCCESS


def companion_document(
    run_id: str, snapshot_date: str, name: str, files: Iterable[FileInfo]
) -> dict[str, Any]:
    """The ``_manifest.json`` of a companion dataset's partition."""
    listed = list(files)
    return {
        "run_id": run_id,
        "snapshot_date": snapshot_date,
        "dataset": name,
        "rows": sum(f.rows for f in listed),
        "files": [{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in listed],
    }


def listed(document: Mapping[str, Any] | None) -> list[str]:
    """Every file a manifest publishes, data and rejects, relative to its partition."""
    if not document:
        return []
    return [
        str(f["path"])
        for key in ("files", "reject_files")
        for f in document.get(key, [])
        if isinstance(f, Mapping) and "path" in f
    ]


def _committed(fs: pafs.FileSystem, partition: str, run_id: str) -> bool:
    """Whether ``partition``'s manifest names ``run_id``."""
    current = read_document(fs, partition)
    return current is not None and current.get("run_id") == run_id


class LocalSwap:
    """Plain files on a local disk: each dataset's partition swapped in whole."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fs = store.fs

    def publish(self, staged: Layout, manifest: Manifest) -> Manifest:
        fs = self.fs
        companions = sorted(manifest.datasets)
        for name in companions:
            folder = staged.staged_dataset(name)
            document = companion_document(
                staged.run_id, staged.snapshot_date, name, manifest.datasets[name]
            )
            durable.write_json(fs, f"{folder}/{layout.MANIFEST}", document)
            durable.write_durably(fs, f"{folder}/{layout.SUCCESS}", b"")
        target = staged.staged_partition
        durable.write_json(fs, f"{target}/{layout.MANIFEST}", manifest.as_dict())
        durable.write_durably(fs, f"{target}/{marker_of(manifest)}", b"")
        journal = {
            "kind": SWAP,
            "run_id": staged.run_id,
            "snapshot_date": staged.snapshot_date,
            "datasets": companions,
        }
        durable.write_json(fs, staged.journal, journal)
        try:
            self._swap(staged, layout.IMAGES)  # the commit point
        except OSError as exc:
            raise PublishError(f"publishing {staged.partition} failed: {exc}") from None
        self._finish(staged.staging, journal)
        return manifest

    def recover(self, folder: str, journal: Mapping[str, Any]) -> bool:
        run_id, day = str(journal["run_id"]), str(journal["snapshot_date"])
        committed = _committed(self.fs, layout.partition_of(self.store.base, "images", day), run_id)
        if committed:
            log.warning("publish.finishing", run_id=run_id, snapshot_date=day)
            self._finish(folder, journal)
        else:
            log.warning("publish.rolling_back", run_id=run_id, snapshot_date=day)
            door.guarded_delete(self.fs, self.store.base, folder)
        return committed

    def _finish(self, folder: str, journal: Mapping[str, Any]) -> None:
        """After the commit point: the companions still staged are swapped in, then the
        commit's folder goes (with the journal, and the partitions the swaps replaced)."""
        run_id, day = str(journal["run_id"]), str(journal["snapshot_date"])
        staged = Layout(self.store.base, run_id, day, folder.rsplit("/", 1)[1])
        try:
            for name in journal.get("datasets", []):
                if not _committed(self.fs, staged.dataset_partition(name), run_id):
                    self._swap(staged, str(name))
        except OSError as exc:
            raise PublishError(
                f"{staged.partition} is published; publishing its companions failed ({exc}); "
                "the next run finishes it"
            ) from None
        door.guarded_delete(self.fs, self.store.base, folder)
        door.remove_empty_dir(self.fs, self.store.base, layout.trash_root(self.store.base))

    def _swap(self, staged: Layout, dataset: str) -> None:
        source = staged.staged_dataset(dataset)
        if not layout.exists(self.fs, source):
            return  # swapped in already, by a commit or recovery killed after this step
        durable.swap_in(
            self.fs,
            self.store.base,
            source,
            staged.dataset_partition(dataset),
            staged.trash(dataset),
        )


class JournaledCopy:
    """Object stores and tables: copies under run-unique names, then the manifest."""

    def __init__(self, store: Store, table: TableWriter | None) -> None:
        self.store = store
        self.fs = store.fs
        self.table = table

    def publish(self, staged: Layout, manifest: Manifest) -> Manifest:
        fs, run_id = self.fs, staged.run_id
        previous = read_document(fs, staged.partition)
        if previous is not None and previous.get("run_id") == run_id:
            return Manifest.from_dict(previous)  # this very commit, finished by recovery
        copied = ("reject_files",) if self.table else ("files", "reject_files")
        renamed = replace(
            manifest,
            files=_renamed(manifest.files, run_id) if self.table is None else (),
            reject_files=_renamed(manifest.reject_files, run_id),
            datasets={n: _renamed(f, run_id) for n, f in manifest.datasets.items()},
        )
        entries: dict[str, dict[str, Any]] = {}
        for name in (layout.IMAGES, *sorted(manifest.datasets)):
            partition = staged.dataset_partition(name)
            if name == layout.IMAGES:
                sources = [f.path for key in copied for f in getattr(manifest, key)]
                targets = [f.path for key in copied for f in getattr(renamed, key)]
                marker = marker_of(manifest)
                document = None
                old = previous
            else:
                sources = [f.path for f in manifest.datasets[name]]
                targets = [f.path for f in renamed.datasets[name]]
                marker = layout.SUCCESS
                document = companion_document(
                    run_id, staged.snapshot_date, name, renamed.datasets[name]
                )
                old = read_document(fs, partition)
            entries[name] = {
                "partition": partition,
                "sources": sources,
                "files": targets,
                "marker": marker,
                "document": document,
                "previous": {
                    "run_id": old.get("run_id") if old else None,
                    "files": listed(old),
                    "markers": [m for m in layout.MARKERS if layout.exists(fs, f"{partition}/{m}")],
                },
            }
        journal: dict[str, Any] = {
            "kind": COPY,
            "run_id": run_id,
            "snapshot_date": staged.snapshot_date,
            "table_format": self.table.format if self.table else None,
            "manifest": renamed.as_dict(),
            "table_counts": {"rows": manifest.rows, "files": len(manifest.files)},
            "datasets": entries,
        }
        images = entries[layout.IMAGES]
        try:
            durable.write_json(fs, staged.journal, journal)
            for name, entry in entries.items():
                root = staged.staged_dataset(name)
                for source, target in zip(entry["sources"], entry["files"], strict=True):
                    destination = f"{entry['partition']}/{target}"
                    if self.store.is_local:  # object stores need no folders
                        fs.create_dir(destination.rpartition("/")[0], recursive=True)
                    fs.copy_file(f"{root}/{source}", destination)
            for stale in images["previous"]["markers"]:
                if stale != images["marker"]:
                    self._delete(images["partition"], [stale])
            if self.table is not None:
                data = [f"{staged.staged_partition}/{f.path}" for f in manifest.files]
                committed = self.table.commit(run_id, staged.snapshot_date, data)
                renamed = replace(renamed, table={**committed, **journal["table_counts"]})
                journal["manifest"] = renamed.as_dict()
            durable.write_json(fs, f"{images['partition']}/{layout.MANIFEST}", journal["manifest"])
        except OSError as exc:
            raise PublishError(f"publishing {staged.partition} failed: {exc}") from None
        self._finish(staged.staging, journal)
        return renamed

    def recover(self, folder: str, journal: Mapping[str, Any]) -> bool:
        run_id = str(journal["run_id"])
        entries: Mapping[str, Any] = journal["datasets"]
        images = entries[layout.IMAGES]
        committed = _committed(self.fs, images["partition"], run_id)
        table = self.table if journal.get("table_format") == self._format else None
        if not committed and table is not None:
            found = table.find(run_id)
            if found is not None:
                counts = journal.get("table_counts", {})
                recorded = Manifest.from_dict(journal["manifest"])
                document = replace(recorded, table={**found, **counts}).as_dict()
                durable.write_json(self.fs, f"{images['partition']}/{layout.MANIFEST}", document)
                committed = True
        if committed:
            log.warning("publish.finishing", run_id=run_id, partition=images["partition"])
            self._finish(folder, journal)
            return True
        log.warning("publish.rolling_back", run_id=run_id, partition=images["partition"])
        if table is not None:
            table.discard(run_id, str(journal["snapshot_date"]))
        for entry in entries.values():
            keep = set(entry["previous"]["files"])
            self._delete(entry["partition"], [p for p in entry["files"] if p not in keep])
            for marker in entry["previous"]["markers"]:
                if not layout.exists(self.fs, f"{entry['partition']}/{marker}"):
                    self._touch(f"{entry['partition']}/{marker}")
        door.guarded_delete(self.fs, self.store.base, folder)
        return False

    @property
    def _format(self) -> str | None:
        return self.table.format if self.table else None

    def _finish(self, folder: str, journal: Mapping[str, Any]) -> None:
        """After the commit point: companions' manifests, every marker, the superseded files
        of every dataset, then the commit's folder."""
        run_id = str(journal["run_id"])
        entries: Mapping[str, Any] = journal["datasets"]
        try:
            for name, entry in entries.items():
                partition = entry["partition"]
                if name != layout.IMAGES and not _committed(self.fs, partition, run_id):
                    durable.write_json(self.fs, f"{partition}/{layout.MANIFEST}", entry["document"])
                stale = [m for m in layout.MARKERS if m != entry["marker"]]
                self._delete(partition, stale)
                self._touch(f"{partition}/{entry['marker']}")
            for entry in entries.values():
                keep = set(entry["files"])
                self._delete(
                    entry["partition"], [p for p in entry["previous"]["files"] if p not in keep]
                )
            door.guarded_delete(self.fs, self.store.base, folder)
        except OSError as exc:
            raise PublishError(
                f"{entries[layout.IMAGES]['partition']} is published; removing what it replaced "
                f"failed ({exc}); the next run finishes it"
            ) from None

    def _touch(self, path: str) -> None:
        with self.fs.open_output_stream(path, compression=None):
            pass

    def _delete(self, partition: str, relative: Iterable[str]) -> None:
        """Files of a published partition that no manifest in force lists (superseded by the
        new run, or copies of a commit rolled back), through the deletion door."""
        paths = frozenset(f"{partition}/{p}" for p in relative)
        if not paths:
            return
        superseded = door.Superseded(partition, paths)
        for path in sorted(paths):
            door.guarded_delete(self.fs, self.store.base, path, superseded=superseded)


def _renamed(files: Iterable[FileInfo], run_id: str) -> tuple[FileInfo, ...]:
    return tuple(FileInfo(layout.unique_name(f.path, run_id), f.rows, f.bytes) for f in files)
