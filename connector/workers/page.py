"""The page worker: converts a listing's pages and writes them (in a thread or a process).

A worker owns the listings it is given. It parses and converts their pages (``normalize``),
drops ids a listing repeats, sets platform images aside, and writes rows and rejects into its
own files under the run's staging directory. It is synchronous and knows nothing of sockets or
event loops; ``connector.workers.coordinator`` feeds it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import cast

import pyarrow as pa
import pyarrow.fs as pafs

from connector.lake import door
from connector.lake.layout import Layout
from connector.pages import ListingError, Page, PageError, RunInfo, WorkItem
from connector.sinks import FileInfo, PartitionedSink, SinkOptions
from connector.sinks.rejects import RejectWriter


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What every worker needs to know; sent once, when it starts."""

    run: RunInfo
    platform_mode: str
    fs: pafs.FileSystem
    layout: Layout
    options: SinkOptions
    file_prefix: str
    reject_prefix: str
    heartbeat_s: float = 60.0
    """A worker process says it is alive four times in this span (``fetch.worker_heartbeat_s``)."""
    custom_ids: bool = False
    """Whether each listing's result carries its custom images' ids (``fetch.strategy =
    "search"`` compares them with Resource Search's)."""


@dataclass(frozen=True, slots=True)
class ListingResult:
    """A listing's outcome, as its worker saw it."""

    item: WorkItem
    pages: int
    rows: int
    duplicates: int
    rejects: int
    error: ListingError | None
    platform_rows: int
    """Platform rows set aside as this region's candidate (``once``), 0 if none."""
    custom_ids: frozenset[str] | None = None
    """The ids of the listing's custom images, when ``WorkerSetup.custom_ids`` asks for them."""


@dataclass(frozen=True, slots=True)
class Closed:
    """What a worker wrote, and the platform rows it added for the regions it donated."""

    files: list[FileInfo]
    reject_files: list[FileInfo]
    donated: dict[WorkItem, int]
    busy_s: float = 0.0
    """Time spent converting and writing pages (the manifest's ``convert`` timing)."""


@dataclass(slots=True)
class _Listing:
    seen: set[str] = field(default_factory=set)
    custom: set[str] = field(default_factory=set)
    platform: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0
    rejects: int = 0
    error: ListingError | None = None


