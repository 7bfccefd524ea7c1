"""One name per fact: every reader sees ``snapshot_date`` and ``region`` exactly once, the date
typed as a date, in plain files (Hive-style folders) and in Delta and Iceberg tables; a snapshot
written with the older names (``_snapshot_date`` and ``_region`` inside the files) still diffs
against a new one.

Each test exports from the emulator and reads the lake with the reader a user would, the way
docs/guides/querying.md shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from connector import cli
from connector.emulator import EmulatorServer, build_world
from connector.lake import storage, tables
from tests.helpers import DATE, WORLD, manifest_of, run, write_config

PARTITION_TYPES: dict[str, pa.DataType] = {"snapshot_date": pa.date32(), "region": pa.string()}
PARTITIONING = ds.HivePartitioning(pa.schema(PARTITION_TYPES))
"""The partitioning docs/guides/querying.md gives pyarrow readers."""


@pytest.fixture
def exported(make_emulator: Callable[..., EmulatorServer], tmp_path: Path) -> Path:
    """A plain Parquet lake with everything a folder holds besides data: rejects (some records
    are malformed), a manifest and marker, the compartments and changes datasets."""
    server = make_emulator(build_world(**{**WORLD, "bad_records": 0.05}))  # type: ignore[arg-type]
    assert 0 == run(write_config(tmp_path, server, output={"changes": True}))
    assert manifest_of(tmp_path)["rejects"] > 0
    assert (tmp_path / "lake" / "images" / f"snapshot_date={DATE}" / "_rejects").is_dir()
    return tmp_path / "lake"


def once(names: list[str]) -> None:
    """Each partition column exactly once, and no older name."""
    assert (1, 1) == (names.count("snapshot_date"), names.count("region")), names
    assert not {"_snapshot_date", "_region"} & set(names), names


def test_plain_files_hold_neither_partition_column(exported: Path) -> None:
    """The data files leave the date and the region to their folder names."""
    files = sorted((exported / "images").rglob("*.parquet"))
    assert files
    for path in files:
        names = pq.read_schema(path).names
        assert not {"snapshot_date", "region", "_snapshot_date", "_region"} & set(names), path
    for dataset in ("compartments", "changes"):
        (part,) = (exported / dataset).rglob("*.parquet")
        assert "snapshot_date" not in pq.read_schema(part).names


def test_duckdb_hive_partitioning(exported: Path) -> None:
    """DuckDB's hive_partitioning finds each once, the date as a DATE."""
    relation = duckdb.sql(
        f"SELECT * FROM read_parquet('{exported}/images/*/*/*.parquet', hive_partitioning = true)"
    )
    assert relation is not None
    once(relation.columns)
    types = dict(zip(relation.columns, map(str, relation.types), strict=True))
    assert ("DATE", "VARCHAR") == (types["snapshot_date"], types["region"])
    query = (
        f"SELECT DISTINCT snapshot_date, region FROM read_parquet("
        f"'{exported}/images/*/*/*.parquet', hive_partitioning = true) ORDER BY 2"
    )
    answer = duckdb.sql(query)
    assert answer is not None
    found = answer.fetchall()
    assert [(DATE, "eu-frankfurt-1"), (DATE, "us-ashburn-1")] == [(str(d), r) for d, r in found]


def test_pyarrow_dataset_over_the_folder(exported: Path) -> None:
    """pyarrow.dataset over the dataset's folder (``_manifest.json``, ``_SUCCESS`` and
    ``_rejects/`` are skipped: names starting with ``_``) with the documented partitioning."""
    dataset = ds.dataset(exported / "images", format="parquet", partitioning=PARTITIONING)
    once(dataset.schema.names)
    assert pa.date32() == dataset.schema.field("snapshot_date").type
    assert manifest_of(exported.parent)["rows"] == dataset.count_rows()
    companions = ds.dataset(exported / "compartments", format="parquet", partitioning="hive")
    assert 1 == companions.schema.names.count("snapshot_date")


