"""Reading published snapshots back: which dates exist, and their rows as record batches.

A reader follows the manifest, never a glob: the manifest lists exactly the files of the
commit that wrote it, so a partition caught mid-commit on an object store (old files not yet
deleted, new ones already copied) still reads as one snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs

from connector import formats
from connector.errors import PublishError
from connector.lake import layout
from connector.lake.durable import read_json
from connector.pages import WorkItem

_DATE_DIR = re.compile(r"^snapshot_date=(\d{4}-\d{2}-\d{2})$")
_PLAIN = re.compile(r"[^\t\n]*")


def published_dates(fs: pafs.FileSystem, base: str, dataset: str = "images") -> list[str]:
    """Snapshot dates of ``dataset`` published complete (with ``_SUCCESS``), oldest first."""
    root = layout.dataset_root(base, dataset)
    entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    dates = []
    for entry in entries:
        match = _DATE_DIR.match(entry.base_name)
        if match and layout.exists(fs, f"{entry.path}/{layout.SUCCESS}"):
            dates.append(match.group(1))
    return sorted(dates)


@dataclass(frozen=True, slots=True)
class PublishedSnapshot:
    """One published snapshot of ``images``, as its manifest and marker describe it."""

    snapshot_date: str
    status: Literal["complete", "partial"]
    """``complete`` (``_SUCCESS``) or ``partial`` (``_PARTIAL``: some listings failed)."""
    rows: int
    files: int
    run_id: str
    finished_at: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe, for ``oci-images snapshots --format json``."""
        return {
            "snapshot_date": self.snapshot_date,
            "status": self.status,
            "rows": self.rows,
            "files": self.files,
            "run_id": self.run_id,
            "finished_at": self.finished_at,
        }


def published(fs: pafs.FileSystem, base: str, dataset: str = "images") -> list[PublishedSnapshot]:
    """Every published snapshot of ``dataset``, oldest first, read through its manifest.

    A folder without a marker (a commit in progress or killed before its commit point) is not
    published and is left out; so is one whose manifest cannot be read.
    """
    found = []
    for day, folder, marker in _marked(fs, base, dataset):
        try:
            document = read_json(fs, f"{folder}/{layout.MANIFEST}")
        except (OSError, ValueError):
            continue
        if not isinstance(document, dict):
            continue
        table = document.get("table")
        files = table.get("files") if isinstance(table, dict) else None
        found.append(
            PublishedSnapshot(
                snapshot_date=day,
                status="complete" if marker == layout.SUCCESS else "partial",
                rows=int(document.get("rows", 0)),
                files=int(files if files is not None else len(document.get("files", ()))),
                run_id=str(document.get("run_id", "")),
                finished_at=str(document.get("finished_at", "")),
            )
        )
    return found


def _marked(fs: pafs.FileSystem, base: str, dataset: str) -> Iterator[tuple[str, str, str]]:
    """(date, folder, marker) of every partition of ``dataset`` with a marker, oldest first."""
    root = layout.dataset_root(base, dataset)
    entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    for entry in sorted(entries, key=lambda e: e.base_name):
        match = _DATE_DIR.match(entry.base_name)
        if match is None:
            continue
        for marker in layout.MARKERS:
            if layout.exists(fs, f"{entry.path}/{marker}"):
                yield match.group(1), entry.path, marker
                break


def previous_date(
    fs: pafs.FileSystem, base: str, before: str, dataset: str = "images"
) -> str | None:
    """The latest complete snapshot date earlier than ``before``, if any."""
    earlier = [d for d in published_dates(fs, base, dataset) if d < before]
    return earlier[-1] if earlier else None


def manifest(fs: pafs.FileSystem, base: str, snapshot_date: str, dataset: str = "images") -> Any:
    """The manifest of a published snapshot; ``PublishError`` when there is none."""
    path = f"{layout.partition_of(base, dataset, snapshot_date)}/{layout.MANIFEST}"
    if not layout.exists(fs, path):
        there = [day for day, _, _ in _marked(fs, base, dataset)]
        raise PublishError(
            f"no published snapshot of {dataset} for {snapshot_date} in {base}; "
            + _dates_text(there)
        )
    return read_json(fs, path)


def _dates_text(dates: list[str], most: int = 10) -> str:
    """The published dates, for a message: all of them, or the newest ``most``."""
    if not dates:
        return "none is published yet"
    if len(dates) <= most:
        return "published: " + ", ".join(dates)
    newest = ", ".join(dates[-most:])
    return f"published: {len(dates)} dates, the newest {newest} (oci-images snapshots lists all)"


def listing_pages(fs: pafs.FileSystem, base: str) -> dict[WorkItem, int]:
    """How many pages each listing took in the newest snapshot of ``images`` (complete or
    partial), for listings of more than one page: what the next run orders its listings by.

    A hint, never a reason to fail: no snapshot yet, a manifest that cannot be read, or entries
    of another shape give fewer hints or none.
    """
    try:
        root = layout.dataset_root(base, layout.IMAGES)
        entries = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return {}
    days = sorted((e.base_name for e in entries if _DATE_DIR.match(e.base_name)), reverse=True)
    for day in days[:2]:  # the newest may be a partition a killed commit left without manifest
        try:
            kept = _longer_listings(read_json(fs, f"{root}/{day}/{layout.MANIFEST}"))
        except (OSError, ValueError):
            continue
        pages = {}
        for line in kept.split("\n") if kept else ():
            region, compartment, count = line.split("\t")
            pages[WorkItem(region, compartment)] = int(count)
        return pages
    return {}


def _longer_listings(manifest: Any) -> str:
    """``region\tcompartment\tpages`` lines for the manifest's listings of more than one page.

    One text, so that nothing made while the parsed manifest lives outlives it: objects kept
    from among its own would pin the memory of all of it, which the process never gives back
    (about 15 MB for 20,000 listings; 3 MB this way).
    """
    listings = manifest.get("compartments") if isinstance(manifest, dict) else None
    lines = []
    for entry in listings if isinstance(listings, list) else ():
        if not isinstance(entry, dict):
            continue
        region, compartment = entry.get("region"), entry.get("compartment_id")
        count = entry.get("pages")
        if not (isinstance(region, str) and isinstance(compartment, str)):
            continue
        if type(count) is int and count > 1 and _PLAIN.fullmatch(region + compartment):
            lines.append(f"{region}\t{compartment}\t{count}")
    return "\n".join(lines)


def read_batches(
    fs: pafs.FileSystem, partition: str, files: list[dict[str, Any]], schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """The rows of the data files a manifest lists, under ``partition``, a batch at a time
    (read by each file's format), with a ``region`` column where the file's folder names it.

    Plain files leave the region to their folder (``region=R/``), so it is added back here, as
    a Hive-aware reader would; a table's files and files written before this layout (which hold
    ``_region`` and ``_snapshot_date`` too: a reader picks the columns it compares) read the
    same way.
    """
    for entry in files:
        relative = str(entry["path"])
        path = f"{partition}/{relative}"
        region = region_of(relative)
        for batch in formats.for_path(path).read_batches(fs, path, schema):
            if region is None or "region" in batch.schema.names:
                yield batch
            else:
                yield batch.append_column(
                    pa.field("region", pa.string(), nullable=False),
                    pa.repeat(pa.scalar(region, pa.string()), batch.num_rows),
                )


def region_of(relative: str) -> str | None:
    """The region a data file's folder names (``region=R/part-….parquet``), if any."""
    folder = relative.rpartition("/")[0]
    for part in folder.split("/"):
        if part.startswith("region="):
            return part.removeprefix("region=")
    return None
