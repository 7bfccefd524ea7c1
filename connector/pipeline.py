"""The export: discovery, concurrent listings, normalization, sinks, and commit.

Data flows one way through bounded anyio memory streams, so a slow stage slows the ones
before it and memory stays flat however large the tenancy::

    fetch tasks (one per region × compartment, paged sequentially, bounded by the limiter)
        │  Page / ListingEnd
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

import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
import pyarrow.fs as pafs
import structlog
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from connector import (
    __version__,
    errors,
    objectstore,
    publish,
    schema,
    spawn,
    storage,
    tables,
    workers,
)
from connector.auth import RequestSigner
from connector.client import ClientOptions, OciClient
from connector.config import Settings, worker_processes
from connector.discovery import (
    Endpoints,
    WorkItem,
    discover_compartments,
    shard_items,
    subscribed_regions,
)
from connector.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    ConnectorError,
    OciApiError,
    PaginationError,
    TransportError,
)
from connector.lean import quiet_gc
from connector.pages import Page, RunInfo
from connector.retry import PriorityGate, RetryPolicy
from connector.sinks import FileInfo, SinkOptions
from connector.workers import ListingResult, Workers, WorkerSetup

log = structlog.get_logger("connector.pipeline")


def new_run_id() -> str:
    """A sortable, unique run id."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(frozen=True, slots=True)
class ListingEnd:
    """Sent by a fetch task after its last page, or when it gave up."""

    item: WorkItem
    pages: int
    error: dict[str, Any] | None


Producer = Callable[[MemoryObjectSendStream[Page | ListingEnd]], Coroutine[Any, Any, None]]
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


@dataclass(slots=True)
class Outcome:
    """How a run (or commit) ended."""

    exit_code: int
    manifest: dict[str, Any]
    published: bool
    elapsed_s: float = 0.0
    message: str = ""


