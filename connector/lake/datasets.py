"""Publishing the datasets beside ``images``: ``compartments`` and, with ``output.changes``,
``changes``.

Each is small next to ``images`` (one file a date), and each is published the same way on
every store, local or object, plain files or beside a Delta or Iceberg table::

    {uri}/{dataset}/snapshot_date=D/part-00000-RUN_ID.parquet   copied in under a run-unique name
    {uri}/{dataset}/snapshot_date=D/_manifest.json              then the manifest (the commit point)
    {uri}/{dataset}/snapshot_date=D/_SUCCESS                    then the marker, strictly last

and only then are the files the previous manifest listed (and any a killed commit left behind)
deleted. A reader that follows the manifest sees one run's file, never two. The commit
publishes these before ``images``, so when ``images``' marker appears (what a sensor waits for)
its companions are there; the images manifest lists them under ``datasets``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import pyarrow.fs as pafs
import structlog

from connector.errors import PublishError
from connector.lake import publish
from connector.sinks import FileInfo

log = structlog.get_logger("connector.lake.datasets")

MANIFEST = "_manifest.json"
MARKER = "_SUCCESS"


def publish_all(
    fs: pafs.FileSystem, layout: publish.Layout, datasets: Mapping[str, tuple[FileInfo, ...]]
) -> dict[str, tuple[FileInfo, ...]]:
    """Publish every staged dataset of ``layout``'s run; their files as published."""
    return {name: publish_one(fs, layout, name, files) for name, files in sorted(datasets.items())}


def publish_one(
    fs: pafs.FileSystem, layout: publish.Layout, name: str, files: tuple[FileInfo, ...]
) -> tuple[FileInfo, ...]:
    """Publish one dataset's staged ``files`` (relative to its staged partition)."""
    staged = layout.staged_dataset(name)
    partition = layout.dataset_partition(name)
    previous = _manifest(fs, partition)
    published = tuple(FileInfo(_unique(f.path, layout.run_id), f.rows, f.bytes) for f in files)
    try:
        if isinstance(fs, pafs.LocalFileSystem):  # object stores need no folders
            fs.create_dir(partition, recursive=True)
        for source, target in zip(files, published, strict=True):
            fs.copy_file(f"{staged}/{source.path}", f"{partition}/{target.path}")
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{partition}/{MARKER}")
        publish.write_json(
            fs,
            f"{partition}/{MANIFEST}",
            {
                "run_id": layout.run_id,
                "snapshot_date": layout.snapshot_date,
                "dataset": name,
                "rows": sum(f.rows for f in published),
                "files": [{"path": f.path, "rows": f.rows, "bytes": f.bytes} for f in published],
            },
        )
        with fs.open_output_stream(f"{partition}/{MARKER}", compression=None):
            pass
    except OSError as exc:
        raise PublishError(f"publishing {partition} failed: {exc}") from None
    _remove_superseded(fs, partition, {f.path for f in published}, previous)
    return published


def _remove_superseded(
    fs: pafs.FileSystem, partition: str, keep: set[str], previous: dict[str, Any] | None
) -> None:
    """The previous run's files, and data files no manifest lists (a killed commit's copies):
    one writer per date holds the lock, so nothing else is writing here."""
    stale = {f["path"] for f in previous.get("files", [])} if previous else set()
    for entry in fs.get_file_info(pafs.FileSelector(partition, allow_not_found=True)):
        if entry.type == pafs.FileType.File and not entry.base_name.startswith("_"):
            stale.add(entry.base_name)
    for path in sorted(stale - keep):
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{partition}/{path}")
    if stale - keep:
        log.info("datasets.superseded_removed", partition=partition, files=len(stale - keep))


def _manifest(fs: pafs.FileSystem, partition: str) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = publish.read_json(fs, f"{partition}/{MANIFEST}")
    except FileNotFoundError:
        return None
    return document


def _unique(name: str, run_id: str) -> str:
    stem, dot, extension = name.partition(".")
    return f"{stem}-{run_id}{dot}{extension}"
