"""Sinks: write record batches as they arrive, one file series per region partition.

Both formats write through ``pyarrow.fs`` into the run's staging directory; publishing (the
swap into the lake) is ``connector.lake.publish``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from connector import names


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A finished data file, relative to the partition directory."""

    path: str
    rows: int
    bytes: int


class FileSeries(Protocol):
    """Writes one region's batches into rolling files."""

    def write(self, batch: pa.RecordBatch) -> None:
        """Append rows (may buffer them)."""

    def close(self) -> list[FileInfo]:
        """Flush, close and describe every file written."""

    @property
    def buffered(self) -> int:
        """Rows held in memory, not yet written."""

    def flush(self) -> None:
        """Write what is held in memory now (a smaller row group)."""


@dataclass(frozen=True, slots=True)
class SinkOptions:
    """How files are written."""

    format: str = "parquet"
    compression: str = "zstd"
    row_group_rows: int = 128 * 1024
    max_rows_per_file: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SeriesPlace:
    """Where one writer puts one region's files, and how it numbers them."""

    fs: pafs.FileSystem
    directory: str
    relative: str
    """``directory`` relative to the partition, as the manifest lists files."""
    prefix: str
    numbering: tuple[int, int] = (0, 1)
    """(first, step): writers that share a directory number their files first, first + step …"""


class RollingFiles:
    """What both formats share: where one region's files go, their names, what was written."""

    def __init__(self, place: SeriesPlace, options: SinkOptions) -> None:
        self.place = place
        self.options = options
        self._files: list[FileInfo] = []
        self._name = ""

    @property
    def _path(self) -> str:
        """The current file."""
        return f"{self.place.directory}/{self._name}"

    def _open_next(self) -> pa.NativeFile:
        """Open the next file of the series (part-NNNNN plus the format's extension)."""
        first, step = self.place.numbering
        number = first + step * len(self._files)
        self._name = f"{self.place.prefix}{number:05d}{extension(self.options)}"
        return self.place.fs.open_output_stream(self._path, compression=None)

    def _finished(self, rows: int, size: int) -> None:
        self._files.append(FileInfo(f"{self.place.relative}/{self._name}", rows, size))


def extension(options: SinkOptions) -> str:
    """The data files' extension: .parquet, .ndjson or .ndjson.gz."""
    if options.format == "parquet":
        return ".parquet"
    return ".ndjson.gz" if options.compression == "gzip" else ".ndjson"


class PartitionedSink:
    """Routes batches to per-region file series under ``partition_dir/region=REGION/``."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        partition_dir: str,
        options: SinkOptions,
        file_prefix: str = "part-",
        numbering: tuple[int, int] = (0, 1),
    ) -> None:
        self.fs = fs
        self.partition_dir = partition_dir
        self.options = options
        self.file_prefix = file_prefix
        self.numbering = numbering
        self._series: dict[str, FileSeries] = {}

    def write(self, region: str, batch: pa.RecordBatch) -> None:
        """Write a batch whose rows all belong to ``region``."""
        if batch.num_rows == 0:
            return
        series = self._series.get(region)
        if series is None:
            series = self._series[region] = self._open(region)
        series.write(batch)
        if len(self._series) > 1:
            self._hold_budget()

    def _hold_budget(self) -> None:
        """Keep the rows held in memory, all regions together, within one row group.

        Each region's series fills its own row group; with four regions a writer would hold
        four row groups' worth (about 600 bytes a row, 40 MB each at 64k rows) and memory would
        grow with the number of regions. Past the budget, the fullest series writes what it
        holds as a smaller row group.
        """
        budget = self.options.row_group_rows
        while sum(s.buffered for s in self._series.values()) > budget:
            fullest = max(self._series.values(), key=lambda s: s.buffered)
            fullest.flush()

    def flush(self) -> None:
        """Write what every series holds now."""
        for series in self._series.values():
            series.flush()

    def close(self) -> list[FileInfo]:
        """Close every series; the files, relative to the partition directory."""
        files: list[FileInfo] = []
        for series in self._series.values():
            files.extend(series.close())
        self._series.clear()
        return files

    def _open(self, region: str) -> FileSeries:
        # The last check before a region name becomes a folder (the first is in discovery).
        directory = f"{self.partition_dir}/region={names.check_region(region)}"
        self.fs.create_dir(directory, recursive=True)
        place = SeriesPlace(
            self.fs, directory, f"region={region}", self.file_prefix, self.numbering
        )
        if self.options.format == "parquet":
            from connector.sinks.parquet import ParquetSeries

            return ParquetSeries(place, self.options)
        from connector.sinks.ndjson import NdjsonSeries

        return NdjsonSeries(place, self.options)
