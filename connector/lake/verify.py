"""Commit trusts nothing it has not read: every file a shard manifest lists is checked first.

A shard's manifest says which files it wrote, with their size and row count. Before ``commit``
publishes anything, each file must exist with exactly that size and hold exactly that many rows,
as its format counts them (``connector.formats``): the Parquet footer's row count (the
footer is at the end of the file, so a file cut short has none), or the number of lines of an
NDJSON or rejects file (gzip included, read to its end so that a cut gzip stream fails its CRC).
A file that fails stops the commit, which names the shard and the file; nothing is published.
On a local disk the same pass fsyncs each file, so the data is on the disk before the swap makes
it visible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from connector import formats, names
from connector.errors import ConnectorError
from connector.lake import durable
from connector.sinks import rejects


class VerificationError(ConnectorError):
    """A staged file is missing or differs from what its shard's manifest says; the run's
    staging cannot be published (re-run that shard, then commit again)."""

    def __init__(self, shard: str, file: str, reason: str) -> None:
        self.shard = shard
        self.file = file
        self.reason = reason
        super().__init__(f"shard {shard}: {file}: {reason}; nothing was published")


@dataclass(frozen=True, slots=True)
class Checked:
    """What the files of one shard hold, as read back."""

    files: int
    rows: int
    bytes: int


def rows_of(fs: pafs.FileSystem, path: str) -> int:
    """Rows in a data or rejects file, as its format counts them from the file itself."""
    if rejects.is_rejects(path):
        return rejects.count_rows(fs, path)
    return formats.for_path(path).count_rows(fs, path)


def verify_files(
    fs: pafs.FileSystem, root: str, files: Iterable[Mapping[str, Any]], shard: str
) -> Checked:
    """Check each listed file below ``root`` (exists, size, rows) and fsync it; raises
    ``VerificationError`` at the first that does not match."""
    count = rows_total = bytes_total = 0
    for entry in files:
        relative = str(entry.get("path", ""))
        try:
            names.check_relative(relative, "listed file")
        except names.UnsafeNameError as exc:
            raise VerificationError(shard, relative or "(no path)", str(exc)) from None
        path = f"{root}/{relative}"
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise VerificationError(shard, relative, "is missing")
        expected_bytes = int(entry.get("bytes", -1))
        if info.size != expected_bytes:
            raise VerificationError(
                shard, relative, f"has {info.size} bytes, the manifest says {expected_bytes}"
            )
        try:
            rows = rows_of(fs, path)
        except (OSError, pa.ArrowException, EOFError, ValueError) as exc:
            raise VerificationError(shard, relative, f"cannot be read ({exc})") from None
        expected_rows = int(entry.get("rows", -1))
        if rows != expected_rows:
            raise VerificationError(
                shard, relative, f"holds {rows} rows, the manifest says {expected_rows}"
            )
        durable.fsync_file(fs, path)
        count += 1
        rows_total += rows
        bytes_total += info.size or 0
    return Checked(count, rows_total, bytes_total)
