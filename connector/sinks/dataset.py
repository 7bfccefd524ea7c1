"""Small datasets written whole: ``compartments`` and ``changes`` beside ``images``.

They are written in the run's format and compression, as one file series of their own, so a
reader treats every dataset of the lake the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs

from connector.sinks import FileInfo, SinkOptions, extension


def write_batches(
    fs: pafs.FileSystem,
    directory: str,
    batches: Iterable[pa.RecordBatch],
    arrow_schema: pa.Schema,
    options: SinkOptions,
    *,
    name: str = "part-00000",
) -> FileInfo:
    """Stream ``batches`` into ``directory/name`` plus the format's extension (a file with no
    rows when there are none, so that readers find the dataset's schema)."""
    fs.create_dir(directory, recursive=True)
    file_name = name + extension(options)
    path = f"{directory}/{file_name}"
    rows = 0
    raw = fs.open_output_stream(path, compression=None)
    if options.format == "parquet":
        from connector.sinks.parquet import writer

        with raw, writer(raw, options.compression, arrow_schema) as parquet:
            for batch in batches:
                parquet.write_batch(batch)
                rows += batch.num_rows
    else:
        from connector.sinks.ndjson import encode_rows

        out = pa.CompressedOutputStream(raw, "gzip") if options.compression == "gzip" else raw
        with out:  # closing the gzip stream writes its trailer and closes the file
            for batch in batches:
                out.write(encode_rows(batch))
                rows += batch.num_rows
    return FileInfo(file_name, rows, fs.get_file_info(path).size or 0)
