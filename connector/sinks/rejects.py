"""Rejects: records that could not be converted, as JSON lines under the partition's ``_rejects/``.

Each one carries why and where it came from (region, compartment, page, opc-request-id), so
that it can be reported upstream; see ``connector.pages.Reject``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow.fs as pafs

from connector.pages import Reject
from connector.sinks import FileInfo


class RejectWriter:
    """Appends rejects, as JSON lines, under the staged partition's ``_rejects/``."""

    def __init__(self, fs: pafs.FileSystem, partition: str, prefix: str, number: int = 0) -> None:
        self.fs = fs
        self.directory = f"{partition}/_rejects"
        self.name = f"rejects-{prefix}{number:05d}.jsonl"
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

    def close(self) -> list[FileInfo]:
        """Close; the file written, if any, relative to the partition."""
        if self._stream is None:
            return []
        size = self._stream.tell()
        self._stream.close()
        self._stream = None
        return [FileInfo(f"_rejects/{self.name}", self.count, size)]