class Export:
    """One run of the export, or one shard of it."""

    def __init__(
        self,
        settings: Settings,
        signer: RequestSigner,
        *,
        run_id: str | None = None,
        shard: tuple[int, int] = (0, 1),
        publish_now: bool = True,
        home_region: str | None = None,
        tenancy: str | None = None,
        launched: spawn.Launched | None = None,
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.run_id = run_id or new_run_id()
        self.shard = shard
        self.publish_now = publish_now
        self.home_region = home_region
        self.tenancy = tenancy or settings["scope.tenancy"]
        self.endpoints = Endpoints.from_settings(
            settings["oci.endpoint"], settings["oci.identity_endpoint"]
        )
        self.store = storage.resolve(settings["output.uri"], settings["output.storage_options"])
        self.fs, self.base = self.store.fs, self.store.base
        # Built now so that a missing extra or a bad catalog setting fails before any request.
        self.table = table_writer(settings, self.store)
        self.layout = publish.Layout(self.base, self.run_id, settings.snapshot_date)
        self.progress = Progress()
        self.results: dict[WorkItem, dict[str, Any]] = {}
        self._run_info = RunInfo(self.run_id, date.fromisoformat(settings.snapshot_date))
        self._filters = settings.filters()
        self._platform_mode: str = settings["fetch.platform_images"]
        index, count = shard
        setup = WorkerSetup(
            run=self._run_info,
            platform_mode=self._platform_mode,
            fs=self.fs,
            layout=self.layout,
            options=SinkOptions(settings["output.format"], settings.compression),
            file_prefix="part-" if count == 1 else f"part-{index:03d}-",
            reject_prefix="" if count == 1 else f"{index:03d}-",
        )
        # Workers the CLI launched early are the ones there are.
        processes = len(launched.sockets) if launched else worker_processes(settings)
        self.workers: Workers = workers.create(setup, processes, self._listing_done, launched)
        self.client = OciClient(
            signer,
            ClientOptions(
                concurrency=settings["fetch.concurrency"],
                max_requests_per_second=settings["fetch.max_requests_per_second"],
                request_timeout_s=settings["fetch.request_timeout_s"],
                ca_bundle=settings["oci.ca_bundle"],
                retry=RetryPolicy(max_attempts=settings["fetch.max_attempts"]),
            ),
        )
        # Pages fetched but not yet queued: without this bound, tasks that finished a request
        # would each hold a page while waiting for the queue, and memory would grow with the
        # number of compartments. Continuation pages go first, as in the request limiter.
        in_hand = max(1, settings["fetch.concurrency"])
        self._in_hand = PriorityGate(lambda: in_hand)

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> Outcome:
        """Discover, fetch, write, and (unless sharded) commit."""
        started_at = publish.utc_now()
        restored = publish.recover(self.fs, self.base)
        if restored:
            log.warning("publish.recovered", partitions=restored)
        if not self.store.is_local or self.table is not None:
            await anyio.to_thread.run_sync(
                objectstore.recover, self.fs, self.base, self.layout.partition, self.table
            )
        log.info(
            "run.start",
            run_id=self.run_id,
            shard=f"{self.shard[0]}/{self.shard[1]}",
            snapshot_date=self.layout.snapshot_date,
            version=__version__,
        )
        async with self._discarded_on_failure(), self.client, anyio.create_task_group() as group:
            # Worker processes start (and import pyarrow) while discovery runs.
            group.start_soon(self.workers.serve)
            items = await self.work_items()
            self.progress.listings_total = len(items)
            with quiet_gc():
                await self._stream(partial(self._fetch_all, items))
            files, reject_files = await self._close()
        manifest = self._shard_manifest(started_at, files, reject_files)
        failed = {
            (r["region"], r["compartment_id"])
            for r in manifest["compartments"]
            if r["status"] == "failed"
        }
        if failed and self.settings["output.allow_partial"]:
            # Rows of failed listings were written as they streamed; take them out again.
            for key, count_key, written in (
                ("files", "rows", files),
                ("reject_files", "rejects", reject_files),
            ):
                kept = await anyio.to_thread.run_sync(
                    publish.drop_compartments,
                    self.fs,
                    self.layout.staged_partition,
                    written,
                    failed,
                )
                manifest[key] = [_file(f) for f in kept]
                manifest[count_key] = sum(f.rows for f in kept)
        index, count = self.shard
        publish.write_json(self.fs, self.layout.shard_manifest(index, count), manifest)
        if not self.publish_now:
            code = EXIT_PARTIAL if failed else EXIT_OK
            return Outcome(
                code,
                manifest,
                False,
                time.monotonic() - self.progress.started,
                "staged; publish with `commit`",
            )
        return commit(self.settings, self.run_id, store=self.store, started=self.progress.started)

    async def start_workers(self) -> None:
        """Start the worker processes now rather than with the first page."""
        await self.workers.start()

    async def work_items(self) -> list[WorkItem]:
        """The (region, compartment) listings of this run, or of this shard."""
        settings = self.settings
        regions: tuple[str, ...] = settings["oci.regions"]
        home = self.home_region or (regions[0] if regions and regions != ("subscribed",) else None)
        if home is None:
            raise ConnectorError("no region: set oci.regions or a region in the OCI profile")
        if regions == ("subscribed",):
            regions = tuple(
                await subscribed_regions(self.client, self.endpoints, home, self._tenancy())
            )
        elif not regions:
            regions = (home,)
        explicit: tuple[str, ...] = settings["scope.compartments"]
        excluded = set(settings["scope.exclude"])
        if explicit:
            compartments = [c for c in explicit if c not in excluded]
        else:
            compartments = await discover_compartments(
                self.client, self.endpoints, home, self._tenancy(), tuple(excluded)
            )
        items = [WorkItem(r, c) for r in regions for c in compartments]
        mine = shard_items(items, *self.shard)
        # Under `once`, each region's platform images come from one shard only: the one that
        # holds the region's first listing. Within it, the first complete listing donates them.
        firsts: dict[str, WorkItem] = {}
        for item in sorted(items):
            firsts.setdefault(item.region, item)
        owned = set(mine)
        self.workers.donations.exclude(
            {region for region, item in firsts.items() if item not in owned}
        )
        return mine

    def _tenancy(self) -> str:
        if not self.tenancy:
            raise ConnectorError("no tenancy: set scope.tenancy (the profile has none)")
        return str(self.tenancy)

    async def _stream(self, produce: Producer) -> None:
        """Feed what ``produce`` sends to the workers, each listing to its own worker."""
        # A few pages: the workers' sockets hold more, and fetch tasks hold one each.
        send, receive = anyio.create_memory_object_stream[Page | ListingEnd](4)
        async with anyio.create_task_group() as group:
            group.start_soon(produce, send)
            async with receive:
                async for message in receive:
                    if isinstance(message, Page):
                        await self.workers.page(message)
                    else:
                        await self.workers.end(message.item, message.pages, message.error)

    async def _close(self) -> tuple[list[FileInfo], list[FileInfo]]:
        """Close the workers; the donor listings of platform images get their rows counted."""
        closed = await self.workers.close()
        for item, rows in closed.donated.items():
            self.results[item]["rows"] += rows
            self.progress.rows += rows
        return closed.files, closed.reject_files

    async def write_pages(self, pages: Iterable[Page]) -> list[FileInfo]:
        """Normalize and write pages fetched earlier, through the same stages as a run.

        Pages of one listing must be consecutive. Used to replay recorded pages, and by the
        benchmarks to measure normalize + write on their own.
        """

        async def replay(send: MemoryObjectSendStream[Page | ListingEnd]) -> None:
            async with send:
                current: WorkItem | None = None
                count = 0
                for page in pages:
                    item = WorkItem(page.region, page.compartment_id)
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
        return files

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_all(
        self, items: list[WorkItem], send: MemoryObjectSendStream[Page | ListingEnd]
    ) -> None:
        async with send, anyio.create_task_group() as group:
            for item in items:
                group.start_soon(self._fetch_listing, item, send.clone())

    async def _fetch_listing(
        self, item: WorkItem, send: ObjectSendStream[Page | ListingEnd]
    ) -> None:
        url = self.endpoints.compute(item.region) + "/images"
        params: dict[str, Any] = {
            "compartmentId": item.compartment_id,
            "limit": self.settings["fetch.page_size"],
            **self._filters,
        }
        tokens: set[str] = set()
        token: str | None = None
        number = 0
        async with send:
            try:
                while True:
                    priority = 0 if token else 1
                    async with self._in_hand.hold(priority):
                        response = await self.client.get(
                            url,
                            params | ({"page": token} if token else {}),
                            priority=priority,
                            region=item.region,
                            compartment_id=item.compartment_id,
                            page=number + 1,
                        )
                        number += 1
                        page = Page(
                            response.body,
                            item.region,
                            item.compartment_id,
                            number,
                            datetime.now(UTC),
                            response.opc_request_id,
                        )
                        await send.send(page)
                    token = response.next_page
                    if token is None:
                        break
                    if token in tokens:
                        raise PaginationError(
                            f"the service repeated page token {token[:16]}… after page {number}"
                        )
                    tokens.add(token)
            except (OciApiError, TransportError, PaginationError) as exc:
                await send.send(ListingEnd(item, number, _error(exc)))
            else:
                await send.send(ListingEnd(item, number, None))

    # -- results ----------------------------------------------------------------------------

    def _listing_done(self, result: ListingResult) -> None:
        """A worker finished a listing: record it for the manifest, the progress and the log."""
        item = result.item
        error = result.error
        self.results[item] = {
            "region": item.region,
            "compartment_id": item.compartment_id,
            "status": "failed" if error else "ok",
            "pages": result.pages,
            "rows": result.rows,
            "duplicates_dropped": result.duplicates,
            "rejects": result.rejects,
            "error": error,
        }
        self.progress.listings_done += 1
        self.progress.rejects += result.rejects
        if error:
            self.progress.listings_failed += 1
            log.warning(
                "listing.failed",
                region=item.region,
                compartment_id=item.compartment_id,
                pages=result.pages,
                **{k: v for k, v in error.items() if k != "message"},
                reason=error.get("message"),
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
        """After a failure: stop the workers and remove the run's staging."""
        try:
            await self.workers.discard()
        finally:
            await anyio.to_thread.run_sync(self._remove_staging)

    def _remove_staging(self) -> None:
        if publish.exists(self.fs, self.layout.staging):
            self.fs.delete_dir(self.layout.staging)
        publish.remove_if_empty(self.fs, f"{self.base}/{publish.STAGING}")

    # -- manifests --------------------------------------------------------------------------

    def _shard_manifest(
        self, started_at: str, files: list[FileInfo], reject_files: list[FileInfo]
    ) -> dict[str, Any]:
        counters = self.client.counters
        compartments = sorted(
            self.results.values(), key=lambda r: (r["region"], r["compartment_id"])
        )
        return {
            "run_id": self.run_id,
            "snapshot_date": self.layout.snapshot_date,
            "shard": {"index": self.shard[0], "count": self.shard[1]},
            "status": "partial"
            if any(r["status"] == "failed" for r in compartments)
            else "succeeded",
            "started_at": started_at,
            "finished_at": publish.utc_now(),
            "rows": sum(f.rows for f in files),
            "rejects": sum(f.rows for f in reject_files),
            "files": [_file(f) for f in files],
            "reject_files": [_file(f) for f in reject_files],
            "compartments": compartments,
            "requests": {
                "sent": counters.sent,
                "retried": counters.retried,
                "throttled": counters.throttled,
            },
            "format": self.settings["output.format"],
            "compression": self.settings.compression,
            "platform_images": self._platform_mode,
            "filters": self._filters,
            "schema_fingerprint": schema.fingerprint(),
            "connector_version": __version__,
        }


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


def _file(info: FileInfo) -> dict[str, Any]:
    return {"path": info.path, "rows": info.rows, "bytes": info.bytes}


def _error(exc: ConnectorError) -> dict[str, Any]:
    if isinstance(exc, OciApiError):
        return exc.as_dict()
    return {
        "status": None,
        "code": type(exc).__name__,
        "message": str(exc),
        "opc_request_id": getattr(exc, "opc_request_id", None),
    }


def table_writer(settings: Settings, store: storage.Store) -> tables.TableWriter | None:
    """The table writer of ``output.table_format``, or None for plain files."""
    table_format: str = settings["output.table_format"]
    if not table_format:
        return None
    return tables.writer(store, table_format, settings["output.catalog"])


def commit(
    settings: Settings,
    run_id: str,
    *,
    store: storage.Store | None = None,
    started: float | None = None,
) -> Outcome:
    """Merge the staged shards of ``run_id`` into one manifest and publish the partition."""
    began = started or time.monotonic()
    store = store or storage.resolve(settings["output.uri"], settings["output.storage_options"])
    filesystem, base = store.fs, store.base
    table = table_writer(settings, store)
    shard_dir = f"{base}/{publish.STAGING}/{run_id}/shards"
    entries = filesystem.get_file_info(pafs.FileSelector(shard_dir, allow_not_found=True))
    shards = [
        publish.read_json(filesystem, e.path)
        for e in sorted(entries, key=lambda e: e.path)
        if e.path.endswith(".json")
    ]
    if not shards:
        published = _already_published(settings, store, run_id)
        if published is not None:  # a commit repeated after it succeeded (or was finished)
            code = EXIT_PARTIAL if published.get("status") == "partial" else EXIT_OK
            return Outcome(code, published, True, time.monotonic() - began, "already published")
        return Outcome(
            EXIT_FAILED, {}, False, message=f"nothing staged for run {run_id} under {shard_dir}"
        )
    count = shards[0]["shard"]["count"]
    indexes = sorted(s["shard"]["index"] for s in shards)
    if indexes != list(range(count)) or any(s["shard"]["count"] != count for s in shards):
        missing = sorted(set(range(count)) - set(indexes))
        return Outcome(
            EXIT_FAILED, {}, False, message=f"run {run_id} is missing shards {missing} of {count}"
        )
    dates = {s["snapshot_date"] for s in shards}
    if len(dates) != 1:
        return Outcome(
            EXIT_FAILED,
            {},
            False,
            message=f"shards of run {run_id} disagree on snapshot_date: {sorted(dates)}",
        )
    layout = publish.Layout(base, run_id, dates.pop())
    manifest = _merge(shards)
    partial = manifest["status"] == "partial"
    elapsed = time.monotonic() - began
    if partial and not settings["output.allow_partial"]:
        filesystem.delete_dir(layout.staging)
        failed = sum(1 for c in manifest["compartments"] if c["status"] == "failed")
        log.error("run.partial", run_id=run_id, failed=failed, published=False)
        return Outcome(
            EXIT_PARTIAL,
            manifest,
            False,
            elapsed,
            f"{failed} listing(s) failed; nothing published (output.allow_partial = false)",
        )
    manifest["finished_at"] = publish.utc_now()
    if store.is_local and table is None:
        publish.write_json(filesystem, f"{layout.staged_partition}/_manifest.json", manifest)
        marker = objectstore.marker_of(manifest)
        with filesystem.open_output_stream(f"{layout.staged_partition}/{marker}", compression=None):
            pass
        publish.swap_in(filesystem, layout)
    else:
        manifest = objectstore.publish_partition(
            filesystem, layout, manifest, layout.partition, table
        )
    log.info(
        "run.published",
        run_id=run_id,
        partition=layout.partition,
        rows=manifest["rows"],
        status=manifest["status"],
    )
    return Outcome(EXIT_PARTIAL if partial else EXIT_OK, manifest, True, elapsed)


def _already_published(
    settings: Settings, store: storage.Store, run_id: str
) -> dict[str, Any] | None:
    """The published manifest of the configured date, if ``run_id`` is what it publishes."""
    date = settings.snapshot_date
    partition = publish.Layout(store.base, run_id, date).partition
    if not store.is_local or settings["output.table_format"]:
        objectstore.recover(store.fs, store.base, partition, table_writer(settings, store))
    manifest = objectstore.published_manifest(store.fs, partition)
    if manifest is not None and manifest.get("run_id") == run_id:
        return manifest
    return None


def _merge(shards: list[dict[str, Any]]) -> dict[str, Any]:
    first = shards[0]
    merged = {k: v for k, v in first.items() if k not in ("shard",)}
    merged["status"] = "partial" if any(s["status"] == "partial" for s in shards) else "succeeded"
    merged["started_at"] = min(s["started_at"] for s in shards)
    merged["finished_at"] = max(s["finished_at"] for s in shards)
    for key in ("rows", "rejects"):
        merged[key] = sum(s[key] for s in shards)
    for key in ("files", "reject_files", "compartments"):
        merged[key] = [entry for s in shards for entry in s[key]]
    merged["requests"] = {k: sum(s["requests"][k] for s in shards) for k in first["requests"]}
    merged["shards"] = len(shards)
    return merged
