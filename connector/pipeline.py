"""The export: discovery, concurrent listings, normalization, sinks, and commit.

Data flows one way through bounded anyio memory streams, so a slow stage slows the ones
before it and memory stays flat however large the tenancy::

    fetch tasks (a pool per region, each listing paged in order, bounded by the limiter)
        │  Page / ListingEnd, and AllStarted once the last listing has begun
        ▼
    dispatcher (hands each listing's pages, in order, to the worker that owns the listing)
        │
        ▼
    workers (processes, one per core, or a thread: JSON → Arrow, per-listing de-duplication
             and platform handling, Parquet or NDJSON under the run's staging directory)

A listing is either complete or absent: rows stream to disk as pages arrive, and if a listing
later fails, its rows are removed before anything is published (or the run publishes nothing).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import structlog
from anyio.streams.memory import MemoryObjectSendStream

from connector import (
    __version__,
    errors,
    limits,
    names,
    schema,
)
from connector.config import Settings
from connector.errors import EXIT_OK, EXIT_PARTIAL, ConnectorError, OciApiError, TransportError
from connector.lake import (
    door,
    lock,
    objectstore,
    publish,
    rewrite,
    snapshots,
    storage,
    tables,
)
from connector.lake.committing import commit_run, run_record, write_record
from connector.lake.manifest import (
    ListingRecord,
    Manifest,
    RequestCounts,
    RunOutcome,
    Timings,
)
from connector.lean import quiet_gc
from connector.oci import (
    compartments,
    discovery,
    regions,
)
from connector.oci.auth import Credentials
from connector.oci.client import ClientOptions, OciClient
from connector.oci.discovery import Endpoints
from connector.oci.fetch import AllStarted, Fetcher, ListingEnd, Message
from connector.oci.retry import RateState, RetryPolicy
from connector.oci.sharedrate import SharedRates
from connector.pages import Page, RunInfo, WorkItem
from connector.sinks import FileInfo, SinkOptions, formats
from connector.sinks.dataset import write_batches
from connector.workers import coordinator, spawn
from connector.workers.coordinator import Workers
from connector.workers.page import ListingResult, WorkerSetup

log = structlog.get_logger("connector.pipeline")


def new_run_id() -> str:
    """A sortable, unique run id."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


Producer = Callable[[MemoryObjectSendStream[Message]], Coroutine[Any, Any, None]]
"""A coroutine that feeds pages (and the end of each listing) into the pipeline."""


@dataclass(slots=True)
class Progress:
    """Live counters for the progress bar and the summary line."""

    listings_total: int = 0
    listings_done: int = 0
    listings_failed: int = 0
    rows: int = 0
    rejects: int = 0
    started: float = field(default_factory=time.monotonic)
    fetch_started: float | None = None
    """When the listings were known and fetching began (for the ETA)."""


def client_for(
    settings: Settings,
    credentials: Credentials,
    rate_share: float = 1.0,
    rate_states: Callable[[str], RateState | None] | None = None,
) -> OciClient:
    """The HTTP client a run (or a plan) sends its requests with; ``rate_share`` is its part
    of the tenancy's request budget (1/N for one of N shards running in parallel), and
    ``rate_states`` the pacing states it shares with the run's other shards on this machine."""
    fetch = settings.fetch
    return OciClient(
        credentials.signer,
        ClientOptions(
            concurrency=fetch.concurrency,
            max_requests_per_second=fetch.max_requests_per_second,
            request_timeout_s=fetch.request_timeout_s,
            ca_bundle=settings.oci.ca_bundle,
            retry=RetryPolicy(max_attempts=fetch.max_attempts),
            limits=limits.Limits(
                max_pages_per_listing=fetch.max_pages_per_listing,
                max_response_bytes=fetch.max_response_bytes,
                max_decompressed_bytes=fetch.max_decompressed_bytes,
                run_deadline_s=fetch.run_deadline_s,
                worker_heartbeat_s=fetch.worker_heartbeat_s,
            ),
            profile=credentials.label,
            auth=credentials.auth,
            rate_share=rate_share,
            rate_states=rate_states,
        ),
    )