class PageWorker:
    """One worker's listings and files. Synchronous: it runs in a thread or its own process."""

    def __init__(self, setup: WorkerSetup, index: int = 0, count: int = 1) -> None:
        self.setup = setup
        self.sink = PartitionedSink(
            setup.fs,
            setup.layout.staged_partition,
            shared_budget(setup.options, count),
            setup.file_prefix,
            numbering=(index, count),
        )
        self.rejects = RejectWriter(
            setup.fs, setup.layout.staged_partition, setup.reject_prefix, index
        )
        # Imported here: a process that only fetches (workers in processes) never needs it.
        from connector.workers.normalize import normalize_page

        self._normalize = normalize_page
        self._listings: dict[WorkItem, _Listing] = {}
        # Under `once`: per region, the first complete listing's platform rows, until the
        # coordinator says which worker donates them.
        self._candidates: dict[str, tuple[WorkItem, list[pa.RecordBatch]]] = {}
        self.busy_s = 0.0

    def page(self, page: Page) -> str | None:
        """Convert a page and write its rows; or, when the page itself cannot be parsed (cut
        short), write nothing and say why: the fetcher asks for it again (the verdict)."""
        with self._busy():
            return self._page(page)

    @contextmanager
    def _busy(self) -> Iterator[None]:
        """Count the time inside as converting and writing (``busy_s``)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.busy_s += time.perf_counter() - started

    def _page(self, page: Page) -> str | None:
        item = page.item
        listing = self._listings.setdefault(item, _Listing())
        if listing.error is not None:
            return None
        mode = self.setup.platform_mode
        # Platform rows are needed only from listings that may still donate a region's: under
        # `once`, until this worker holds a candidate for the region; never under `skip`.
        keep_platform = mode == "every" or (mode == "once" and item.region not in self._candidates)
        try:
            result = self._normalize(page, self.setup.run, platform=keep_platform)
        except PageError as exc:
            return str(exc)
        if result.rejects:
            listing.rejects += len(result.rejects)
            self.rejects.write(result.rejects)
        batch = _dedupe(listing, result.batch, result.ids)
        if mode != "every":
            is_platform = cast(pa.BooleanArray, batch.column("_is_platform"))
            if is_platform.true_count:
                if mode == "once":
                    listing.platform.append(batch.filter(is_platform))
                batch = batch.filter(_invert(is_platform))
        if batch.num_rows:
            listing.rows += batch.num_rows
            self.sink.write(item.region, batch)
            if self.setup.custom_ids:
                listing.custom.update(_custom_ids(batch))
        return None

    def end(self, item: WorkItem, pages: int, error: ListingError | None) -> ListingResult:
        """The listing is over (``error`` if fetching it failed): its result."""
        listing = self._listings.pop(item, None) or _Listing()
        error = error or listing.error
        platform_rows = 0
        if error is None and listing.platform and item.region not in self._candidates:
            self._candidates[item.region] = (item, listing.platform)
            platform_rows = sum(b.num_rows for b in listing.platform)
        return ListingResult(
            item,
            pages,
            listing.rows if error is None else 0,
            listing.duplicates,
            listing.rejects,
            error,
            platform_rows,
            frozenset(listing.custom) if self.setup.custom_ids and error is None else None,
        )

    def flush(self) -> None:
        """Write the rows held for row groups now (``Flush``), as smaller row groups."""
        with self._busy():
            self.sink.flush()

    def close(self, donate: frozenset[str]) -> Closed:
        """Write the platform rows of the regions this worker donates; close every file."""
        donated: dict[WorkItem, int] = {}
        with self._busy():
            for region in sorted(donate):
                item, batches = self._candidates[region]
                for batch in batches:
                    self.sink.write(region, batch)
                donated[item] = sum(b.num_rows for b in batches)
            self._candidates.clear()
            files, rejects = self.sink.close(), self.rejects.close()
        return Closed(files, rejects, donated, self.busy_s)

    def discard(self) -> None:
        """Close files after a failure, as far as a full disk lets them, and delete every one
        begun. The coordinator removes the run's staging without waiting for a worker whose
        boot process died (killed); on an object store a file closed after that removal (its
        upload completed) would stay behind."""
        begun = self.sink.discard() + self.rejects.discard()  # a full disk stops no deletion
        layout = self.setup.layout
        staged = (f"{layout.staged_partition}/{path}" for path in begun)
        door.discard_files(self.setup.fs, layout.base, staged)


def _custom_ids(batch: pa.RecordBatch) -> list[str]:
    """The ids of a batch's custom images (under ``every`` it holds platform images too)."""
    is_platform = cast(pa.BooleanArray, batch.column("_is_platform"))
    if is_platform.true_count:
        batch = batch.filter(_invert(is_platform))
    return cast(list[str], batch.column("id").to_pylist())  # id is not null


def _invert(mask: pa.BooleanArray) -> pa.BooleanArray:
    import pyarrow.compute as pc  # loaded with the normalizer; not in a fetch-only process

    inverted: pa.BooleanArray = pc.invert(mask)
    return inverted


ROW_GROUP_FLOOR = 16 * 1024
PROCESS_ROW_BUDGET = 48 * 1024
"""Rows the worker processes hold in memory together (about 600 bytes a row as Arrow)."""


def shared_budget(options: SinkOptions, workers: int) -> SinkOptions:
    """Sink options for one of ``workers`` writer processes.

    A writer holds a row group in memory until it is full (and its regions share that budget,
    see ``PartitionedSink``), so the processes share one budget of ``PROCESS_ROW_BUDGET`` rows,
    which keeps the process tree's peak memory within its goal
    (``docs/performance.md``, "Memory"): with two, each writes row groups of 24k rows.
    The floor keeps row groups worth reading when there are many workers (16k rows with three or
    four).
    """
    rows = max(ROW_GROUP_FLOOR, PROCESS_ROW_BUDGET // workers)
    return replace(options, row_group_rows=min(rows, options.row_group_rows))


def _dedupe(listing: _Listing, batch: pa.RecordBatch, ids: list[str]) -> pa.RecordBatch:
    """Drop ids this listing already returned (items shift between pages while paging)."""
    seen = listing.seen
    if seen.isdisjoint(ids) and len(set(ids)) == len(ids):
        seen.update(ids)
        return batch
    keep = []
    for image_id in ids:
        keep.append(image_id not in seen)
        seen.add(image_id)
    listing.duplicates += keep.count(False)
    return batch.filter(pa.array(keep, pa.bool_()))
