"""The output formats' registry: lookups, refusals, and a format registered by this test alone.

CSV is written here through pyarrow.csv, nested columns (lists, structs, maps) as JSON text,
and registered for the test's duration: an export with ``output.format = "csv"`` then runs
against the emulator (worker processes included, which receive the format pickled), commit
verifies its files by counting CSV rows, the partial-result rewrite filters them, and the rows
read back through the published manifest equal a Parquet export's. No production module knows
CSV.
"""

from __future__ import annotations

import csv
import gzip
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, cast

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pytest

from connector import cli, config, formats, schema
from connector.emulator import EmulatorServer, build_world
from connector.errors import ConfigError
from connector.lake import rewrite, snapshots
from connector.pages import Page, RunInfo
from connector.sinks import FileInfo, PartitionedSink, SinkOptions
from connector.workers.normalize import normalize_page
from tests.helpers import DATE, WORLD, write_config
from tests.reference import expected_rows, multiset, normalise_actual

# -- a CSV format, made of module-level functions so that worker processes can unpickle it ----

_PARSE = pacsv.ParseOptions(newlines_in_values=True)
COUNTED: list[str] = []
"""The paths whose rows the CSV format counted (commit's verification, in this process)."""


def _flat(arrow_schema: pa.Schema) -> pa.Schema:
    """The CSV's columns: nested ones become JSON text."""
    return pa.schema(
        pa.field(f.name, pa.string() if pa.types.is_nested(f.type) else f.type, f.nullable)
        for f in arrow_schema
    )


def _encode(batch: pa.RecordBatch) -> pa.RecordBatch:
    columns = [
        pa.array(
            [
                None if v is None else orjson.dumps(v).decode()
                for v in column.to_pylist(maps_as_pydicts="strict")
            ],
            pa.string(),
        )
        if pa.types.is_nested(column.type)
        else column
        for column in batch.columns
    ]
    return pa.RecordBatch.from_arrays(columns, schema=_flat(batch.schema))


def _io(stream: pa.NativeFile) -> IO[bytes]:
    """pyarrow's own stream, which pyarrow.csv takes though its stubs say a Python file."""
    return cast("IO[bytes]", stream)


def _gzip(path: str) -> str | None:
    return "gzip" if CSV.compression_of(path) == "gzip" else None


def _names(fs: pafs.FileSystem, path: str) -> list[str]:
    with fs.open_input_stream(path, compression=_gzip(path)) as stream:
        return list(pacsv.open_csv(_io(stream), parse_options=_PARSE).schema.names)


def _batches(
    fs: pafs.FileSystem, path: str, types: dict[str, pa.DataType] | None = None
) -> Iterator[pa.RecordBatch]:
    """The file's rows as CSV holds them, read with ``types`` (by default: all as text)."""
    if types is None:
        types = {name: pa.string() for name in _names(fs, path)}
    convert = pacsv.ConvertOptions(
        column_types=types, strings_can_be_null=True, quoted_strings_can_be_null=False
    )
    with fs.open_input_stream(path, compression=_gzip(path)) as stream:
        yield from pacsv.open_csv(_io(stream), parse_options=_PARSE, convert_options=convert)


class CsvWriter:
    """One CSV file, gzip or not, written into an open stream."""

    def __init__(self, stream: pa.NativeFile, compression: str, arrow_schema: pa.Schema) -> None:
        self._stream = stream
        self._out = pa.CompressedOutputStream(stream, "gzip") if compression == "gzip" else stream
        self._csv = pacsv.CSVWriter(_io(self._out), _flat(arrow_schema))

    def write(self, batch: pa.RecordBatch, /) -> None:
        self._csv.write_batch(_encode(batch))

    def close(self) -> None:
        self._csv.close()
        if self._out is not self._stream:
            self._out.close()


def count_rows(fs: pafs.FileSystem, path: str) -> int:
    COUNTED.append(path)
    return sum(batch.num_rows for batch in _batches(fs, path))