def test_polars_folder_scan(exported: Path) -> None:
    """polars over the folder's Parquet files (the glob leaves out ``_manifest.json`` and
    ``_SUCCESS``, which a bare folder scan trips over, and the rejects' JSON lines)."""
    frame = pl.scan_parquet(f"{exported}/images/**/*.parquet", hive_partitioning=True)
    schema = frame.collect_schema()
    once(schema.names())
    assert schema["snapshot_date"] == pl.Date
    assert schema["region"] == pl.String
    counted = frame.group_by("region").len().sort("region").collect()
    assert manifest_of(exported.parent)["rows"] == counted["len"].sum()
    assert ["eu-frankfurt-1", "us-ashburn-1"] == counted["region"].to_list()


@pytest.mark.parametrize("table_format", ["delta", "iceberg"])
def test_tables_partition_by_the_same_names(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, table_format: str
) -> None:
    """A Delta or Iceberg table's columns and partition fields are ``snapshot_date`` (a date)
    and ``region``, each once, as its own reader sees them."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    assert 0 == run(write_config(tmp_path, server, output={"table_format": table_format}))
    store = storage.resolve(str(tmp_path / "lake"))
    if table_format == "delta":
        from deltalake import DeltaTable

        delta = DeltaTable(str(tmp_path / "lake" / "images"))
        assert ["snapshot_date", "region"] == delta.metadata().partition_columns
        data = delta.to_pyarrow_table()
    else:
        iceberg = tables.IcebergWriter(store, {}).table(create=False)
        spec = iceberg.spec()
        assert ["snapshot_date", "region"] == [field.name for field in spec.fields]
        data = iceberg.scan().to_arrow()
    once(data.schema.names)
    assert pa.date32() == data.schema.field("snapshot_date").type
    assert manifest_of(tmp_path)["rows"] == data.num_rows
    assert {"eu-frankfurt-1", "us-ashburn-1"} == set(data["region"].to_pylist())


def _as_older_version(partition: Path) -> None:
    """Rewrite a published partition's files as versions before the one-name layout wrote
    them: ``_region`` and ``_snapshot_date`` inside each file."""
    day = partition.name.removeprefix("snapshot_date=")
    for path in partition.glob("region=*/*.parquet"):
        table = pq.read_table(path)
        region = path.parent.name.removeprefix("region=")
        rows = table.num_rows
        table = table.add_column(25, "_region", pa.array([region] * rows, pa.string()))
        table = table.add_column(
            29, "_snapshot_date", pa.array([pa.scalar(day).cast(pa.date32())] * rows)
        )
        pq.write_table(table, path)


def test_changes_and_diff_across_the_older_layout(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A snapshot written with the older names and one written now: the same tenancy makes
    no change, in the changes dataset and in ``diff``."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    day1, day2 = "2026-11-26", DATE
    assert 0 == run(write_config(tmp_path, server, snapshot_date=day1))
    older = tmp_path / "lake" / "images" / f"snapshot_date={day1}"
    _as_older_version(older)
    assert "_region" in pq.read_schema(next(older.glob("region=*/*.parquet"))).names
    assert 0 == run(write_config(tmp_path, server, snapshot_date=day2, output={"changes": True}))
    changes = ds.dataset(tmp_path / "lake" / "changes", format="parquet", partitioning="hive")
    assert 0 == changes.count_rows()
    config = write_config(tmp_path, server)
    capsys.readouterr()
    code = cli.main(
        ["--log-level", "error", "diff", "--config", str(config), "--from", day1, "--to", day2]
    )
    captured = capsys.readouterr()
    assert 0 == code, captured
    assert f"diff {day1} → {day2}: added=0 removed=0 changed=0" in captured.err, captured


def test_a_table_of_the_older_layout_is_refused_with_a_message(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Delta table partitioned by ``_snapshot_date`` and ``_region`` (as older versions wrote
    it) is not written to: the run fails naming the cause and what to do."""
    from deltalake import write_deltalake

    old = pa.table(
        {
            "id": ["a"],
            "_region": ["us-ashburn-1"],
            "_snapshot_date": pa.array([pa.scalar("2026-11-26").cast(pa.date32())]),
        }
    )
    write_deltalake(
        str(tmp_path / "lake" / "images"), old, partition_by=["_snapshot_date", "_region"]
    )
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    capsys.readouterr()
    code = run(write_config(tmp_path, server, output={"table_format": "delta"}))
    captured = capsys.readouterr()
    assert 0 != code
    text = captured.out + captured.err
    assert "written by an older version" in text, text
    assert "_snapshot_date" in text, text
    assert "new output.uri" in text, text
