"""Rejects: records that could not be converted, as JSON lines under the partition's ``_rejects/``.

Each one carries why and where it came from (region, compartment, page, opc-request-id), so
that it can be reported upstream; see ``connector.pages.Reject``. Rejects are no output format
(whatever ``output.format`` is, they are JSON lines): commit's verification and the
partial-result rewrite know them by their extension, ``.jsonl``, which no format's files may
have, and read them as NDJSON's lines are read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs

from connector.formats import REJECTS_EXTENSION, RowPredicate
from connector.pages import Reject
from connector.sinks import FileInfo, ndjson


def is_rejects(path: str) -> bool:
    """Whether ``path`` names a rejects file (``.jsonl``, not ``.ndjson``: a ``*.ndjson`` glob
    over the data never picks rejects up)."""
    return path.endswith(REJECTS_EXTENSION)


def count_rows(fs: pafs.FileSystem, path: str) -> int:
    """The rejects a file holds: its lines."""
    with fs.open_input_stream(path, compression=None) as stream:
        return ndjson.count_lines(stream)


def filter_rows(fs: pafs.FileSystem, source: str, target: str, drop: RowPredicate) -> int:
    """Write ``target``: the rejects of ``source`` that ``drop`` does not select."""
    return ndjson.filter_lines(fs, source, target, drop, None)


class RejectWriter:
    """Appends rejects, as JSON lines, under the staged partition's ``_rejects/``."""

    def __init__(self, fs: pafs.FileSystem, partition: str, prefix: str, number: int = 0) -> None:
        self.fs = fs
        self.directory = f"{partition}/_rejects"
        self.name = f"rejects-{prefix}{number:05d}{REJECTS_EXTENSION}"
        self.count = 0
        self._stream: Any = None

    def write(self, rejects: Iterable[Reject]) -> None:
        """Append rejects."""
        for reject in rejects:
            if self._stream is None:
                self.fs.create_dir(self.directory, recursive=True)
                self._stream = self.fs.open_output_stream(
                    f"{self.directory}/{self.name}", compression=None
                )
            self._stream.write(reject.to_json() + b"\n")
            self.count += 1

    def discard(self) -> list[str]:
        """After a failure: close as far as it goes; the file begun, if any, to be deleted."""
        if self._stream is None:
            return []
        with contextlib.suppress(Exception):  # a full disk, a stream that failed before
            self._stream.close()
        self._stream = None
        return [f"_rejects/{self.name}"]

    def close(self) -> list[FileInfo]:
        """Close; the file written, if any, relative to the partition."""
        if self._stream is None:
            return []
        size = self._stream.tell()
        self._stream.close()
        self._stream = None
        return [FileInfo(f"_rejects/{self.name}", self.count, size)]