def read_batches(
    fs: pafs.FileSystem, path: str, arrow_schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    for batch in _batches(fs, path, {f.name: f.type for f in _flat(arrow_schema)}):
        columns = [
            pa.array([None if v is None else orjson.loads(v) for v in column.to_pylist()], f.type)
            if pa.types.is_nested(f.type)
            else column
            for f, column in zip(
                arrow_schema, batch.select(arrow_schema.names).columns, strict=True
            )
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=arrow_schema)


def filter_rows(fs: pafs.FileSystem, source: str, target: str, drop: formats.RowPredicate) -> int:
    text = pa.schema((name, pa.string()) for name in _names(fs, source))
    rows = 0
    with fs.open_output_stream(target, compression=None) as raw:
        writer = CsvWriter(raw, CSV.compression_of(source), text)
        for batch in _batches(fs, source):
            table = pa.Table.from_batches([batch])
            for kept in table.filter(drop.keep(table)).to_batches():
                writer.write(kept)
                rows += kept.num_rows
        writer.close()
    return rows


CSV = formats.Format(
    name="csv",
    extensions={"none": ".csv", "gzip": ".csv.gz"},
    default_compression="none",
    open_writer=CsvWriter,
    count_rows=count_rows,
    read_batches=read_batches,
    filter_rows=filter_rows,
)


@pytest.fixture
def csv_format() -> Iterator[formats.Format]:
    """CSV, registered for one test."""
    COUNTED.clear()
    formats.register(CSV)
    yield CSV
    formats.unregister(CSV.name)


# -- exports against the emulator ---------------------------------------------------------------


def export(folder: Path, server: EmulatorServer, **sections: Any) -> int:
    config_path = write_config(folder, server, **sections)
    return cli.main(["--log-level", "warning", "run", "--config", str(config_path)])


def published(lake: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest of the snapshot published in ``lake``, and its rows, read file by file as
    the manifest lists them, each by its format."""
    fs = pafs.LocalFileSystem()
    document = snapshots.manifest(fs, str(lake), DATE)
    partition = f"{lake}/images/snapshot_date={DATE}"
    batches = snapshots.read_batches(fs, partition, document["files"], schema.FILE_SCHEMA)
    return document, [row for b in batches for row in b.to_pylist(maps_as_pydicts="strict")]


@pytest.fixture
def lake_emulator(make_emulator: Callable[..., EmulatorServer]) -> EmulatorServer:
    return make_emulator(build_world(**WORLD))  # type: ignore[arg-type]


def test_a_registered_format_exports_the_rows_parquet_does(
    csv_format: formats.Format, lake_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """An export to gzipped CSV, by two worker processes, publishes the rows a Parquet export
    publishes; commit counted the CSV files' rows through the registry, and a CSV reader that
    is not pyarrow's finds the same count in each file."""
    fetch = {"workers": 2, "page_size": 300}
    assert 0 == export(tmp_path / "parquet", lake_emulator, fetch=fetch)
    output = {"format": "csv", "compression": "gzip"}
    assert 0 == export(tmp_path / "csv", lake_emulator, fetch=fetch, output=output)
    _, parquet_rows = published(tmp_path / "parquet" / "lake")
    manifest, csv_rows = published(tmp_path / "csv" / "lake")
    assert ("csv", "gzip") == (manifest["format"], manifest["compression"])
    assert parquet_rows
    assert multiset([normalise_actual(r, "once") for r in parquet_rows]) == multiset(
        [normalise_actual(r, "once") for r in csv_rows]
    )
    assert manifest["rows"] == len(csv_rows) == sum(f["rows"] for f in manifest["files"])
    partition = tmp_path / "csv" / "lake" / "images" / f"snapshot_date={DATE}"
    listed = {Path(f["path"]).name for f in manifest["files"]}
    assert all(name.endswith(".csv.gz") for name in listed)
    assert listed <= {Path(path).name for path in COUNTED}
    for entry in manifest["files"]:
        with gzip.open(partition / entry["path"], "rt", newline="") as text:
            header, *rows = csv.reader(text)
        assert (schema.FILE_SCHEMA.names, entry["rows"]) == (header, len(rows))


def test_a_registered_format_is_filtered_for_a_partial_result(
    csv_format: formats.Format, make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Listings that fail after some of their pages were written leave none of their rows in
    the CSV files published: the partial-result rewrite filtered them through the registry."""
    server = make_emulator(build_world(**WORLD), fault_rate=0.15)  # type: ignore[arg-type]
    assert 3 == export(
        tmp_path,
        server,
        fetch={"max_attempts": 1, "page_size": 50, "platform_images": "every", "workers": 0},
        output={"format": "csv", "allow_partial": True, "min_complete_ratio": 0.0},
    )
    manifest, rows = published(tmp_path / "lake")
    ok = {
        (c["region"], c["compartment_id"]) for c in manifest["compartments"] if c["status"] == "ok"
    }
    failed = [c for c in manifest["compartments"] if c["status"] == "failed"]
    assert any(c["pages"] > 0 for c in failed), "some listing failed after its first page"
    expected = [
        r
        for r in expected_rows(server.world, "every")
        if (r["region"], r["_source_compartment_id"]) in ok
    ]
    assert multiset(expected) == multiset([normalise_actual(r, "every") for r in rows])
    assert manifest["rows"] == len(rows) == sum(f["rows"] for f in manifest["files"])
    assert all(f["path"].endswith(".csv") for f in manifest["files"])


# -- the registry -------------------------------------------------------------------------------


class TestLookups:
    @pytest.mark.parametrize(
        ("path", "name"),
        [
            ("region=r/part-00000.parquet", "parquet"),
            ("region=r/part-00000.ndjson", "ndjson"),
            ("region=r/part-00000-RUN.ndjson.gz", "ndjson"),
        ],
    )
    def test_a_file_is_known_by_its_extension(self, path: str, name: str) -> None:
        """The built-in formats name their files by extension, and are found by it."""
        assert formats.get(name) is formats.for_path(path)

    def test_the_longest_extension_wins(self) -> None:
        """A format whose extension ends another's (``.gz`` and ``.ndjson.gz``) does not take
        that format's files."""
        gz = formats.register(_variant("gz", {"none": ".gz"}))
        try:
            assert formats.NDJSON is formats.for_path("part-00000.ndjson.gz")
            assert gz is formats.for_path("part-00000.gz")
        finally:
            formats.unregister("gz")

    def test_unknown_names_and_files_are_refused(self) -> None:
        """Neither an unknown name nor an unknown extension falls back to some format."""
        with pytest.raises(ValueError, match=r"no output format is named 'xml' \(known: parquet"):
            formats.get("xml")
        with pytest.raises(ValueError, match="no registered output format"):
            formats.for_path("part-00000.xml")
        with pytest.raises(ValueError, match="no registered output format"):
            formats.for_path("part-00000.csv")  # CSV is known only while a test registers it

    def test_compressions_and_extensions(self) -> None:
        """Each format lists its compressions, their extensions and its default; a file's name
        tells its compression."""
        assert (("zstd", "snappy", "gzip", "none"), "zstd") == (
            formats.PARQUET.compressions,
            formats.PARQUET.default_compression,
        )
        assert (".ndjson.gz", "none") == (
            formats.NDJSON.extension("gzip"),
            formats.NDJSON.default_compression,
        )
        assert "gzip" == formats.NDJSON.compression_of("a/part-00000.ndjson.gz")
        assert "none" == formats.NDJSON.compression_of("a/part-00000.ndjson")

    def test_registered_lists_the_built_in_formats_first(self, csv_format: formats.Format) -> None:
        """The built-in formats, then those registered later, in order."""
        assert ["parquet", "ndjson", "csv"] == [f.name for f in formats.registered()]


class TestRegister:
    def test_a_name_or_an_extension_taken_is_refused(self) -> None:
        """Registering a name twice, or another format's extension, would change what files
        already written are read as."""
        with pytest.raises(ValueError, match="already registered"):
            formats.register(_variant("ndjson", {"none": ".json"}))
        with pytest.raises(ValueError, match=r"\.ndjson is ndjson's already"):
            formats.register(_variant("json", {"none": ".ndjson"}))
        assert ["parquet", "ndjson"] == [f.name for f in formats.registered()]

    def test_the_rejects_extension_is_refused(self) -> None:
        """``.jsonl`` names the rejects files, whatever the format."""
        with pytest.raises(ValueError, match="names the rejects files"):
            formats.register(_variant("jsonl", {"none": ".jsonl"}))

    @pytest.mark.parametrize(
        ("extensions", "default", "message"),
        [
            ({"none": ".x"}, "gzip", "not one of its compressions"),
            ({}, "none", "at least one compression"),
            ({"none": "x"}, "none", "start with a dot"),
        ],
        ids=["default", "none", "dot"],
    )
    def test_an_inconsistent_format_is_refused(
        self, extensions: dict[str, str], default: str, message: str
    ) -> None:
        """A format's default is one of its compressions, and its extensions are extensions."""
        with pytest.raises(ValueError, match=message):
            _variant("x", extensions, default)


def _variant(name: str, extensions: dict[str, str], default: str = "none") -> formats.Format:
    """A format with NDJSON's behaviour under another name and extensions."""
    ndjson = formats.NDJSON
    return formats.Format(
        name,
        extensions,
        default,
        ndjson.open_writer,
        ndjson.count_rows,
        ndjson.read_batches,
        ndjson.filter_rows,
    )


def pages_of(compartment: str, count: int) -> pa.RecordBatch:
    """``count`` rows converted from a page of ``compartment``'s listing."""
    world = build_world(seed=4, compartments=6)
    records = [i.json for c in world.listable_compartments()
               for i in world.listing(world.home_region, c.id)][:count]  # fmt: skip
    page = Page(b"[" + b",".join(records) + b"]", "us-ashburn-1", compartment, 1,
                datetime(2026, 11, 27, tzinfo=UTC), None)  # fmt: skip
    return normalize_page(page, RunInfo("r-formats", date(2026, 11, 27))).batch


@pytest.mark.parametrize(
    ("name", "compression"), [("parquet", "zstd"), ("ndjson", "none"), ("ndjson", "gzip")]
)
def test_the_partial_result_rewrite_filters_each_format(
    tmp_path: Path, name: str, compression: str
) -> None:
    """The rewrite drops a failed listing's rows from every format's files, and its rejects
    from the rejects file; the other rows stay, in their order, and NDJSON's lines as written."""
    fs = pafs.LocalFileSystem()
    fmt = formats.get(name)
    kept, dropped = (
        pages_of("ocid1.compartment.oc1..kept", 25),
        pages_of("ocid1.compartment.oc1..gone", 20),
    )
    sink = PartitionedSink(fs, str(tmp_path), SinkOptions(fmt, compression, row_group_rows=10))
    for batch in (kept.slice(0, 10), dropped, kept.slice(10)):
        sink.write("us-ashburn-1", batch)
    [data] = sink.close()
    before = (tmp_path / data.path).read_bytes()
    (tmp_path / "_rejects").mkdir()
    rejected = [{"region": "us-ashburn-1", "compartment_id": c, "reason": "x"} for c in
                ("ocid1.compartment.oc1..gone", "ocid1.compartment.oc1..kept")]  # fmt: skip
    (tmp_path / "_rejects/rejects-00000.jsonl").write_bytes(
        b"".join(orjson.dumps(r) + b"\n" for r in rejected)
    )
    listed = [data, FileInfo("_rejects/rejects-00000.jsonl", 2, 0)]
    failed = {
        ("us-ashburn-1", "ocid1.compartment.oc1..gone"),
        ("eu-frankfurt-1", "ocid1.compartment.oc1..kept"),
    }
    data, rejects = rewrite.drop_compartments(fs, str(tmp_path), listed, failed)
    assert (25, 1) == (data.rows, rejects.rows)
    assert data.bytes == (tmp_path / data.path).stat().st_size
    path = f"{tmp_path}/{data.path}"
    ids = [i for b in fmt.read_batches(fs, path, schema.SCHEMA) for i in b.column("id").to_pylist()]
    assert kept.column("id").to_pylist() == ids
    assert 25 == fmt.count_rows(fs, path)
    if name == "ndjson":  # the lines kept are the lines written
        text = gzip.decompress(before) if compression == "gzip" else before
        after = (tmp_path / data.path).read_bytes()
        after = gzip.decompress(after) if compression == "gzip" else after
        lines = text.splitlines(keepends=True)
        assert b"".join(lines[:10] + lines[30:]) == after
    [left] = (tmp_path / "_rejects/rejects-00000.jsonl").read_bytes().splitlines()
    assert "ocid1.compartment.oc1..kept" == orjson.loads(left)["compartment_id"]


class TestConfig:
    def test_a_registered_format_is_a_valid_choice(self, csv_format: formats.Format) -> None:
        """output.format takes a format registered after the configuration module was imported;
        its own default compression applies, and only its compressions are accepted."""
        output = config.load(None, ["output.format=csv"]).output
        assert ("csv", "none") == (output.format, output.effective_compression)
        assert (
            "gzip"
            == config.load(
                None, ["output.format=csv", "output.compression=gzip"]
            ).output.compression
        )
        with pytest.raises(ConfigError) as info:
            config.load(None, ["output.format=csv", "output.compression=zstd"])
        assert ("output.compression", "'zstd' does not apply to csv; use none or gzip") == (
            info.value.key,
            info.value.reason,
        )

    def test_an_unregistered_format_is_refused_naming_the_choices(self) -> None:
        """Without CSV registered, output.format = "csv" is refused as before: the key and the
        registered formats named."""
        with pytest.raises(ConfigError) as info:
            config.load(None, ["output.format=csv"])
        assert "output.format" == info.value.key
        assert "must be one of parquet, ndjson; got 'csv'" in info.value.reason

    def test_the_configuration_imports_no_pyarrow(self) -> None:
        """The configuration validates formats against the registry without loading pyarrow or
        the formats' code (a process that only builds settings, an Airflow DAG file, stays
        light)."""
        code = (
            "import sys; from connector import config; "
            "print(config.OutputSettings(format='ndjson').effective_compression); "
            "print(sorted(m for m in ('pyarrow', 'connector.sinks.parquet', "
            "'connector.sinks.ndjson') if m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert ["none", "[]"] == out.split()


def test_csv_round_trip_keeps_nested_columns(tmp_path: Path) -> None:
    """The test's CSV keeps what Parquet keeps, nested columns and nulls included (so that the
    export comparison above compares formats, not this encoding)."""
    table = pa.table(
        {
            "tags": pa.array([{"a": {"b": "c"}}, None], schema.SCHEMA.field("defined_tags").type),
            "name": pa.array(["", None]),
            "at": pa.array([1, None], pa.timestamp("us", "UTC")),
        }
    )
    path = f"{tmp_path}/x.csv"
    fs = pafs.LocalFileSystem()
    with fs.open_output_stream(path) as raw:
        writer = CsvWriter(raw, "none", table.schema)
        writer.write(table.to_batches()[0])
        writer.close()
    assert 2 == count_rows(fs, path)
    [batch] = read_batches(fs, path, table.schema)
    assert table.to_pylist() == batch.to_pylist()
