"""Staging and atomic publishing of one snapshot partition.

Layout under the output URI::

    images/snapshot_date=D/region=R/part-NNNNN.parquet    published data (what readers see)
    images/snapshot_date=D/_rejects/rejects-NNNNN.jsonl   records that could not be converted
    images/snapshot_date=D/_manifest.json, _SUCCESS       written last
    _staging/RUN_ID/...                                   a run's files until it commits
    _trash/RUN_ID/...                                     the previous partition, mid-swap

A run writes only below ``_staging/RUN_ID``, which no reader of ``images/`` looks at. Commit
writes the manifest and ``_SUCCESS`` into the staged partition, then swaps it in: the old
partition is renamed into ``_trash``, the new one renamed into place, the old one deleted. On a
local filesystem each rename is atomic, so a reader sees the old partition or the new one, never
a mix; a crash between the two renames is repaired by the next run (``recover``). Object stores
cannot rename: ``connector.objectstore`` publishes there by copies and a manifest instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connector.errors import PublishError
from connector.sinks import FileInfo

STAGING = "_staging"
TRASH = "_trash"
STALE_STAGING_S = 7 * 86400


@dataclass(frozen=True, slots=True)
class Layout:
    """Paths of one run's staging area and of the partition it publishes."""

    base: str
    run_id: str
    snapshot_date: str

    @property
    def partition(self) -> str:
        """Where the published partition lives."""
        return f"{self.base}/images/snapshot_date={self.snapshot_date}"

    @property
    def staging(self) -> str:
        """The run's private staging root."""
        return f"{self.base}/{STAGING}/{self.run_id}"

    @property
    def staged_partition(self) -> str:
        """The partition as the run builds it."""
        return f"{self.staging}/images/snapshot_date={self.snapshot_date}"

    @property
    def trash(self) -> str:
        """Where the previous partition waits during the swap."""
        return f"{self.base}/{TRASH}/{self.run_id}/snapshot_date={self.snapshot_date}"

    def dataset_partition(self, dataset: str) -> str:
        """Where a dataset published beside ``images`` (``compartments`` ...) lives."""
        return f"{self.base}/{dataset}/snapshot_date={self.snapshot_date}"

    def staged_dataset(self, dataset: str) -> str:
        """That dataset's partition as the run builds it."""
        return f"{self.staging}/{dataset}/snapshot_date={self.snapshot_date}"

    def shard_manifest(self, index: int, count: int) -> str:
        """Where shard ``index`` of ``count`` records what it did."""
        return f"{self.staging}/shards/{index:03d}-of-{count:03d}.json"


def shard_prefixes(index: int, count: int) -> tuple[str, str]:
    """How the names of shard ``index`` of ``count``'s data and reject files begin; every
    shard's differ, so that a shard can remove its own files and no other's."""
    if count == 1:
        return "part-", "rejects-"
    return f"part-{index:03d}-", f"rejects-{index:03d}-"


def remove_shard_files(fs: pafs.FileSystem, layout: Layout, index: int, count: int) -> None:
    """Remove what any attempt of shard ``index`` of ``count`` staged: its data and reject
    files and its shard manifest. Other shards' files stay, so that Airflow can retry one
    shard (after a failure, or with another number of workers) without touching the rest."""
    prefixes = shard_prefixes(index, count)
    selector = pafs.FileSelector(layout.staged_partition, allow_not_found=True, recursive=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File and info.base_name.startswith(prefixes):
            fs.delete_file(info.path)
    manifest = layout.shard_manifest(index, count)
    if exists(fs, manifest):
        fs.delete_file(manifest)


def remove_unlisted(fs: pafs.FileSystem, directory: str, listed: Iterable[str]) -> list[str]:
    """Delete the files below ``directory`` that ``listed`` (paths relative to it) leaves out,
    so that exactly the listed files are published; returns what was removed."""
    keep = set(listed)
    removed = []
    selector = pafs.FileSelector(directory, allow_not_found=True, recursive=True)
    for info in fs.get_file_info(selector):
        relative = info.path[len(directory) + 1 :]
        if info.type == pafs.FileType.File and relative not in keep:
            fs.delete_file(info.path)
            removed.append(relative)
    return removed


def utc_now() -> str:
    """Now, as the manifest writes times."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json(fs: pafs.FileSystem, path: str, payload: Any) -> None:
    """Write a JSON document."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path, compression=None) as out:
        out.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """Read a JSON document."""
    with fs.open_input_stream(path) as stream:
        return orjson.loads(stream.read())


def exists(fs: pafs.FileSystem, path: str) -> bool:
    """Whether a file or directory exists."""
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def drop_compartments(
    fs: pafs.FileSystem, partition: str, files: list[FileInfo], failed: set[tuple[str, str]]
) -> list[FileInfo]:
    """Rewrite staged files without the rows of failed (region, compartment) listings.

    Rows stream to disk as pages arrive, before a listing is known to be complete; when some
    listing fails and a partial result is still published, its rows come out here, a row group
    (or line) at a time, so memory stays flat.
    """
    kept: list[FileInfo] = []
    for info in files:
        path = f"{partition}/{info.path}"
        temporary = path + ".filtering"
        if info.path.endswith(".parquet"):
            rows = _filter_parquet(fs, path, temporary, failed)
        else:
            rows = _filter_lines(fs, path, temporary, failed, info.path.endswith(".gz"))
        fs.move(temporary, path)
        kept.append(FileInfo(info.path, rows, fs.get_file_info(path).size or 0))
    return kept


def _filter_parquet(
    fs: pafs.FileSystem, source: str, target: str, failed: set[tuple[str, str]]
) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    from connector.sinks import parquet

    rows = 0
    with fs.open_input_file(source) as raw:
        reader = pq.ParquetFile(raw)
        metadata = reader.metadata
        compression = (
            metadata.row_group(0).column(0).compression if metadata.num_row_groups else "ZSTD"
        )
        codec = str(compression).lower()
        codec = "none" if codec == "uncompressed" else codec
        with (
            fs.open_output_stream(target, compression=None) as out,
            parquet.writer(out, codec, reader.schema_arrow) as writer,
        ):
            by_region: dict[str, list[str]] = {}
            for region, compartment in failed:
                by_region.setdefault(region, []).append(compartment)
            for index in range(metadata.num_row_groups):
                table = reader.read_row_group(index)
                drop: Any = pa.repeat(False, table.num_rows)
                for region, compartments in by_region.items():
                    listed = pc.is_in(
                        table["_source_compartment_id"], value_set=pa.array(compartments)
                    )
                    drop = pc.or_(
                        drop, pc.and_(pc.equal(table["_region"], pa.scalar(region)), listed)
                    )
                table = table.filter(pc.invert(drop))
                if table.num_rows:
                    writer.write_table(table, row_group_size=table.num_rows)
                    rows += table.num_rows
    return rows


def _filter_lines(
    fs: pafs.FileSystem, source: str, target: str, failed: set[tuple[str, str]], gzip: bool
) -> int:
    import pyarrow as pa

    rows = 0
    with fs.open_input_stream(source, compression="gzip" if gzip else None) as src:
        raw = fs.open_output_stream(target, compression=None)
        out = pa.CompressedOutputStream(raw, "gzip") if gzip else raw
        with out:
            for line in _lines(src):
                row = orjson.loads(line)
                region = row.get("_region", row.get("region"))
                compartment = row.get("_source_compartment_id", row.get("compartment_id"))
                if (region, compartment) in failed:
                    continue
                out.write(line + b"\n")
                rows += 1
    return rows


def _lines(stream: Any, chunk_size: int = 1 << 20) -> Iterable[bytes]:
    """Lines of a pyarrow input stream, read a chunk at a time."""
    pending = b""
    while chunk := stream.read(chunk_size):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line)
    if pending:
        yield pending


