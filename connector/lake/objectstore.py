"""Publishing a partition on a store that cannot rename (S3, OCI Object Storage, GCS, Azure).

A directory "move" on an object store is a copy of every object followed by deletes, in no
useful order: killed halfway, it leaves a partition that is neither the old one nor the new
one. So nothing is moved. Each commit, in this order:

1. writes a journal, ``_staging/RUN_ID/commit-ATTEMPT/_commit.json``: the files it will add,
   the files and the marker of the partition it replaces;
2. copies its staged files into the partition, server-side, under names that carry the run
   id (``region=R/part-00000-RUN_ID.parquet``), so they never overwrite a published file;
3. deletes the previous marker if the new one differs (``_SUCCESS`` → ``_PARTIAL``);
4. writes ``_manifest.json``, listing exactly those files: one upload, the commit point;
5. writes ``_SUCCESS`` (or ``_PARTIAL``), strictly last;
6. deletes the previous run's files, as the previous manifest listed them, and the staging.

A reader that follows ``_manifest.json`` sees the old run's files or the new run's, never a
mix, and ``_SUCCESS`` never stands beside an empty partition. A bare glob over the partition
sees both runs' files between steps 2 and 6 (the README says so and points to Delta/Iceberg).

``recover`` finishes or rolls back a commit that was killed: when the published manifest is
the journal's run, the commit passed its commit point and steps 5-6 are redone; otherwise the
copies are deleted and a deleted marker is put back. Both are idempotent, so a recovery that
is itself killed is repaired by the next one. The clean-up of dead attempts at each start
leaves a folder holding a journal alone (``connector.lake.durable``): without its journal, a killed
commit's copies, or the files it superseded, would stay in the partition for good.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs
import structlog

from connector.errors import PublishError
from connector.lake import (
    door,
    durable,
    lock,
    publish,
)
from connector.lake.tables import TableWriter

log = structlog.get_logger("connector.lake.objectstore")

JOURNAL = durable.JOURNAL
MANIFEST = "_manifest.json"
MARKERS = ("_SUCCESS", "_PARTIAL")


def unique_name(relative: str, run_id: str) -> str:
    """``region=R/part-00000.parquet`` → ``region=R/part-00000-RUN_ID.parquet``."""
    folder, _, name = relative.rpartition("/")
    stem, dot, extension = name.partition(".")
    unique = f"{stem}-{run_id}{dot}{extension}"
    return f"{folder}/{unique}" if folder else unique


def marker_of(manifest: dict[str, Any]) -> str:
    """``_PARTIAL`` for a published partial run, ``_SUCCESS`` otherwise."""
    return "_PARTIAL" if manifest.get("status") == "partial" else "_SUCCESS"


def listed(manifest: dict[str, Any]) -> list[str]:
    """Every file a manifest publishes, data and rejects, relative to the partition."""
    return [f["path"] for key in ("files", "reject_files") for f in manifest.get(key, [])]


def published_manifest(fs: pafs.FileSystem, partition: str) -> dict[str, Any] | None:
    """The partition's manifest, or None when nothing is published there."""
    try:
        manifest: dict[str, Any] = publish.read_json(fs, f"{partition}/{MANIFEST}")
    except FileNotFoundError:
        return None
    return manifest


def publish_partition(
    fs: pafs.FileSystem,
    layout: publish.Layout,
    manifest: dict[str, Any],
    partition: str,
    table: TableWriter | None = None,
) -> dict[str, Any]:
    """Publish the staged files of ``manifest`` into ``partition``; the manifest as published.

    ``manifest`` lists files relative to ``layout.staged_partition``; the published manifest
    lists their run-unique names. With a ``table``, the data files go into the table, in its
    one commit between the copies and the manifest, and only the rejects are copied.
    """
    run_id = layout.run_id
    recover(fs, layout.base, partition, table)
    previous = published_manifest(fs, partition)
    if previous is not None and previous.get("run_id") == run_id:
        return previous  # this very commit, killed after its commit point and just finished
    renamed: dict[str, Any] = dict(manifest)
    copied = ("reject_files",) if table else ("files", "reject_files")
    for key in ("files", "reject_files"):
        renamed[key] = [
            dict(entry, path=unique_name(entry["path"], run_id))
            for entry in (manifest.get(key, []) if key in copied else [])
        ]
    marker = marker_of(manifest)
    journal: dict[str, Any] = {
        "run_id": run_id,
        "partition": partition,
        "files": listed(renamed),
        "marker": marker,
        "table_format": table.format if table else None,
        "manifest": renamed,
        "previous": {
            "run_id": previous.get("run_id") if previous else None,
            "files": listed(previous) if previous else [],
            "markers": [m for m in MARKERS if publish.exists(fs, f"{partition}/{m}")],
        },
    }
    sources = [f["path"] for key in copied for f in manifest.get(key, [])]
    try:
        publish.write_json(fs, f"{layout.staging}/{JOURNAL}", journal)
        for source, target in zip(sources, journal["files"], strict=True):
            destination = f"{partition}/{target}"
            if isinstance(fs, pafs.LocalFileSystem):  # object stores need no folders
                fs.create_dir(destination.rpartition("/")[0], recursive=True)
            fs.copy_file(f"{layout.staged_partition}/{source}", destination)
        for stale in journal["previous"]["markers"]:
            if stale != marker:
                _delete(fs, [f"{partition}/{stale}"])
        if table is not None:
            data = [f"{layout.staged_partition}/{f['path']}" for f in manifest.get("files", [])]
            renamed["table"] = table.commit(run_id, layout.snapshot_date, data)
        publish.write_json(fs, f"{partition}/{MANIFEST}", renamed)
    except OSError as exc:
        raise PublishError(f"publishing {partition} failed: {exc}") from None
    _finish(fs, layout.staging, journal)
    return renamed


