"""NDJSON files: one JSON object per row, the same names and nesting as the Parquet columns.

Timestamps are RFC 3339 with ``Z``, dates ``YYYY-MM-DD``, maps JSON objects; gzip optional.
Every reader of JSON lines (counting them for commit's verification, reading them back,
filtering them for the partial-result rewrite, the rejects files too) goes through
``read_lines``: one rule for what a line is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

from connector.formats import NDJSON, RowPredicate

_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
_LINES_PER_BATCH = 16_384
_CHUNK = 1 << 20


def encode_rows(batch: pa.RecordBatch) -> bytes:
    """The batch as NDJSON bytes."""
    rows = batch.to_pylist(maps_as_pydicts="strict")
    return b"".join(orjson.dumps(row, option=_OPTIONS) for row in rows)


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


def read_lines(stream: Any, chunk_size: int = _CHUNK) -> Iterator[list[bytes]]:
    """The lines of a pyarrow input stream, without their newlines, read a chunk at a time and
    given as the lists each chunk completes. A last line without its newline counts; an empty
    line is no row, and is skipped."""
    pending = b""
    while chunk := stream.read(chunk_size):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        if lines := [line for line in complete if line]:
            yield lines
    if pending:
        yield [pending]


def count_lines(stream: Any) -> int:
    """The lines ``read_lines`` finds in a stream (read to its end: a cut gzip stream fails
    its check there)."""
    return sum(len(lines) for lines in read_lines(stream))


def _gzip(path: str) -> Literal["gzip"] | None:
    """The stream compression pyarrow reads an NDJSON file with, from its name."""
    return "gzip" if NDJSON.compression_of(path) == "gzip" else None


class NdjsonWriter:
    """One NDJSON file, gzip or not, written into an open stream."""

    def __init__(self, stream: pa.NativeFile, compression: str, arrow_schema: pa.Schema) -> None:
        self._stream = (
            pa.CompressedOutputStream(stream, "gzip") if compression == "gzip" else stream
        )
        self._compressed = compression == "gzip"

    def write(self, batch: pa.RecordBatch, /) -> None:
        """Append the batch's rows as lines."""
        self._stream.write(encode_rows(batch))

    def close(self) -> None:
        """Write the gzip trailer, which closes the stream beneath; a plain stream stays open."""
        if self._compressed:
            self._stream.close()


def count_rows(fs: pafs.FileSystem, path: str) -> int:
    """The file's lines (gzip read to its end)."""
    with fs.open_input_stream(path, compression=_gzip(path)) as stream:
        return count_lines(stream)


def read_batches(
    fs: pafs.FileSystem, path: str, arrow_schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """The file's rows as batches of ``arrow_schema``, a bounded number of lines at a time."""
    with fs.open_input_stream(path, compression=_gzip(path)) as stream:
        pending: list[bytes] = []
        for lines in read_lines(stream):
            pending += lines
            if len(pending) >= _LINES_PER_BATCH:
                yield decode_rows(pending, arrow_schema)
                pending = []
        if pending:
            yield decode_rows(pending, arrow_schema)


def filter_rows(fs: pafs.FileSystem, source: str, target: str, drop: RowPredicate) -> int:
    """Write ``target``: ``source`` without the rows ``drop`` selects; the rows kept."""
    return filter_lines(fs, source, target, drop, _gzip(source))


def filter_lines(
    fs: pafs.FileSystem,
    source: str,
    target: str,
    drop: RowPredicate,
    compression: Literal["gzip"] | None,
) -> int:
    """Write ``target`` without the lines of ``source`` that ``drop`` selects (only its columns
    are decoded to decide), a chunk at a time; the lines kept are copied as they were."""
    rows = 0
    with fs.open_input_stream(source, compression=compression) as src:
        raw = fs.open_output_stream(target, compression=None)
        out = pa.CompressedOutputStream(raw, compression) if compression else raw
        with out:  # closing the gzip stream writes its trailer and closes the file
            for lines in read_lines(src):
                decided = pa.Table.from_batches([decode_rows(lines, drop.columns)])
                kept = [
                    line
                    for line, keep in zip(lines, drop.keep(decided).to_pylist(), strict=True)
                    if keep
                ]
                if kept:
                    out.write(b"\n".join(kept) + b"\n")
                    rows += len(kept)
    return rows
