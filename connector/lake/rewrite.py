"""The partial-result rewrite: staged files without the rows of listings that failed.

Rows stream to disk as pages arrive, before a listing is known to be complete; when some listing
fails and a partial result is still published (``output.allow_partial``), its rows come out
here, a row group (or a chunk of lines) at a time, so memory stays flat. Each file is filtered
by its format (``connector.formats``); rejects files by ``connector.sinks.rejects``.
"""

from __future__ import annotations

from typing import Any, cast

import pyarrow as pa
import pyarrow.fs as pafs

from connector import formats
from connector.lake.snapshots import region_of
from connector.sinks import FileInfo, rejects


def drop_compartments(
    fs: pafs.FileSystem, partition: str, files: list[FileInfo], failed: set[tuple[str, str]]
) -> list[FileInfo]:
    """Rewrite staged files (data or rejects) without the rows of failed (region, compartment)
    listings; the files as rewritten."""
    rejects_of_failed = _listed(failed, "region", "compartment_id")
    kept: list[FileInfo] = []
    for info in files:
        path = f"{partition}/{info.path}"
        temporary = path + ".filtering"
        if rejects.is_rejects(info.path):
            rows = rejects.filter_rows(fs, path, temporary, rejects_of_failed)
        else:
            # A data file's region is its folder's (region=R/), not a column of a plain file.
            region = region_of(info.path)
            rows_of_failed = _in_compartments([c for name, c in failed if name == region])
            rows = formats.for_path(info.path).filter_rows(fs, path, temporary, rows_of_failed)
        fs.move(temporary, path)
        kept.append(FileInfo(info.path, rows, fs.get_file_info(path).size or 0))
    return kept


def _listed(failed: set[tuple[str, str]], region: str, compartment: str) -> formats.RowPredicate:
    """The rows whose ``region`` and ``compartment`` columns name one of the ``failed``
    listings, tested a region at a time."""
    by_region: dict[str, list[str]] = {}
    for name, compartment_id in failed:
        by_region.setdefault(name, []).append(compartment_id)

    def test(table: pa.Table) -> formats.Mask:
        import pyarrow.compute as pc  # not loaded by a run that publishes whole

        drop: Any = pa.repeat(False, table.num_rows)
        for name, compartments in by_region.items():
            listed = pc.is_in(table[compartment], value_set=pa.array(compartments))
            drop = pc.or_(drop, pc.and_(pc.equal(table[region], pa.scalar(name)), listed))
        return cast(formats.Mask, drop)

    columns = pa.schema([(region, pa.string()), (compartment, pa.string())])
    return formats.RowPredicate(columns, test)


def _in_compartments(failed: list[str]) -> formats.RowPredicate:
    """The rows of one region's data file whose ``_source_compartment_id`` is one of the
    region's ``failed`` listings."""
    compartments = pa.array(sorted(failed), pa.string())

    def test(table: pa.Table) -> formats.Mask:
        import pyarrow.compute as pc

        return cast(formats.Mask, pc.is_in(table["_source_compartment_id"], value_set=compartments))

    columns = pa.schema([("_source_compartment_id", pa.string())])
    return formats.RowPredicate(columns, test)
