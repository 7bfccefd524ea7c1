"""Sinks: write record batches as they arrive, one file series per region partition.

Every format (``connector.formats``) writes through ``pyarrow.fs`` into the run's staging
directory; publishing (the swap into the lake) is ``connector.lake.publisher``'s job. pyarrow is
imported here for types only: ``connector.config`` imports the formats' registry from this
package.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from connector import names
from connector.formats import (
    FileInfo,
    FileSeries,
    FileWriter,
    SeriesPlace,
    SinkOptions,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

__all__ = [
    "FileInfo",
    "FileSeries",
    "PartitionedSink",
    "RollingFiles",
    "SeriesPlace",
    "SinkOptions",
    "StreamedSeries",
    "closed_size",
]


class RollingFiles:
    """What every format's series shares: where one region's files go, their names, what was
    written."""

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
        extension = self.options.format.extension(self.options.compression)
        self._name = f"{self.place.prefix}{number:05d}{extension}"
        return self.place.fs.open_output_stream(self._path, compression=None)

    def _finished(self, rows: int, size: int) -> None:
        self._files.append(FileInfo(f"{self.place.relative}/{self._name}", rows, size))

    def begun(self) -> set[str]:
        """Every file of the series begun so far, finished or not (relative to the partition)."""
        found = {info.path for info in self._files}
        if self._name:
            found.add(f"{self.place.relative}/{self._name}")
        return found


def closed_size(fs: pafs.FileSystem, path: str, stream: pa.NativeFile) -> int:
    """Close ``stream``, whose writer has finished its file; the file's size.

    A writer that compresses (gzip) closes the stream beneath it as it writes its trailer; the
    store then tells the size.
    """
    if stream.closed:
        return fs.get_file_info(path).size or 0
    size = stream.tell()
    stream.close()
    return size


class StreamedSeries(RollingFiles):
    """One region's files in a format that writes each batch as it comes (its
    ``open_writer``), rolling to a new file at the row limit; NDJSON's."""

    def __init__(self, place: SeriesPlace, options: SinkOptions) -> None:
        super().__init__(place, options)
        self._stream: pa.NativeFile | None = None
        self._writer: FileWriter | None = None
        self._rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Append the batch's rows, rolling to a new file at the row limit."""
        start = 0
        while start < batch.num_rows:
            writer = self._writer or self._start_file(batch.schema)
            take = min(batch.num_rows - start, self.options.max_rows_per_file - self._rows)
            writer.write(batch.slice(start, take))
            self._rows += take
            start += take
            if self._rows >= self.options.max_rows_per_file:
                self._finish_file()

    @property
    def buffered(self) -> int:
        """Nothing is held: rows are written as they come."""
        return 0

    def flush(self) -> None:
        """Nothing to write early (see ``buffered``)."""

    def close(self) -> list[FileInfo]:
        """Finish the current file."""
        self._finish_file()
        return self._files

    def _start_file(self, arrow_schema: pa.Schema) -> FileWriter:
        self._stream = self._open_next()
        self._writer = self.options.format.open_writer(
            self._stream, self.options.compression, arrow_schema
        )
        self._rows = 0
        return self._writer

    def _finish_file(self) -> None:
        if self._writer is None or self._stream is None:
            return
        self._writer.close()
        self._finished(self._rows, closed_size(self.place.fs, self._path, self._stream))
        self._writer = None
        self._stream = None


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
        if not self.options.table:
            # The folder names hold them (snapshot_date=D/region=R/): one name per fact.
            batch = batch.drop_columns(
                [name for name in names.PARTITION_COLUMNS if name in batch.schema.names]
            )
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

    def discard(self) -> list[str]:
        """After a failure: close every series as far as it goes (a full disk stops it) and
        name every file begun, finished or not (relative to the partition), to be deleted."""
        begun: set[str] = set()
        for series in self._series.values():
            # A full disk fails the close, and a writer whose stream failed once refuses any
            # later write ("Operation on closed file"): the files are deleted either way.
            with contextlib.suppress(Exception):
                begun.update(info.path for info in series.close())
            if isinstance(series, RollingFiles):
                begun.update(series.begun())
        self._series.clear()
        return sorted(begun)

    def _open(self, region: str) -> FileSeries:
        # The last check before a region name becomes a folder (the first is in discovery).
        directory = f"{self.partition_dir}/region={names.check_region(region)}"
        self.fs.create_dir(directory, recursive=True)
        place = SeriesPlace(
            self.fs, directory, f"region={region}", self.file_prefix, self.numbering
        )
        return self.options.format.open_series(place, self.options)
