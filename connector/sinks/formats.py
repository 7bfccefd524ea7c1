"""Output formats: one record per format, asked by everything that writes or reads data files.

A ``Format`` is what ``output.format`` names: its files' extension for each compression it
takes, its default compression, how rows stream into its files, how many rows a finished file
holds (what commit verifies), how a file's rows are read back (``diff``, the ``changes``
dataset) and how a file is rewritten without some rows (the partial-result rewrite). Nothing
else compares format names or file extensions: it asks this registry, by name (``get``) or by a
file's path (``for_path``). A new format is one ``register``.

This module imports neither pyarrow nor the formats' code: ``connector.config`` validates
``output.format`` and ``output.compression`` against it, and a process that only builds settings
(an Airflow DAG file being parsed) stays light. The built-in formats' functions import their
module (``sinks/parquet.py``, ``sinks/ndjson.py``) when first called.

Worker processes (``fetch.workers``) are fresh interpreters: the run's ``Format`` reaches them
pickled, its functions by reference, so a format registered at run time is made of module-level
functions and classes that a worker can import (it has the same ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

    from connector.sinks import FileSeries, SeriesPlace, SinkOptions


class FileWriter(Protocol):
    """Writes the rows of one file into an open output stream."""

    def write(self, batch: pa.RecordBatch, /) -> None:
        """Append rows."""

    def close(self) -> None:
        """Finish the file (a footer, a gzip trailer); it may close the stream beneath."""


OpenWriter: TypeAlias = "Callable[[pa.NativeFile, str, pa.Schema], FileWriter]"
"""(stream, compression, schema) → a writer of one file of that schema into the stream."""

OpenSeries: TypeAlias = "Callable[[SeriesPlace, SinkOptions], FileSeries]"
"""(place, options) → one region's rolling files, as ``PartitionedSink`` writes them."""

CountRows: TypeAlias = "Callable[[pafs.FileSystem, str], int]"
"""(fs, path) → the rows a finished file holds, read from the file itself; raises
``OSError``, ``pyarrow.ArrowException``, ``EOFError`` or ``ValueError`` for a file that cannot
be read to its end."""

ReadBatches: TypeAlias = "Callable[[pafs.FileSystem, str, pa.Schema], Iterator[pa.RecordBatch]]"
"""(fs, path, schema) → the file's rows a batch at a time; formats that do not store Arrow
types (JSON, CSV) read them back as ``schema`` says."""

Mask: TypeAlias = "pa.BooleanArray | pa.ChunkedArray[pa.BooleanScalar]"
"""One boolean for each row of a table."""

FilterRows: TypeAlias = "Callable[[pafs.FileSystem, str, str, RowPredicate], int]"
"""(fs, source, target, predicate) → writes ``target``: ``source`` without the rows the
predicate selects, in the same format and compression, a part at a time; the rows kept."""


@dataclass(frozen=True, slots=True)
class RowPredicate:
    """Rows a rewrite leaves out: ``test`` is true for each row to drop, given a table that
    holds at least ``columns`` (a null keeps the row).

    The columns are named with their types so that a format whose files are not Arrow data (JSON
    lines) converts only those to decide, and keeps the lines it does not drop as they were.
    """

    columns: pa.Schema
    test: Callable[[pa.Table], Mask]

    def keep(self, table: pa.Table) -> Mask:
        """True for each row of ``table`` that stays."""
        import pyarrow.compute as pc

        drop: Any = self.test(table)  # the stubs type compute functions on one kind of array
        return cast("Mask", pc.invert(pc.fill_null(drop, False)))


def streamed_series(place: SeriesPlace, options: SinkOptions) -> FileSeries:
    """A series that writes each batch through the format's ``open_writer`` as it comes
    (``connector.sinks.StreamedSeries``): the default, for formats that hold nothing back."""
    from connector.sinks import StreamedSeries

    return StreamedSeries(place, options)


@dataclass(frozen=True, slots=True, eq=False)
class Format:
    """One output format: its files' names and what writes, counts, reads and filters them."""

    name: str
    """What ``output.format`` says."""
    extensions: Mapping[str, str]
    """Each compression the format takes (in the order the docs list them) → its files'
    extension, unique among the registered formats (it is how a file's format is known)."""
    default_compression: str
    """What ``output.compression = ""`` means."""
    open_writer: OpenWriter
    count_rows: CountRows
    read_batches: ReadBatches
    filter_rows: FilterRows
    open_series: OpenSeries = streamed_series
    """The rolling files of one region; Parquet's holds rows back to fill its row groups."""

    def __post_init__(self) -> None:
        if not self.name or not self.extensions:
            raise ValueError("a format has a name and at least one compression")
        if self.default_compression not in self.extensions:
            raise ValueError(
                f"format {self.name}: its default compression {self.default_compression!r} "
                f"is not one of its compressions ({', '.join(self.extensions)})"
            )
        if not all(e.startswith(".") and len(e) > 1 for e in self.extensions.values()):
            raise ValueError(f"format {self.name}: extensions start with a dot")

    @property
    def compressions(self) -> tuple[str, ...]:
        """The compressions it takes."""
        return tuple(self.extensions)

    def extension(self, compression: str) -> str:
        """The extension of its files written with ``compression``."""
        return self.extensions[compression]

    def compression_of(self, path: str) -> str:
        """The compression a file of this format was written with, as its name says (for
        compressions that share an extension, as Parquet's do, the first of them: such a file
        names its codec inside)."""
        by_length = sorted(self.extensions.items(), key=lambda item: -len(item[1]))
        for compression, extension in by_length:
            if path.endswith(extension):
                return compression
        raise ValueError(f"{path} is not named as a {self.name} file")


