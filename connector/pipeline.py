"""The run: discovery, concurrent listings, conversion, and commit, orchestrated.

Data flows one way through bounded anyio memory streams, so a slow stage slows the ones
before it and memory stays flat however large the tenancy::

    fetch tasks (a pool per region, each listing paged in order, bounded by the limiter)
        │  Page / ListingEnd, and AllStarted once the last listing has begun
        ▼
    dispatcher (``feed``: hands each listing's pages, in order, to the worker that owns it)
        │
        ▼
    workers (processes, one per core, or a thread: JSON → Arrow, per-listing de-duplication
             and platform handling, Parquet or NDJSON under the run's staging directory)

A listing is either complete or absent: rows stream to disk as pages arrive, and if a listing
later fails, its rows are removed before anything is published (or the run publishes nothing).
What the run is made of is decided before it starts (``connector.prepare``); what it counts,
``connector.tally``; its staging, ``connector.lake.attempt``; its commit,
``connector.lake.committing``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from connector import errors, limits
from connector._version import __version__
from connector.errors import EXIT_OK, EXIT_PARTIAL, ConnectorError, OciApiError, TransportError
from connector.lake import committing, housekeeping, lock, snapshots
from connector.lake.attempt import Staging
from connector.lake.manifest import Manifest, RequestCounts, RunOutcome, Timings, utc_now
from connector.lean import quiet_gc
from connector.oci import compartments, discovery
from connector.oci.fetch import AllStarted, Fetcher, Message
from connector.oci.sharedrate import SharedRates
from connector.pages import Page, WorkItem
from connector.prepare import RunContext, client_for
from connector.sinks import FileInfo
from connector.tally import Progress, Tally
from connector.workers import coordinator, spawn
from connector.workers.coordinator import Workers

log = structlog.get_logger("connector.pipeline")

Producer = Callable[[MemoryObjectSendStream[Message]], Coroutine[Any, Any, None]]
"""A coroutine that feeds pages (and the end of each listing) into the pipeline."""

PROGRESS_EVERY_S = 0.25


async def feed(workers: Workers, produce: Producer) -> None:
    """Hand what ``produce`` sends to the workers, each listing to its own worker."""
    # A few pages: the workers' sockets hold more, and fetch tasks hold one each.
    send, receive = anyio.create_memory_object_stream[Message](4)
    async with anyio.create_task_group() as group:
        group.start_soon(produce, send)
        async with receive:
            async for message in receive:
                if isinstance(message, Page):
                    await workers.page(message)
                elif isinstance(message, AllStarted):
                    await workers.flush()
                else:
                    await workers.end(message.item, message.pages, message.error)


class Export:
    """One run of the export, or one shard of it, as ``context`` describes it; ``progress``,
    when given, is called with a ``Progress`` every quarter second while it fetches."""

    def __init__(
        self,
        context: RunContext,
        *,
        launched: spawn.Launched | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.context = context
        settings = context.settings
        self.tally = Tally()
        self.staging = Staging(context.store, context.layout, context.owner, context.shard)
        self.discovery: discovery.Discovery | None = None
        self._progress = progress
        self._timings: dict[str, float] = {}
        self._listing_pages: dict[WorkItem, int] = {}
        # Workers the CLI launched early are the ones there are.
        processes = len(launched.sockets) if launched else settings.fetch.worker_processes()
        self.workers = coordinator.create(
            context.workers, processes, self.tally.listing_done, launched
        )
        index, count = context.shard
        # Shards of the run on this machine pace and adapt as one (opened in ``_stage``).
        self.shared_rates = (
            SharedRates(context.run_id, index, context.rate_share) if count > 1 else None
        )
        rates = self.shared_rates.state if self.shared_rates is not None else None
        self.client = client_for(settings, context.credentials, context.rate_share, rates)
        self.fetcher = Fetcher(
            self.client,
            context.endpoints,
            settings.fetch.page_size,
            context.filters,
            per_region=settings.fetch.concurrency,
            verdicts=self.workers.verdicts,
        )

    @property
    def run_id(self) -> str:
        """The run's id (shared by its shards)."""
        return self.context.run_id

    def progress(self) -> Progress:
        """Where the run stands now."""
        counters = self.client.counters
        return self.tally.snapshot(counters.sent, counters.throttled)

    async def start_workers(self) -> None:
        """Start the worker processes now rather than with the first page."""
        await self.workers.start()

    async def run(self) -> RunOutcome:
        """Discover, fetch, write, and (unless sharded) commit; one writer at a time.

        A run that publishes holds its snapshot date's lock from start to end; a shard holds
        its own (index, count) lock of the run. A failure leaves ``_runs/RUN_ID.json``.
        """
        index, count = self.context.shard
        # Every log line of the run carries these, from every task it starts.
        with structlog.contextvars.bound_contextvars(run_id=self.run_id, shard=f"{index}/{count}"):
            started_at = utc_now()
            guard = self._lock()
            guard.acquire()
            try:
                return await self._locked_run(started_at, guard)
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.staging.discard, self.context.publish_now)
                if not isinstance(exc, lock.LockHeld):  # the holder's record is its own
                    self.staging.record_failure(self._manifest(started_at, [], []), _reason(exc))
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    await self.workers.reap()
                guard.release()

    def _lock(self) -> lock.Lock:
        ctx = self.context
        if ctx.publish_now:
            return lock.date_lock(ctx.store.fs, ctx.store.base, ctx.snapshot_date, ctx.owner)
        return lock.shard_lock(ctx.store.fs, ctx.store.base, ctx.run_id, *ctx.shard, ctx.owner)

    async def _locked_run(self, started_at: str, guard: lock.Lock) -> RunOutcome:
        ctx = self.context
        held = (ctx.snapshot_date,) if ctx.publish_now else ()
        tidy = partial(housekeeping.start, ctx.store, ctx.owner, held=held, table=ctx.table)
        await anyio.to_thread.run_sync(tidy)
        self.staging.claim()
        log.info(
            "run.start",
            attempt=ctx.owner.attempt,
            snapshot_date=ctx.snapshot_date,
            version=__version__,
        )
        files, rejects = await self._stage()
        failed = self.tally.failed
        if failed and ctx.settings.output.allow_partial:
            drop = partial(self.staging.drop_listings, files, rejects, failed)
            files, rejects = await anyio.to_thread.run_sync(drop)
        companions = await anyio.to_thread.run_sync(self._stage_companions)
        manifest = self._manifest(started_at, files, rejects, companions)
        self.staging.write_shard_manifest(manifest)
        if not ctx.publish_now:
            code = EXIT_PARTIAL if failed else EXIT_OK
            elapsed = time.monotonic() - self.tally.started
            return RunOutcome(
                ctx.run_id, code, False, manifest, "staged; publish with `commit`", elapsed
            )
        outcome = committing.commit_run(
            ctx.settings, ctx.run_id, store=ctx.store, held=guard, started=self.tally.started
        )
        if not outcome.published:
            # Nothing can commit this attempt later (it was the whole run): remove it now.
            self.staging.discard(whole_run=True)
        return outcome

    async def _stage(self) -> tuple[list[FileInfo], list[FileInfo]]:
        """Fetch, convert and write into this attempt's staging, within the run's deadline."""
        deadline = self.context.settings.fetch.run_deadline_s
        reporting = anyio.CancelScope()
        try:
            with anyio.fail_after(deadline or None), self.shared_rates or contextlib.nullcontext():
                async with (
                    self._discarded_on_failure(),
                    self.client,
                    anyio.create_task_group() as g,
                ):
                    # Worker processes start (and import pyarrow) while discovery runs.
                    g.start_soon(self.workers.serve)
                    g.start_soon(self._report_progress, reporting)
                    read = anyio.Event()
                    g.start_soon(self._read_listing_pages, read)
                    discovering = time.monotonic()
                    items = await self.work_items()
                    fetching = self.tally.fetch_started = time.monotonic()
                    self._timings["discovery_s"] = fetching - discovering
                    self.tally.listings_total = len(items)
                    await read.wait()
                    with self._parsing_here():
                        await feed(self.workers, partial(self._fetch_all, items))
                    written = await self._close()
                    reporting.cancel()
        except TimeoutError:
            raise limits.DeadlineExceeded(
                f"the run passed its deadline of {deadline:g} s (fetch.run_deadline_s); "
                "nothing was published"
            ) from None
        return written

    async def _report_progress(self, scope: anyio.CancelScope) -> None:
        with scope:
            while self._progress is not None:
                self._progress(self.progress())
                await anyio.sleep(PROGRESS_EVERY_S)

    def _parsing_here(self) -> contextlib.AbstractContextManager[None]:
        """A quiet GC where pages are parsed in this process (a worker thread); with worker
        processes this one only fetches, and a raised threshold would let the reference cycles
        of thousands of requests pile up (``docs/performance.md``)."""
        if isinstance(self.workers, coordinator.ThreadWorkers):
            return quiet_gc()
        return contextlib.nullcontext()

    async def work_items(self) -> list[WorkItem]:
        """The (region, compartment) listings of this shard; the shard's platform-image donor
        regions go to the workers."""
        ctx = self.context
        try:
            found = await discovery.discover_run(self.client, ctx.settings, ctx.credentials)
        except (OciApiError, TransportError) as exc:
            if self.client.aborted is not None:
                raise self.client.aborted from None
            raise exc from None
        self.discovery = found
        donors = discovery.donor_regions(found.items, *ctx.shard)
        self.workers.donations.exclude({item.region for item in found.items} - donors)
        return discovery.shard_items(found.items, *ctx.shard)

    async def _read_listing_pages(self, done: anyio.Event) -> None:
        """The pages each listing took in the last snapshot, read while discovery runs: the
        fetch takes the long ones early (``fetch.long_listings_early``)."""
        store = self.context.store
        self._listing_pages = await anyio.to_thread.run_sync(
            snapshots.listing_pages, store.fs, store.base
        )
        done.set()

    async def _fetch_all(
        self, items: list[WorkItem], send: MemoryObjectSendStream[Message]
    ) -> None:
        started = time.monotonic()
        await self.fetcher.fetch_all(items, send, self._listing_pages)
        self._timings["fetch_s"] = time.monotonic() - started

    async def _close(self) -> tuple[list[FileInfo], list[FileInfo]]:
        """Close the workers; the donor listings of platform images get their rows counted."""
        closed = await self.workers.close()
        self._timings["convert_s"] = closed.busy_s
        for item, rows in closed.donated.items():
            self.tally.donated(item, rows)
        return closed.files, closed.reject_files

    @asynccontextmanager
    async def _discarded_on_failure(self) -> AsyncIterator[None]:
        """On any failure, stop the workers and remove the staging (even when cancelled), then
        raise what caused it (see ``_cause``)."""
        try:
            yield
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                try:
                    await self.workers.discard()
                finally:
                    await anyio.to_thread.run_sync(self.staging.remove)
            cause = _cause(exc)
            if cause is exc:
                raise
            raise cause from None

    def _stage_companions(self) -> dict[str, tuple[FileInfo, ...]]:
        """The ``compartments`` dataset of this run, staged by one shard (every shard
        discovered the same tree)."""
        found = self.discovery
        if self.context.shard[0] != 0 or found is None or found.tree is None:
            return {}
        table = compartments.table(
            found.tree,
            frozenset(item.compartment_id for item in found.items),
            found.reasons,
            snapshot_date=self.context.workers.run.snapshot_date,
            run_id=self.run_id,
        )
        options = self.context.workers.options
        return {"compartments": self.staging.stage_dataset("compartments", table, options)}

    def _manifest(
        self,
        started_at: str,
        files: list[FileInfo],
        rejects: list[FileInfo],
        companions: dict[str, tuple[FileInfo, ...]] | None = None,
    ) -> Manifest:
        counters = self.client.counters
        requests = RequestCounts(counters.sent, counters.retried, counters.throttled)
        return self.context.manifest(
            started_at,
            files,
            rejects,
            companions or {},
            self.tally.listings(),
            requests,
            Timings(**self._timings),
        )


def _reason(exc: BaseException) -> str:
    """Why a run ended without publishing, as its record says."""
    cause = _cause(exc)
    if isinstance(cause, anyio.get_cancelled_exc_class() | KeyboardInterrupt):
        return "interrupted"
    return f"{type(cause).__name__}: {cause}"


def _cause(exc: BaseException) -> BaseException:
    """What a failed run raises: the first ``ConnectorError`` among the task groups' errors
    (a worker that died also breaks the streams that fed it; that is not the news), unless
    the run was interrupted, which must propagate as it is."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = list(errors.leaves(exc))
    if any(isinstance(e, (KeyboardInterrupt, SystemExit)) for e in leaves):
        return exc
    return next((e for e in leaves if isinstance(e, ConnectorError)), exc)
