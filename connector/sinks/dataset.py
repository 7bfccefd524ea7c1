"""Small datasets written whole: ``compartments`` and ``changes`` beside ``images``.

They are written in the run's format and compression, as one file series of their own, so a
reader treats every dataset of the lake the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.fs as pafs

from connector.sinks import FileInfo, SinkOptions, closed_size


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
    file_name = name + options.format.extension(options.compression)
    path = f"{directory}/{file_name}"
    rows = 0
    raw = fs.open_output_stream(path, compression=None)
    try:
        writer = options.format.open_writer(raw, options.compression, arrow_schema)
        for batch in batches:
            writer.write(batch)
            rows += batch.num_rows
        writer.close()
    except BaseException:
        raw.close()
        raise
    return FileInfo(file_name, rows, closed_size(fs, path, raw))
