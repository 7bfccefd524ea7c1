"""Honest summaries: what a run reports is what it published, for every output kind.

The rows and files of ``RunOutcome``, the summary line, the ``run.finished`` event and
``_runs/RUN_ID.json`` equal the published manifest's, and a Delta or Iceberg run of a tenancy
reports the rows a plain Parquet run of it does (the table's commit counts them); Delta's files
are written with ``output.compression``, as the manifest says.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

import connector
from connector import cli
from connector.emulator import EmulatorServer
from connector.lake import layout, storage, tables
from tests.helpers import captured_events, settings_for

DATE = "2026-11-27"


@pytest.mark.parametrize("table_format", ["delta", "iceberg"])
def test_tables_report_what_plain_parquet_reports(
    emulator: EmulatorServer, tmp_path: Path, table_format: str
) -> None:
    """A Delta or Iceberg run of a tenancy reports the rows a plain Parquet run of it reports,
    in ``RunOutcome``, the summary line, ``run.finished``, ``_runs/RUN_ID.json`` and the
    manifest; its files are those of the table's commit."""
    reported: dict[str, dict[str, Any]] = {}
    for kind, output in (("parquet", {}), (table_format, {"table_format": table_format})):
        lake = tmp_path / kind
        with captured_events(logging.INFO) as events:
            outcome = connector.run(settings_for(emulator, lake, output=output))
        assert outcome.published, outcome.message
        assert outcome.manifest is not None
        [finished] = [e for e in events if e["event"] == "run.finished"]
        summary = dict(f.split("=", 1) for f in cli.summary_line(outcome).split(": ")[1].split())
        record = orjson.loads(Path(layout.run_record(str(lake), outcome.run_id)).read_bytes())
        partition = lake / "images" / f"snapshot_date={DATE}"
        manifest = orjson.loads((partition / "_manifest.json").read_bytes())
        rows = {
            outcome.manifest.rows,
            int(summary["rows"]),
            finished["rows"],
            record["rows"],
            manifest["rows"],
        }
        files = {outcome.manifest.file_count, int(summary["files"]), finished["files"]}
        assert 1 == len(rows), rows
        assert 1 == len(files), files
        reported[kind] = {"rows": rows.pop(), "files": files.pop(), "manifest": manifest}
    plain, table = reported["parquet"], reported[table_format]
    assert plain["rows"] > 0
    assert plain["rows"] == table["rows"]
    assert len(plain["manifest"]["files"]) == plain["files"]
    assert table["manifest"]["table"]["files"] == table["files"] > 0
    assert table["manifest"]["table"]["rows"] == table["rows"]
    assert (table["rows"], table["files"]) == table_counts(tmp_path / table_format, table_format)


def table_counts(lake: Path, table_format: str) -> tuple[int, int]:
    """The rows and data files of the date, as the table's own reader finds them."""
    if table_format == "delta":
        from deltalake import DeltaTable

        delta = DeltaTable(str(lake / "images"))
        files = [f for f in delta.file_uris() if f"/snapshot_date={DATE}/" in f]
        rows = sum(pq.ParquetFile(f.removeprefix("file://")).metadata.num_rows for f in files)
        return rows, len(files)
    store = storage.resolve(str(lake), {})
    iceberg = tables.IcebergWriter(store, {}).table(create=False)
    tasks = list(iceberg.scan(row_filter=f"snapshot_date = '{DATE}'").plan_files())
    return sum(t.file.record_count for t in tasks), len(tasks)


@pytest.mark.parametrize(("compression", "codec"), [("", "ZSTD"), ("gzip", "GZIP")])
def test_delta_files_take_output_compression(
    emulator: EmulatorServer, tmp_path: Path, compression: str, codec: str
) -> None:
    """The Parquet files of a Delta table are written with ``output.compression`` (zstd by
    default, as the manifest says), not delta-rs's default, snappy."""
    from deltalake import DeltaTable

    lake = tmp_path / "lake"
    output = {"table_format": "delta", "compression": compression}
    outcome = connector.run(settings_for(emulator, lake, output=output))
    assert outcome.published, outcome.message
    assert outcome.manifest is not None
    assert (compression or "zstd") == outcome.manifest.compression
    files = DeltaTable(str(lake / "images")).file_uris()
    assert files
    codecs = set()
    for uri in files:
        metadata = pq.ParquetFile(uri.removeprefix("file://")).metadata
        for group in range(metadata.num_row_groups):
            row_group = metadata.row_group(group)
            codecs |= {row_group.column(c).compression for c in range(row_group.num_columns)}
    assert {codec} == codecs
