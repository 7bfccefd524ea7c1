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
have no atomic rename: there the manifest and ``_SUCCESS``, written last, are the commit marker.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connector.errors import ConfigError, PublishError
from connector.sinks import FileInfo

STAGING = "_staging"
TRASH = "_trash"
STALE_STAGING_S = 7 * 86400


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and base path for ``output.uri`` (local path or URI)."""
    if "://" not in uri:
        path = Path(uri).expanduser().resolve()
        return pafs.LocalFileSystem(), path.as_posix()
    try:
        fs, location = pafs.FileSystem.from_uri(uri)
        return fs, location.rstrip("/")
    except (pafs.ArrowInvalid, pafs.ArrowNotImplementedError, ValueError):  # type: ignore[attr-defined]
        pass
    try:
        import fsspec
    except ImportError:
        raise ConfigError(
            "output.uri",
            f"{uri.split('://')[0]}:// needs fsspec: pip install 'oci-images-connector[fsspec]'",
        ) from None
    fs_spec, location = fsspec.core.url_to_fs(uri)
    handler = pafs.FSSpecHandler(fs_spec)  # type: ignore[abstract]  # stubs miss its methods
    return pafs.PyFileSystem(handler), str(location).rstrip("/")


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

    def shard_manifest(self, index: int, count: int) -> str:
        """Where shard ``index`` of ``count`` records what it did."""
        return f"{self.staging}/shards/{index:03d}-of-{count:03d}.json"


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
            pq.ParquetWriter(out, reader.schema_arrow, compression=codec, version="2.6") as writer,  # type: ignore[arg-type]
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


def recover(fs: pafs.FileSystem, base: str) -> list[str]:
    """Repair interrupted swaps and remove long-abandoned staging; returns what was restored.

    A swap interrupted between its two renames leaves the previous partition in ``_trash``
    and no published partition: it is moved back. Staging left by killed runs is invisible
    to readers; it is removed once it is a week old.
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
    for run_dir in staging:
        stamp = run_dir.mtime.timestamp() if run_dir.mtime else time.time()
        if time.time() - stamp > STALE_STAGING_S:
            fs.delete_dir(run_dir.path)
    return restored


def swap_in(fs: pafs.FileSystem, layout: Layout) -> None:
    """Replace the published partition with the staged one."""
    if not exists(fs, f"{layout.staged_partition}/_SUCCESS"):
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
