"""The run: discovery, concurrent listings, conversion, and commit, orchestrated.

Data flows one way through bounded anyio memory streams, so a slow stage slows the ones
before it and memory stays flat however large the tenancy::

    fetch tasks (a pool per region, each listing paged in order, bounded by the limiter)
        │  Page / ListingEnd, and AllStarted once the last listing has begun
        ▼
    dispatcher (``Workers.feed``: each listing's pages, in order, to the worker that owns it)
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

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from functools import partial

import anyio
import anyio.to_thread
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from connector import errors, logs
from connector.errors import EXIT_OK, EXIT_PARTIAL, ConnectorError, OciApiError, TransportError
from connector.lake import committing
from connector.lake.attempt import Companions, Files, Staging
from connector.lake.manifest import Manifest, RequestCounts, RunOutcome, Timings, utc_now
from connector.limits import DeadlineExceeded
from connector.oci import discovery, fetch
from connector.pages import Message, WorkItem
from connector.prepare import RunContext
from connector.tally import Progress, Tally
from connector.workers import coordinator

log = logs.get_logger("connector.pipeline")

PROGRESS_EVERY_S = 0.25


class Export:
    """One run of the export, or one shard of it, as ``context`` describes it; ``progress``,
    when given, is called with a ``Progress`` every quarter second while it fetches."""

    def __init__(
        self,
        context: RunContext,
        *,
        launched: coordinator.Launched | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.context = context
        self.tally = Tally()
        self.staging = Staging(context.store, context.layout, context.owner, context.shard)
        self.discovery: discovery.Discovery | None = None
        self._progress = progress
        self._timings: dict[str, float] = {}
        # Workers the CLI launched early are the ones there are.
        count = len(launched.sockets) if launched else context.settings.fetch.worker_processes()
        self.workers = coordinator.create(context.workers, count, self.tally.listing_done, launched)
        self.session = fetch.Session.for_run(
            context.settings,
            context.credentials,
            context.endpoints,
            context.filters,
            run_id=context.run_id,
            shard=context.shard,
            rate_share=context.rate_share,
            verdicts=self.workers.verdicts,
        )
        self.client = self.session.client

    def progress(self) -> Progress:
        """Where the run stands now."""
        counters = self.client.counters
        return self.tally.snapshot(counters.sent, counters.throttled)

    async def run(self) -> RunOutcome:
        """Discover, fetch, write, and (unless sharded) commit; one writer at a time.

        A run that publishes holds its snapshot date's lock from start to end; a shard holds
        its own (index, count) lock of the run. A failure leaves ``_runs/RUN_ID.json``.
        """
        ctx = self.context
        shard = f"{ctx.shard[0]}/{ctx.shard[1]}"
        # Every log line of the run carries these, from every task it starts.
        with structlog.contextvars.bound_contextvars(run_id=ctx.run_id, shard=shard):
            started_at = utc_now()
            self.staging.acquire(ctx.publish_now)
            try:
                outcome = await self._locked_run(started_at)
                log.info("run.finished", **outcome.totals())
                return outcome
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self.staging.discard, ctx.publish_now)
                self.staging.record_failure(self._manifest(started_at, [], []), _reason(exc))
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    await self.workers.reap()
                self.staging.release()

    async def _locked_run(self, started_at: str) -> RunOutcome:
        ctx = self.context
        await anyio.to_thread.run_sync(self.staging.begin, ctx.publish_now, ctx.table)
        files, rejects = await self._stage()
        self.tally.report_failures()
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
            staged = "staged; publish with `commit`"
            return RunOutcome(ctx.run_id, code, False, manifest, staged, elapsed)
        outcome = committing.commit_run(
            ctx.settings,
            ctx.run_id,
            store=ctx.store,
            held=self.staging.held,
            started=self.tally.started,
        )
        if not outcome.published:
            # Nothing can commit this attempt later (it was the whole run): remove it now.
            self.staging.discard(whole_run=True)
        return outcome

    async def _stage(self) -> tuple[Files, Files]:
        """Fetch, convert and write into this attempt's staging, within the run's deadline."""
        deadline = self.context.settings.fetch.run_deadline_s
        reporting = anyio.CancelScope()
        try:
            with anyio.fail_after(deadline or None), self.session.shared_rates or nullcontext():
                async with (
                    self._discarded_on_failure(),
                    self.client,
                    anyio.create_task_group() as group,
                ):
                    # Worker processes start (and import pyarrow) while discovery runs.
                    group.start_soon(self.workers.serve)
                    group.start_soon(self._report_progress, reporting)
                    hint = await anyio.to_thread.run_sync(self.staging.listing_pages)
                    discovering = time.monotonic()
                    items = await self.work_items()
                    fetching = self.tally.fetch_started = time.monotonic()
                    self._timings["discovery_s"] = fetching - discovering
                    self.tally.listings_total = len(items)
                    with self.workers.parsing():
                        await self.workers.feed(partial(self._fetch_all, items, hint))
                    written = await self._close()
                    reporting.cancel()
        except TimeoutError:
            raise DeadlineExceeded(
                f"the run passed its deadline of {deadline:g} s (fetch.run_deadline_s); "
                "nothing was published"
            ) from None
        return written

    async def _report_progress(self, scope: anyio.CancelScope) -> None:
        with scope:
            while self._progress is not None:
                self._progress(self.progress())
                await anyio.sleep(PROGRESS_EVERY_S)

    async def work_items(self) -> list[WorkItem]:
        """This shard's listings; its platform-image donor regions go to the workers."""
        ctx = self.context
        try:
            found = await discovery.discover_run(self.client, ctx.settings, ctx.credentials)
        except (OciApiError, TransportError) as exc:
            if self.client.aborted is not None:
                raise self.client.aborted from None
            raise exc from None
        self.discovery = self.tally.discovery = found
        donors = discovery.donor_regions(found.items, *ctx.shard)
        self.workers.donations.exclude({item.region for item in found.items} - donors)
        self.session.fetcher.search = found.search_for(*ctx.shard)
        return found.listings(*ctx.shard)

    async def _fetch_all(
        self,
        items: list[WorkItem],
        hint: dict[WorkItem, int],
        send: MemoryObjectSendStream[Message],
    ) -> None:
        started = time.monotonic()
        await self.session.fetcher.fetch_all(items, send, hint)
        self._timings["fetch_s"] = time.monotonic() - started

    async def _close(self) -> tuple[Files, Files]:
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

    def _stage_companions(self) -> Companions:
        """The ``compartments`` dataset, staged by shard 0 (every shard discovered the same
        tree)."""
        setup = self.context.workers
        found = self.discovery
        rows = found.compartments(self.context.run_id) if found else None
        if self.context.shard[0] != 0 or rows is None:
            return {}
        return {"compartments": self.staging.stage_dataset("compartments", rows, setup.options)}

    def _manifest(
        self, started: str, files: Files, rejects: Files, companions: Companions | None = None
    ) -> Manifest:
        sent = self.client.counters
        requests = RequestCounts(sent.sent, sent.retried, sent.throttled)
        timings = Timings(**self._timings)
        listings, lag = self.tally.listings(), self.tally.search_lag()
        skipped = self.discovery.skipped if self.discovery else 0
        return self.context.manifest(
            started, files, rejects, companions or {}, listings, requests, timings, skipped, lag
        )


def _reason(exc: BaseException) -> str:
    """Why a run ended without publishing, as its record says."""
    cause = _cause(exc)
    if isinstance(cause, anyio.get_cancelled_exc_class() | KeyboardInterrupt):
        return "interrupted"
    if isinstance(cause, ConnectorError) and str(cause):
        return str(cause)  # whole on its own, as the command prints it
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
    found = [e for e in leaves if isinstance(e, ConnectorError)]
    telling = [e for e in found if not getattr(e, "gone", False)]  # see WorkerError.gone
    chosen: list[BaseException] = [*telling] or [*found] or [exc]
    return chosen[0]