RUN_ID_TIME = re.compile(r"^(\d{8}T\d{6}Z)")


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


def recover(fs: pafs.FileSystem, base: str) -> list[str]:
    """Repair interrupted swaps and remove long-abandoned staging; returns what was restored.

    A swap interrupted between its two renames leaves the previous partition in ``_trash``
    and no published partition: it is moved back. Staging left by killed runs is invisible
    to readers; it is removed once its run id is a week old. The age comes from the run id,
    not from a modification time: object stores have no directories to date, and a file's
    time says when it was written, not when its run began. Staging of an id that carries no
    time is left alone. Interrupted commits on object stores are ``objectstore.recover``'s.
    """
    restored = []
    trash = fs.get_file_info(pafs.FileSelector(f"{base}/{TRASH}", allow_not_found=True))
    for run_dir in trash:
        for entry in fs.get_file_info(pafs.FileSelector(run_dir.path, allow_not_found=True)):
            published = f"{base}/images/{entry.base_name}"
            if not exists(fs, published):
                fs.create_dir(f"{base}/images", recursive=True)
                fs.move(entry.path, published)
                restored.append(entry.base_name)
        fs.delete_dir(run_dir.path)
    staging = fs.get_file_info(pafs.FileSelector(f"{base}/{STAGING}", allow_not_found=True))
    now = time.time()
    for run_dir in staging:
        started = run_started(run_dir.base_name)
        if started is not None and now - started > STALE_STAGING_S:
            fs.delete_dir(run_dir.path)
    return restored


def swap_in(fs: pafs.FileSystem, layout: Layout) -> None:
    """Replace the published partition with the staged one."""
    if not any(exists(fs, f"{layout.staged_partition}/{m}") for m in ("_SUCCESS", "_PARTIAL")):
        raise PublishError(f"nothing committed to publish in {layout.staged_partition}")
    try:
        fs.create_dir(f"{layout.base}/images", recursive=True)
        if exists(fs, layout.partition):
            fs.create_dir(layout.trash.rsplit("/", 1)[0], recursive=True)
            fs.move(layout.partition, layout.trash)
        fs.move(layout.staged_partition, layout.partition)
        if exists(fs, layout.trash):
            fs.delete_dir(f"{layout.base}/{TRASH}/{layout.run_id}")
        fs.delete_dir(layout.staging)
        remove_if_empty(fs, f"{layout.base}/{STAGING}")
        remove_if_empty(fs, f"{layout.base}/{TRASH}")
    except OSError as exc:
        raise PublishError(f"publishing {layout.partition} failed: {exc}") from None


def remove_if_empty(fs: pafs.FileSystem, path: str) -> None:
    """Remove a directory that holds nothing (``_staging`` after the last run left it).

    Only where that is one atomic step (``rmdir`` on a local filesystem): checking for
    emptiness and then deleting would race with another run (another date, a backfill)
    creating its staging there, and pyarrow's ``delete_dir`` deletes whatever is inside.
    Object stores keep no empty directories anyway.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        with contextlib.suppress(OSError):  # not empty, or already gone
            os.rmdir(path)