class Export:
    """One run of the export, or one shard of it.

    ``rate_share`` is this shard's part of the tenancy's request budget (the client-side cap
    and the adaptive rate's climb); by default 1/N of N shards, which assumes they run in
    parallel, as ``plan`` intends.
    """

    def __init__(
        self,
        settings: Settings,
        credentials: Credentials,
        *,
        run_id: str | None = None,
        shard: tuple[int, int] = (0, 1),
        publish_now: bool = True,
        launched: spawn.Launched | None = None,
        rate_share: float | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.run_id = names.check_run_id(run_id) if run_id is not None else new_run_id()
        self.shard = shard
        self.publish_now = publish_now
        home = credentials.home_region
        self.endpoints = Endpoints.from_settings(
            settings.oci, regions.canonical(home) if home else None
        )
        output = settings.output
        self.store = storage.resolve(output.uri, output.storage_options)
        self.fs, self.base = self.store.fs, self.store.base
        # Built now, so that a table format that cannot work here fails before any request.
        self.table = tables.for_output(output, self.store)
        # Every attempt stages in its own folder, even under a run id used before.
        self.owner = lock.Owner.me(
            self.run_id, lock.new_attempt_id(), settings.fetch.run_deadline_s
        )
        day = names.check_snapshot_date(output.effective_snapshot_date)
        self.layout = publish.Layout(self.base, self.run_id, day, self.owner.attempt)
        self.progress = Progress()
        self._timings: dict[str, float] = {}
        self.results: dict[WorkItem, ListingRecord] = {}
        self._run_info = RunInfo(
            self.run_id,
            date.fromisoformat(self.layout.snapshot_date),
            settings.scope.tenancy or credentials.tenancy,
        )
        self._filters = settings.filters.query_params(settings.oci.flavor)
        self._platform_mode = settings.fetch.platform_images
        self._sink_options = SinkOptions(formats.get(output.format), output.effective_compression)
        self.discovery: discovery.Discovery | None = None
        self._listing_pages: dict[WorkItem, int] = {}
        data_prefix, reject_prefix = publish.shard_prefixes(*shard)
        setup = WorkerSetup(
            run=self._run_info,
            platform_mode=self._platform_mode,
            fs=self.fs,
            layout=self.layout,
            options=self._sink_options,
            file_prefix=data_prefix,
            reject_prefix=reject_prefix.removeprefix("rejects-"),
            heartbeat_s=settings.fetch.worker_heartbeat_s,
        )
        # Workers the CLI launched early are the ones there are.
        processes = len(launched.sockets) if launched else settings.fetch.worker_processes()
        self.workers: Workers = coordinator.create(setup, processes, self._listing_done, launched)
        self.rate_share = rate_share if rate_share is not None else 1.0 / shard[1]
        # Shards of the run on this machine pace and adapt as one (opened in ``_stage``).
        self.shared_rates = (
            SharedRates(self.run_id, shard[0], self.rate_share) if shard[1] > 1 else None
        )
        self.client = client_for(
            settings,
            credentials,
            self.rate_share,
            self.shared_rates.state if self.shared_rates is not None else None,
        )
        self.fetcher = Fetcher(
            self.client,
            self.endpoints,
            settings.fetch.page_size,
            self._filters,
            per_region=settings.fetch.concurrency,
            verdicts=self.workers.verdicts,
        )

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> RunOutcome:
        """Discover, fetch, write, and (unless sharded) commit; one writer at a time.

        A run that publishes holds its snapshot date's lock from start to end; a shard holds
        its own (index, count) lock of the run. A failure leaves ``_runs/RUN_ID.json``.
        """
        # Every log line of the run carries these, from every task it starts.
        shard = f"{self.shard[0]}/{self.shard[1]}"
        with structlog.contextvars.bound_contextvars(run_id=self.run_id, shard=shard):
            return await self._run()

    async def _run(self) -> RunOutcome:
        started_at = publish.utc_now()
        guard = self._lock()
        guard.acquire()
        try:
            return await self._locked_run(started_at, guard)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._discard_attempt)
            self._record_failure(started_at, exc)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await self.workers.reap()
            guard.release()

    def _lock(self) -> lock.Lock:
        if self.publish_now:
            return lock.date_lock(self.fs, self.base, self.layout.snapshot_date, self.owner)
        index, count = self.shard
        return lock.shard_lock(self.fs, self.base, self.run_id, index, count, self.owner)

    async def _locked_run(self, started_at: str, guard: lock.Lock) -> RunOutcome:
        held = (self.layout.snapshot_date,) if self.publish_now else ()
        restored = publish.recover(self.fs, self.base, self.owner, held)
        if restored:
            log.warning("publish.recovered", partitions=restored)
        if not self.store.is_local or self.table is not None:
            # A commit of this date killed on a store without rename: finish or roll it back.
            await anyio.to_thread.run_sync(
                objectstore.recover, self.fs, self.base, self.layout.partition, self.table
            )
        lock.claim_attempt(self.fs, self.base, self.owner)
        log.info(
            "run.start",
            attempt=self.owner.attempt,
            snapshot_date=self.layout.snapshot_date,
            version=__version__,
        )
        files, reject_files = await self._stage()
        failed = {r.item for r in self.results.values() if r.failed}
        if failed and self.settings.output.allow_partial:
            # Rows of failed listings were written as they streamed; take them out again.
            drop = {(item.region, item.compartment_id) for item in failed}
            files, reject_files = [
                await anyio.to_thread.run_sync(
                    rewrite.drop_compartments, self.fs, self.layout.staged_partition, written, drop
                )
                for written in (files, reject_files)
            ]
        datasets = {}
        found = self.discovery
        if self.shard[0] == 0 and found is not None and found.tree is not None:
            # One shard describes the tree; every shard discovered the same one.
            datasets["compartments"] = await anyio.to_thread.run_sync(
                self._stage_compartments, found, found.tree
            )
        manifest = self._shard_manifest(started_at, files, reject_files, datasets)
        self._write_shard_manifest(manifest)
        if not self.publish_now:
            return RunOutcome(
                self.run_id,
                EXIT_PARTIAL if failed else EXIT_OK,
                False,
                manifest,
                "staged; publish with `commit`",
                time.monotonic() - self.progress.started,
            )
        outcome = commit_run(
            self.settings,
            self.run_id,
            store=self.store,
            held=guard,
            started=self.progress.started,
        )
        if not outcome.published:
            # Nothing can commit this attempt later (it was the whole run): remove it now.
            self._discard_attempt()
        return outcome

    async def _stage(self) -> tuple[list[FileInfo], list[FileInfo]]:
        """Fetch, convert and write into this attempt's staging, within the run's deadline."""
        deadline = self.settings.fetch.run_deadline_s
        try:
            with (
                anyio.fail_after(deadline or None),
                self.shared_rates or contextlib.nullcontext(),
            ):
                async with (
                    self._discarded_on_failure(),
                    self.client,
                    anyio.create_task_group() as group,
                ):
                    # Worker processes start (and import pyarrow) while discovery runs.
                    group.start_soon(self.workers.serve)
                    self._listing_pages_read = anyio.Event()
                    group.start_soon(self._read_listing_pages)
                    discovering = time.monotonic()
                    try:
                        items = await self.work_items()
                    except (OciApiError, TransportError) as exc:
                        if self.client.aborted is not None:
                            raise self.client.aborted from None
                        raise exc from None
                    fetching = self.progress.fetch_started = time.monotonic()
                    self._timings["discovery_s"] = fetching - discovering
                    self.progress.listings_total = len(items)
                    await self._listing_pages_read.wait()
                    with self._parsing_here():
                        await self._stream(partial(self._fetch_all, items))
                    written = await self._close()
        except TimeoutError:
            raise limits.DeadlineExceeded(
                f"the run passed its deadline of {deadline:g} s (fetch.run_deadline_s); "
                "nothing was published"
            ) from None
        return written

    def _parsing_here(self) -> contextlib.AbstractContextManager[None]:
        """A quiet GC where pages are parsed in this process (a worker thread). With worker
        processes this one only fetches: there the raised threshold would only let the
        reference cycles of thousands of requests pile up (memory that grew with the run)."""
        if isinstance(self.workers, coordinator.ThreadWorkers):
            return quiet_gc()
        return contextlib.nullcontext()

    def _write_shard_manifest(self, manifest: Manifest) -> None:
        """Record what this attempt staged; a previous attempt of the same shard, now replaced,
        is removed (only its own folder)."""
        index, count = self.shard
        path = self.layout.shard_manifest(index, count)
        previous: str | None = None
        if publish.exists(self.fs, path):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                previous = publish.read_json(self.fs, path).get("attempt")
        publish.write_json(self.fs, path, manifest.as_dict())
        if previous and previous != self.owner.attempt and names.RUN_ID.fullmatch(previous):
            old = publish.Layout(self.base, self.run_id, self.layout.snapshot_date, previous)
            door.guarded_delete(self.fs, self.base, old.staging)

    def _discard_attempt(self) -> None:
        """After a failure anywhere in the run: this attempt's files go, and so does a shard
        manifest that points to them (a whole run's; a shard's is only written at its end)."""
        try:
            path = self.layout.shard_manifest(*self.shard)
            if (
                self.publish_now
                and publish.exists(self.fs, path)
                and publish.read_json(self.fs, path).get("attempt") == self.owner.attempt
            ):
                door.guarded_delete(self.fs, self.base, path)
            self._remove_staging()
        except (OSError, ValueError, ConnectorError) as exc:
            log.warning("staging.not_removed", path=self.layout.staging, reason=str(exc))

    def _record_failure(self, started_at: str, exc: BaseException) -> None:
        """Leave ``_runs/RUN_ID.json`` (status failed, the reason, each listing's error) for a
        run that ended without publishing. Not when another run holds the lock: the record is
        that run's to write."""
        if isinstance(exc, lock.LockHeld):
            return
        cause = _cause(exc)
        if isinstance(cause, ConnectorError):
            reason = f"{type(cause).__name__}: {cause}"
        elif isinstance(cause, anyio.get_cancelled_exc_class() | KeyboardInterrupt):
            reason = "interrupted"
        else:
            reason = f"{type(cause).__name__}: {cause}"
        manifest = self._shard_manifest(started_at, [], [], {})
        document = run_record(
            self.run_id, self.layout.snapshot_date, manifest, "failed", False, reason
        )
        write_record(self.fs, self.layout.run_record(), document)

    async def start_workers(self) -> None:
        """Start the worker processes now rather than with the first page."""
        await self.workers.start()

    async def work_items(self) -> list[WorkItem]:
        """The (region, compartment) listings of this shard; the shard's platform-image donor
        regions go to the workers."""
        found = await discovery.discover_run(self.client, self.settings, self.credentials)
        self.discovery = found
        items = found.items
        index, count = self.shard
        donors = discovery.donor_regions(items, index, count)
        self.workers.donations.exclude({item.region for item in items} - donors)
        return discovery.shard_items(items, index, count)

    async def _stream(self, produce: Producer) -> None:
        """Feed what ``produce`` sends to the workers, each listing to its own worker."""
        # A few pages: the workers' sockets hold more, and fetch tasks hold one each.
        send, receive = anyio.create_memory_object_stream[Message](4)
        async with anyio.create_task_group() as group:
            group.start_soon(produce, send)
            async with receive:
                async for message in receive:
                    if isinstance(message, Page):
                        await self.workers.page(message)
                    elif isinstance(message, AllStarted):
                        await self.workers.flush()
                    else:
                        await self.workers.end(message.item, message.pages, message.error)

    async def _read_listing_pages(self) -> None:
        """The pages each listing took in the last snapshot, read while discovery runs: the
        fetch takes the long ones early (``fetch.long_listings_early``)."""
        self._listing_pages = await anyio.to_thread.run_sync(
            snapshots.listing_pages, self.fs, self.base
        )
        self._listing_pages_read.set()

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
            self.results[item] = replace(self.results[item], rows=self.results[item].rows + rows)
            self.progress.rows += rows
        return closed.files, closed.reject_files

    async def write_pages(self, pages: Iterable[Page]) -> list[FileInfo]:
        """Normalize and write pages fetched earlier, through the same stages as a run.

        Pages of one listing must be consecutive. Used to replay recorded pages, and by the
        benchmarks to measure normalize + write on their own.
        """

        async def replay(send: MemoryObjectSendStream[Message]) -> None:
            async with send:
                current: WorkItem | None = None
                count = 0
                for page in pages:
                    item = page.item
                    if current is not None and item != current:
                        await send.send(ListingEnd(current, count, None))
                        count = 0
                    current, count = item, count + 1
                    await send.send(page)
                if current is not None:
                    await send.send(ListingEnd(current, count, None))

        async with self._discarded_on_failure(), anyio.create_task_group() as group:
            group.start_soon(self.workers.serve)
            with quiet_gc():
                await self._stream(replay)
            files, _ = await self._close()
        await self.workers.reap()
        return files

    # -- results ----------------------------------------------------------------------------

    def _listing_done(self, result: ListingResult) -> None:
        """A worker finished a listing: record it for the manifest, the progress and the log."""
        item = result.item
        error = result.error
        self.results[item] = ListingRecord(
            item.region,
            item.compartment_id,
            result.pages,
            result.rows,
            result.duplicates,
            result.rejects,
            error,
        )
        self.progress.listings_done += 1
        self.progress.rejects += result.rejects
        if error:
            self.progress.listings_failed += 1
            log.warning(
                "listing.failed",
                region=item.region,
                compartment_id=item.compartment_id,
                pages=result.pages,
                status=error.status,
                code=error.code,
                opc_request_id=error.opc_request_id,
                reason=error.message,
            )
        else:
            self.progress.rows += result.rows
            log.debug(
                "listing.done",
                region=item.region,
                compartment_id=item.compartment_id,
                pages=result.pages,
                rows=result.rows,
            )

    @asynccontextmanager
    async def _discarded_on_failure(self) -> AsyncIterator[None]:
        """On any failure, stop the workers and remove the staging (even when cancelled), then
        raise what caused it (see ``_cause``)."""
        try:
            yield
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._discard()
            cause = _cause(exc)
            if cause is exc:
                raise
            raise cause from None

    async def _discard(self) -> None:
        """After a failure: stop the workers and remove what this run (or shard) staged."""
        try:
            await self.workers.discard()
        finally:
            await anyio.to_thread.run_sync(self._remove_staging)

    def _remove_staging(self) -> None:
        """Remove this attempt's folder (and the run's and ``_staging`` if now empty)."""
        door.guarded_delete(self.fs, self.base, self.layout.staging)
        publish.remove_if_empty(self.fs, self.base, f"{self.layout.run_staging}/shards")
        publish.remove_if_empty(self.fs, self.base, self.layout.run_staging)
        publish.remove_if_empty(self.fs, self.base, f"{self.base}/{publish.STAGING}")

    # -- the shard's manifest ---------------------------------------------------------------

    def _stage_compartments(
        self, found: discovery.Discovery, tree: compartments.Tree
    ) -> tuple[FileInfo, ...]:
        """The ``compartments`` dataset of this run, written into its staging."""
        table = compartments.table(
            tree,
            frozenset(item.compartment_id for item in found.items),
            found.reasons,
            snapshot_date=self._run_info.snapshot_date,
            run_id=self.run_id,
        )
        written = write_batches(
            self.fs,
            self.layout.staged_dataset("compartments"),
            table.to_batches(),
            table.schema,
            self._sink_options,
        )
        return (written,)

    def _shard_manifest(
        self,
        started_at: str,
        files: list[FileInfo],
        reject_files: list[FileInfo],
        datasets: dict[str, tuple[FileInfo, ...]],
    ) -> Manifest:
        counters = self.client.counters
        compartments = tuple(sorted(self.results.values(), key=lambda r: r.item))
        return Manifest(
            run_id=self.run_id,
            snapshot_date=self.layout.snapshot_date,
            status="partial" if any(r.failed for r in compartments) else "succeeded",
            started_at=started_at,
            finished_at=publish.utc_now(),
            files=tuple(files),
            reject_files=tuple(reject_files),
            compartments=compartments,
            requests=RequestCounts(counters.sent, counters.retried, counters.throttled),
            format=self.settings.output.format,
            compression=self.settings.output.effective_compression,
            platform_images=self._platform_mode,
            filters=self._filters,
            schema_fingerprint=schema.fingerprint(),
            connector_version=__version__,
            shard=self.shard,
            datasets=datasets,
            attempt=self.owner.attempt,
            timings=Timings(**self._timings),
        )


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