def recover(
    fs: pafs.FileSystem, base: str, partition: str, table: TableWriter | None = None
) -> list[str]:
    """Finish or roll back the killed commits into ``partition``; the run ids repaired.

    Only journals of ``partition`` are looked at: other dates may have live writers. A
    journal of a table commit is finished when the table holds that run's commit (``table``
    finds it) even if the manifest was not written yet.
    """
    repaired = []
    for folder in sorted(_journal_folders(fs, base)):
        try:
            journal: dict[str, Any] = publish.read_json(fs, f"{folder}/{JOURNAL}")
        except FileNotFoundError:
            continue
        if journal["partition"] != partition:
            continue
        run_id = journal["run_id"]
        current = published_manifest(fs, partition)
        committed = current is not None and current.get("run_id") == run_id
        if not committed and table is not None and journal["table_format"] == table.format:
            found = table.find(run_id)
            if found is not None:
                publish.write_json(
                    fs, f"{partition}/{MANIFEST}", dict(journal["manifest"], table=found)
                )
                committed = True
        if committed:
            log.warning("publish.finishing", run_id=run_id, partition=partition)
            _finish(fs, folder, journal)
        else:
            log.warning("publish.rolling_back", run_id=run_id, partition=partition)
            if table is not None and journal["table_format"] == table.format:
                table.discard(run_id, journal["manifest"]["snapshot_date"])
            _roll_back(fs, base, folder, journal)
        repaired.append(str(run_id))
    return repaired


def _journal_folders(fs: pafs.FileSystem, base: str) -> list[str]:
    """Every folder of ``_staging`` that may hold a journal: a run's folder, and each of its
    attempts' (a commit journals in its own attempt folder, ``_staging/RUN_ID/commit-...``)."""
    folders = []
    top = pafs.FileSelector(f"{base}/{publish.STAGING}", allow_not_found=True)
    for run_dir in fs.get_file_info(top):
        if run_dir.type != pafs.FileType.Directory or run_dir.base_name == lock.LOCKS:
            continue
        folders.append(run_dir.path)
        for entry in fs.get_file_info(pafs.FileSelector(run_dir.path, allow_not_found=True)):
            if entry.type == pafs.FileType.Directory and entry.base_name != "shards":
                folders.append(entry.path)
    return folders


def _finish(fs: pafs.FileSystem, staging: str, journal: dict[str, Any]) -> None:
    """Steps 5-6: the marker, then the previous run's files, then the staging."""
    partition = journal["partition"]
    try:
        for stale in MARKERS:
            if stale != journal["marker"]:
                _delete(fs, [f"{partition}/{stale}"])
        with fs.open_output_stream(f"{partition}/{journal['marker']}", compression=None):
            pass
        keep = set(journal["files"])
        _delete(fs, (f"{partition}/{p}" for p in journal["previous"]["files"] if p not in keep))
        fs.delete_dir(staging)
    except OSError as exc:
        raise PublishError(
            f"{partition} is published; removing what it replaced failed ({exc}); "
            "the next run finishes it"
        ) from None


def _roll_back(fs: pafs.FileSystem, base: str, staging: str, journal: dict[str, Any]) -> None:
    """Undo steps 2-3: delete the copies, put back a marker that was deleted, then the killed
    commit's own folder (what it gathered; a new commit gathers again). The run's staging, its
    shards, stays, so ``commit`` can be run again; it expires with the run id's age."""
    partition = journal["partition"]
    previous = journal["previous"]
    keep = set(previous["files"])
    _delete(fs, (f"{partition}/{p}" for p in journal["files"] if p not in keep))
    for marker in previous["markers"]:
        if not publish.exists(fs, f"{partition}/{marker}"):
            with fs.open_output_stream(f"{partition}/{marker}", compression=None):
                pass
    if staging.rsplit("/", 1)[-1].startswith("commit-"):
        door.guarded_delete(fs, base, staging)
    else:  # a journal in the run's own folder, beside its shards (before attempt folders)
        fs.delete_file(f"{staging}/{JOURNAL}")


def _delete(fs: pafs.FileSystem, paths: Iterable[str]) -> None:
    """Delete files; one already gone is fine (a recovery may repeat a delete)."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(path)
