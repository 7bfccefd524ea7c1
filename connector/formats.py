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

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs


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

    format: Format = field(default_factory=lambda: get("parquet"))
    compression: str = "zstd"
    row_group_rows: int = 128 * 1024
    max_rows_per_file: int = 1024 * 1024
    table: bool = False
    """Whether the files go into a Delta or Iceberg table, whose files keep the partition
    columns (the table's metadata names each once; Iceberg registers the files as they are).
    Plain files leave them to the folder names (``names.PARTITION_COLUMNS``)."""


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


@dataclass(frozen=True, slots=True)
class Lazy:
    """A function (or class) of a module that is imported at its first call: the built-in
    formats' code, and pyarrow with it, loads only in a process that writes or reads files.
    It pickles by its names, so worker processes receive it as it is."""

    module: str
    name: str

    def __call__(self, *args: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args)


streamed_series = Lazy("connector.sinks", "StreamedSeries")
"""A series that writes each batch through the format's ``open_writer`` as it comes
(``connector.sinks.StreamedSeries``): the default, for formats that hold nothing back."""


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
        open_writer=Lazy("connector.sinks.parquet", "writer"),
        count_rows=Lazy("connector.sinks.parquet", "count_rows"),
        read_batches=Lazy("connector.sinks.parquet", "read_batches"),
        filter_rows=Lazy("connector.sinks.parquet", "filter_rows"),
        open_series=Lazy("connector.sinks.parquet", "ParquetSeries"),
    )
)
"""Parquet: the codec is inside the file (every compression has the one extension)."""

NDJSON = register(
    Format(
        name="ndjson",
        extensions={"gzip": ".ndjson.gz", "none": ".ndjson"},
        default_compression="none",
        open_writer=Lazy("connector.sinks.ndjson", "NdjsonWriter"),
        count_rows=Lazy("connector.sinks.ndjson", "count_rows"),
        read_batches=Lazy("connector.sinks.ndjson", "read_batches"),
        filter_rows=Lazy("connector.sinks.ndjson", "filter_rows"),
    )
)
"""NDJSON: one JSON object a line, the Parquet columns' names and nesting; gzip optional."""
