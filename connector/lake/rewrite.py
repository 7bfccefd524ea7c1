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
from connector.sinks import FileInfo, rejects


def drop_compartments(
    fs: pafs.FileSystem, partition: str, files: list[FileInfo], failed: set[tuple[str, str]]
) -> list[FileInfo]:
    """Rewrite staged files (data or rejects) without the rows of failed (region, compartment)
    listings; the files as rewritten."""
    rows_of_failed = _listed(failed, "_region", "_source_compartment_id")
    rejects_of_failed = _listed(failed, "region", "compartment_id")
    kept: list[FileInfo] = []
    for info in files:
        path = f"{partition}/{info.path}"
        temporary = path + ".filtering"
        if rejects.is_rejects(info.path):
            rows = rejects.filter_rows(fs, path, temporary, rejects_of_failed)
        else:
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
