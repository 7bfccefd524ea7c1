"""Sinks: each region's rows roll over into numbered files at the row limit, none lost."""

from __future__ import annotations

import gzip
import io
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from connector import formats
from connector.emulator import build_world
from connector.pages import Page, RunInfo
from connector.sinks import FileInfo, PartitionedSink, SinkOptions, ndjson
from connector.workers.normalize import normalize_page

RUN = RunInfo("r-sinks", date(2026, 11, 27))


@pytest.fixture(scope="module")
def rows() -> pa.RecordBatch:
    """45 converted rows of one region."""
    world = build_world(seed=4, compartments=6)
    records = [i.json for c in world.listable_compartments()
               for i in world.listing(world.home_region, c.id)][:45]  # fmt: skip
    page = Page(b"[" + b",".join(records) + b"]", world.home_region, "c", 1,
                datetime(2026, 11, 27, tzinfo=UTC), None)  # fmt: skip
    batch = normalize_page(page, RUN).batch
    assert 45 == batch.num_rows
    return batch


def write(
    folder: Path, options: SinkOptions, batch: pa.RecordBatch, numbering: tuple[int, int] = (0, 1)
) -> list[FileInfo]:
    sink = PartitionedSink(pafs.LocalFileSystem(), folder.as_posix(), options, numbering=numbering)
    for start, size in ((0, 7), (7, 30), (37, 8)):  # batches as pages of uneven size
        sink.write("us-ashburn-1", batch.slice(start, size))
    return sink.close()


class TestParquet:
    def test_regions_share_one_row_group_budget(self, tmp_path: Path, rows: pa.RecordBatch) -> None:
        """Four regions interleaved: the rows held in memory, all regions together, never pass
        one row group (memory does not grow with the number of regions), and none is lost."""
        options = SinkOptions(formats.PARQUET, "zstd", row_group_rows=20, max_rows_per_file=1000)
        sink = PartitionedSink(pafs.LocalFileSystem(), tmp_path.as_posix(), options)
        regions = ["us-ashburn-1", "eu-frankfurt-1", "uk-london-1", "ap-tokyo-1"]
        held = []
        for start in range(0, 45, 3):
            for region in regions:
                sink.write(region, rows.slice(start, 3))
                held.append(sum(s.buffered for s in sink._series.values()))
        files = sink.close()
        assert max(held) <= 20
        assert [45] * 4 == [f.rows for f in sorted(files, key=lambda f: f.path)]
        for region in regions:
            table = pq.read_table(tmp_path / f"region={region}")
            assert rows.column("id").to_pylist() == table.column("id").to_pylist()

    def test_rolls_at_the_row_limit(self, tmp_path: Path, rows: pa.RecordBatch) -> None:
        """45 rows at 25 a file: two files of 25 and 20 rows, row groups of at most 10, the rows
        in the order written."""
        options = SinkOptions(formats.PARQUET, "zstd", row_group_rows=10, max_rows_per_file=25)
        files = write(tmp_path, options, rows)
        assert [
            ("region=us-ashburn-1/part-00000.parquet", 25),
            ("region=us-ashburn-1/part-00001.parquet", 20),
        ] == [(f.path, f.rows) for f in files]
        ids = []
        for info in files:
            path = tmp_path / info.path
            assert path.stat().st_size == info.bytes
            metadata = pq.ParquetFile(path).metadata
            assert all(metadata.row_group(i).num_rows <= 10 for i in range(metadata.num_row_groups))
            ids += pq.read_table(path, columns=["id"])["id"].to_pylist()
        assert rows.column("id").to_pylist() == ids

    def test_writers_sharing_a_directory_interleave_numbers(
        self, tmp_path: Path, rows: pa.RecordBatch
    ) -> None:
        """Writer 1 of 2 numbers its files 1, 3, …: workers never collide on a name."""
        options = SinkOptions(formats.PARQUET, "zstd", row_group_rows=10, max_rows_per_file=25)
        files = write(tmp_path, options, rows, numbering=(1, 2))
        assert [
            "region=us-ashburn-1/part-00001.parquet",
            "region=us-ashburn-1/part-00003.parquet",
        ] == [f.path for f in files]

    def test_distinct_columns_are_written_plain_the_rest_with_a_dictionary(
        self, tmp_path: Path, rows: pa.RecordBatch
    ) -> None:
        """Ids, names and creation times are all different: no dictionary is built for them.
        Every other column but the booleans keeps one, nested leaves (tag keys and values)
        included."""
        options = SinkOptions(formats.PARQUET, "zstd", row_group_rows=100, max_rows_per_file=100)
        (info,) = write(tmp_path, options, rows)
        group = pq.ParquetFile(tmp_path / info.path).metadata.row_group(0)
        encodings = {
            group.column(i).path_in_schema: group.column(i).encodings
            for i in range(group.num_columns)
        }
        dictionary = {path for path, used in encodings.items() if "RLE_DICTIONARY" in used}
        assert {"id", "display_name", "time_created"}.isdisjoint(dictionary)
        assert {
            "lifecycle_state",
            "base_image_id",
            "defined_tags.key_value.key",
            "defined_tags.key_value.value.key_value.value",
            "freeform_tags.key_value.value",
            "image_volume_details__data_volumes.list.element.display_name",
        } <= dictionary
        booleans = {f.name for f in rows.schema if pa.types.is_boolean(f.type)}  # bit-packed
        assert set(encodings) - dictionary == {"id", "display_name", "time_created"} | booleans


