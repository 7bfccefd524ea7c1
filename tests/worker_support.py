"""A worker's setup for the tests that drive worker processes directly."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pyarrow.fs as pafs

from connector.lake import layout
from connector.pages import RunInfo
from connector.sinks import SinkOptions
from connector.workers.page import WorkerSetup

RUN = RunInfo("r-workers", date(2026, 11, 27))


def setup(base: Path, mode: str = "once") -> WorkerSetup:
    return WorkerSetup(
        run=RUN,
        platform_mode=mode,
        fs=pafs.LocalFileSystem(),
        layout=layout.Layout(str(base), RUN.run_id, "2026-11-27"),
        options=SinkOptions(),
        file_prefix="part-",
        reject_prefix="",
    )
