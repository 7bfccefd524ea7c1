"""The partial-result rewrite: staged files without the rows of listings that failed.

Rows stream to disk as pages arrive, before a listing is known to be complete; when some listing
fails and a partial result is still published (``output.allow_partial``), its rows come out
here, a row group (or line) at a time, so memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connector.sinks import FileInfo


def drop_compartments(
    fs: pafs.FileSystem, partition: str, files: list[FileInfo], failed: set[tuple[str, str]]
) -> list[FileInfo]:
    """Rewrite staged files without the rows of failed (region, compartment) listings.

    Rows stream to disk as pages arrive, before a listing is known to be complete; when some
    listing fails and a partial result is still published, its rows come out here, a row group
    (or line) at a time, so memory stays flat.
    """
    kept: list[FileInfo] = []
    for info in files:
        path = f"{partition}/{info.path}"
        temporary = path + ".filtering"
        if info.path.endswith(".parquet"):
            rows = _filter_parquet(fs, path, temporary, failed)
        else:
            rows = _filter_lines(fs, path, temporary, failed, info.path.endswith(".gz"))
        fs.move(temporary, path)
        kept.append(FileInfo(info.path, rows, fs.get_file_info(path).size or 0))
    return kept


def _filter_parquet(
    fs: pafs.FileSystem, source: str, target: str, failed: set[tuple[str, str]]
) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    from connector.sinks import parquet

    rows = 0
    with fs.open_input_file(source) as raw:
        reader = pq.ParquetFile(raw)
        metadata = reader.metadata
        compression = (
            metadata.row_group(0).column(0).compression if metadata.num_row_groups else "ZSTD"
        )
        codec = str(compression).lower()
        codec = "none" if codec == "uncompressed" else codec
        with (
            fs.open_output_stream(target, compression=None) as out,
            parquet.writer(out, codec, reader.schema_arrow) as writer,
        ):
            by_region: dict[str, list[str]] = {}
            for region, compartment in failed:
                by_region.setdefault(region, []).append(compartment)
            for index in range(metadata.num_row_groups):
                table = reader.read_row_group(index)
                drop: Any = pa.repeat(False, table.num_rows)
                for region, compartments in by_region.items():
                    listed = pc.is_in(
                        table["_source_compartment_id"], value_set=pa.array(compartments)
                    )
                    drop = pc.or_(
                        drop, pc.and_(pc.equal(table["_region"], pa.scalar(region)), listed)
                    )
                table = table.filter(pc.invert(drop))
                if table.num_rows:
                    writer.write_table(table, row_group_size=table.num_rows)
                    rows += table.num_rows
    return rows


def _filter_lines(
    fs: pafs.FileSystem, source: str, target: str, failed: set[tuple[str, str]], gzip: bool
) -> int:
    import pyarrow as pa

    rows = 0
    with fs.open_input_stream(source, compression="gzip" if gzip else None) as src:
        raw = fs.open_output_stream(target, compression=None)
        out = pa.CompressedOutputStream(raw, "gzip") if gzip else raw
        with out:
            for line in _lines(src):
                row = orjson.loads(line)
                region = row.get("_region", row.get("region"))
                compartment = row.get("_source_compartment_id", row.get("compartment_id"))
                if (region, compartment) in failed:
                    continue
                out.write(line + b"\n")
                rows += 1
    return rows


def _lines(stream: Any, chunk_size: int = 1 << 20) -> Iterable[bytes]:
    """Lines of a pyarrow input stream, read a chunk at a time."""
    pending = b""
    while chunk := stream.read(chunk_size):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line)
    if pending:
        yield pending