class TestNdjson:
    @pytest.mark.parametrize(
        ("compression", "suffix"), [("none", ".ndjson"), ("gzip", ".ndjson.gz")]
    )
    def test_rolls_at_the_row_limit(
        self, tmp_path: Path, rows: pa.RecordBatch, compression: str, suffix: str
    ) -> None:
        """45 rows at 25 a file: 25 lines, then 20; gzip files are whole gzip streams."""
        options = SinkOptions(formats.NDJSON, compression, max_rows_per_file=25)
        files = write(tmp_path, options, rows)
        assert [
            (f"region=us-ashburn-1/part-00000{suffix}", 25),
            (f"region=us-ashburn-1/part-00001{suffix}", 20),
        ] == [(f.path, f.rows) for f in files]
        ids = []
        for info in files:
            raw = (tmp_path / info.path).read_bytes()
            assert len(raw) == info.bytes
            text = gzip.decompress(raw) if compression == "gzip" else raw
            ids += [orjson.loads(line)["id"] for line in text.splitlines()]
        assert rows.column("id").to_pylist() == ids

    def test_no_rows_no_file(self, tmp_path: Path, rows: pa.RecordBatch) -> None:
        """An empty batch opens no file."""
        sink = PartitionedSink(
            pafs.LocalFileSystem(), tmp_path.as_posix(), SinkOptions(formats.NDJSON)
        )
        sink.write("us-ashburn-1", rows.slice(0, 0))
        assert [] == sink.close()
        assert [] == list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"", []),
        (b"a", [b"a"]),
        (b"a\n", [b"a"]),
        (b"a\nb", [b"a", b"b"]),
        (b"a\nbc\n", [b"a", b"bc"]),
        (b"\n" * 5, []),
        (b"a\n\nb\n", [b"a", b"b"]),
    ],
)
def test_read_lines(data: bytes, lines: list[bytes]) -> None:
    """Lines are newline-terminated; a last line without one still counts, an empty line is no
    row (what commit counts is what a reader reads), whatever the chunks' boundaries."""
    for chunk_size in (1, 2, 1 << 20):
        read = [line for chunk in ndjson.read_lines(io.BytesIO(data), chunk_size) for line in chunk]
        assert lines == read
    assert len(lines) == ndjson.count_lines(io.BytesIO(data))