_REGISTERED: dict[str, Format] = {}

REJECTS_EXTENSION = ".jsonl"
"""The rejects files' (``connector.sinks.rejects``): they are JSON lines whatever the format, and
known by this extension, so no format's files may end with it."""


def register(fmt: Format) -> Format:
    """Make ``fmt`` known by its name and its extensions; returns it.

    A name or an extension already taken is refused: files already written would otherwise be
    read as another format.
    """
    if fmt.name in _REGISTERED:
        raise ValueError(f"an output format named {fmt.name!r} is already registered")
    taken = {e: f.name for f in _REGISTERED.values() for e in f.extensions.values()}
    for extension in fmt.extensions.values():
        if extension.endswith(REJECTS_EXTENSION):
            raise ValueError(f"format {fmt.name}: {REJECTS_EXTENSION} names the rejects files")
        if extension in taken:
            raise ValueError(
                f"format {fmt.name}: the extension {extension} is {taken[extension]}'s already"
            )
    _REGISTERED[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Forget the format named ``name`` (a plugin being unloaded, a test's own format)."""
    del _REGISTERED[name]


def registered() -> tuple[Format, ...]:
    """Every registered format, the built-in ones first."""
    return tuple(_REGISTERED.values())


def get(name: str) -> Format:
    """The format named ``name``; ``ValueError`` when none is."""
    try:
        return _REGISTERED[name]
    except KeyError:
        known = ", ".join(_REGISTERED)
        raise ValueError(f"no output format is named {name!r} (known: {known})") from None


def for_path(path: str) -> Format:
    """The format of a data file, known by its extension (the longest that matches);
    ``ValueError`` when no registered format names its files so."""
    best: Format | None = None
    longest = 0
    for fmt in _REGISTERED.values():
        for extension in fmt.extensions.values():
            if len(extension) > longest and path.endswith(extension):
                best, longest = fmt, len(extension)
    if best is None:
        raise ValueError(f"no registered output format writes files named like {path}")
    return best


# -- the built-in formats: their code is imported when first used (see the module's docstring) --


def _parquet_writer(stream: pa.NativeFile, compression: str, schema: pa.Schema) -> FileWriter:
    from connector.sinks import parquet

    return parquet.writer(stream, compression, schema)


def _parquet_series(place: SeriesPlace, options: SinkOptions) -> FileSeries:
    from connector.sinks import parquet

    return parquet.ParquetSeries(place, options)


def _parquet_rows(fs: pafs.FileSystem, path: str) -> int:
    from connector.sinks import parquet

    return parquet.count_rows(fs, path)


def _parquet_batches(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    from connector.sinks import parquet

    return parquet.read_batches(fs, path, schema)


def _parquet_filter(fs: pafs.FileSystem, source: str, target: str, drop: RowPredicate) -> int:
    from connector.sinks import parquet

    return parquet.filter_rows(fs, source, target, drop)


def _ndjson_writer(stream: pa.NativeFile, compression: str, schema: pa.Schema) -> FileWriter:
    from connector.sinks import ndjson

    return ndjson.NdjsonWriter(stream, compression, schema)


def _ndjson_rows(fs: pafs.FileSystem, path: str) -> int:
    from connector.sinks import ndjson

    return ndjson.count_rows(fs, path)


def _ndjson_batches(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    from connector.sinks import ndjson

    return ndjson.read_batches(fs, path, schema)


def _ndjson_filter(fs: pafs.FileSystem, source: str, target: str, drop: RowPredicate) -> int:
    from connector.sinks import ndjson

    return ndjson.filter_rows(fs, source, target, drop)


PARQUET = register(
    Format(
        name="parquet",
        extensions={
            "zstd": ".parquet",
            "snappy": ".parquet",
            "gzip": ".parquet",
            "none": ".parquet",
        },
        default_compression="zstd",
        open_writer=_parquet_writer,
        count_rows=_parquet_rows,
        read_batches=_parquet_batches,
        filter_rows=_parquet_filter,
        open_series=_parquet_series,
    )
)
"""Parquet: the codec is inside the file (every compression has the one extension)."""

NDJSON = register(
    Format(
        name="ndjson",
        extensions={"gzip": ".ndjson.gz", "none": ".ndjson"},
        default_compression="none",
        open_writer=_ndjson_writer,
        count_rows=_ndjson_rows,
        read_batches=_ndjson_batches,
        filter_rows=_ndjson_filter,
    )
)
"""NDJSON: one JSON object a line, the Parquet columns' names and nesting; gzip optional."""
