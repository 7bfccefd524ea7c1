"""NDJSON files: one JSON object per row, the same names and nesting as the Parquet columns.

Timestamps are RFC 3339 with ``Z``, dates ``YYYY-MM-DD``, maps JSON objects; gzip optional.
"""

from __future__ import annotations

import orjson
import pyarrow as pa

from connector.sinks import FileInfo, RollingFiles, SeriesPlace, SinkOptions

_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE


def encode_rows(batch: pa.RecordBatch) -> bytes:
    """The batch as NDJSON bytes."""
    rows = batch.to_pylist(maps_as_pydicts="strict")
    return b"".join(orjson.dumps(row, option=_OPTIONS) for row in rows)


class NdjsonSeries(RollingFiles):
    """One region's NDJSON files."""

    def __init__(self, place: SeriesPlace, options: SinkOptions) -> None:
        super().__init__(place, options)
        self._stream: pa.NativeFile | None = None
        self._raw: pa.NativeFile | None = None
        self._rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Append the batch's rows, rolling to a new file at the row limit."""
        start = 0
        while start < batch.num_rows:
            if self._stream is None:
                self._start_file()
            assert self._stream is not None
            take = min(batch.num_rows - start, self.options.max_rows_per_file - self._rows)
            self._stream.write(encode_rows(batch.slice(start, take)))
            self._rows += take
            start += take
            if self._rows >= self.options.max_rows_per_file:
                self._finish_file()

    @property
    def buffered(self) -> int:
        """Nothing is held: lines are written as they come."""
        return 0

    def flush(self) -> None:
        """Nothing to write early (see ``buffered``)."""

    def close(self) -> list[FileInfo]:
        """Close the current file."""
        self._finish_file()
        return self._files

    def _start_file(self) -> None:
        self._raw = self._open_next()
        if self.options.compression == "gzip":
            self._stream = pa.CompressedOutputStream(self._raw, "gzip")
        else:
            self._stream = self._raw
        self._rows = 0

    def _finish_file(self) -> None:
        if self._stream is None or self._raw is None:
            return
        if self._stream is not self._raw:
            self._stream.close()  # flushes the gzip trailer and closes the raw stream
            size = self.place.fs.get_file_info(self._path).size or 0
        else:
            size = self._raw.tell()
            self._raw.close()
        self._finished(self._rows, size)
        self._stream = None
        self._raw = None


def decode_rows(lines: list[bytes], schema: pa.Schema) -> pa.RecordBatch:
    """NDJSON lines written by ``encode_rows`` back into a batch of ``schema``."""
    rows = [orjson.loads(line) for line in lines]
    columns = []
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if pa.types.is_timestamp(field.type) or pa.types.is_date(field.type):
            columns.append(pa.array(values, pa.string()).cast(field.type))
        else:
            columns.append(pa.array(values, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
