"""The export: discovery, concurrent listings, normalization, sinks, and commit.

Data flows one way through bounded anyio memory streams, so a slow stage slows the ones
before it and memory stays flat however large the tenancy::

    fetch tasks (one per region × compartment, paged sequentially, bounded by the limiter)
        │  Page / ListingEnd
        ▼
    normalizer (one worker thread: JSON → Arrow; per-listing dedupe and platform handling)
        │  rows / rejects
        ▼
    sink (one worker thread: Parquet or NDJSON under the run's staging directory)

A listing is either complete or absent: rows stream to disk as pages arrive, and if a listing
later fails, its rows are removed before anything is published (or the run publishes nothing).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from typing import Any, cast

import anyio
import anyio.to_process
import anyio.to_thread
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import structlog
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from connector import __version__, publish, schema
from connector.auth import RequestSigner
from connector.client import ClientOptions, OciClient
from connector.config import Settings
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
from connector.normalize import (
    Normalized,
    Page,
    PageError,
    Reject,
    RunInfo,
    normalize_in_worker,
    normalize_page,
    quiet_gc,
    warm_up,
)
from connector.retry import PriorityGate, RetryPolicy
from connector.sinks import FileInfo, PartitionedSink, SinkOptions

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
class _Slot:
    """A message on its way through conversion, with the outcome once ``done`` is set."""

    message: Page | ListingEnd
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Normalized | None = None
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class ListingState:
    """What the normalizer knows about a listing in progress."""

    seen: set[str] = field(default_factory=set)
    platform: list[pa.RecordBatch] = field(default_factory=list)
    rows: int = 0
    duplicates: int = 0
    rejects: int = 0
    error: dict[str, Any] | None = None


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
        self.fs, self.base = publish.resolve(settings["output.uri"])
        self.layout = publish.Layout(self.base, self.run_id, settings.snapshot_date)
        self.progress = Progress()
        self.results: dict[WorkItem, dict[str, Any]] = {}
        self._donors: set[str] = set()
        self._run_info = RunInfo(self.run_id, date.fromisoformat(settings.snapshot_date))
        self._filters = settings.filters()
        self._platform_mode: str = settings["fetch.platform_images"]
        index, count = shard
        prefix = "part-" if count == 1 else f"part-{index:03d}-"
        self.sink = PartitionedSink(
            self.fs,
            self.layout.staged_partition,
            SinkOptions(settings["output.format"], settings.compression),
            prefix,
        )
        self.rejects = publish.RejectWriter(
            self.fs, self.layout, "" if count == 1 else f"{index:03d}-"
        )
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
        self._cpu = anyio.CapacityLimiter(1)
        # Pages fetched but not yet queued: without this bound, tasks that finished a request
        # would each hold a page while waiting for the queue, and memory would grow with the
        # number of compartments. Continuation pages go first, as in the request limiter.
        in_hand = max(1, settings["fetch.concurrency"])
        self._in_hand = PriorityGate(lambda: in_hand)
        self._workers: int = settings["fetch.normalize_workers"]
        self._process_limiter = anyio.CapacityLimiter(max(1, self._workers))
        self._disk = anyio.CapacityLimiter(1)

    # -- the run ----------------------------------------------------------------------------

    async def run(self) -> Outcome:
        """Discover, fetch, write, and (unless sharded) commit."""
        started_at = publish.utc_now()
        restored = publish.recover(self.fs, self.base)
        if restored:
            log.warning("publish.recovered", partitions=restored)
        log.info(
            "run.start",
            run_id=self.run_id,
            shard=f"{self.shard[0]}/{self.shard[1]}",
            snapshot_date=self.layout.snapshot_date,
            version=__version__,
        )
        try:
            async with self.client, anyio.create_task_group() as group:
                # Worker processes start (and import pyarrow) while discovery runs.
                group.start_soon(self.start_workers)
                items = await self.work_items()
                self.progress.listings_total = len(items)
                with quiet_gc():
                    await self._stream(partial(self._fetch_all, items))
            files = await anyio.to_thread.run_sync(self.sink.close)
            reject_files = self.rejects.close()
        except BaseException:
            with anyio.CancelScope(shield=True):  # clean up even when cancelled
                await anyio.to_thread.run_sync(self._discard)
            raise
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
        return commit(
            self.settings, self.run_id, fs=(self.fs, self.base), started=self.progress.started
        )

    async def start_workers(self) -> None:
        """Start the worker processes (they import pyarrow, which takes a moment)."""
        async with anyio.create_task_group() as group:
            for _ in range(self._workers):
                group.start_soon(self._warm_worker)

    async def _warm_worker(self) -> None:
        await anyio.to_process.run_sync(warm_up, limiter=self._process_limiter)

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
        self._donors = {region for region, item in firsts.items() if item not in owned}
        return mine

    def _tenancy(self) -> str:
        if not self.tenancy:
            raise ConnectorError("no tenancy: set scope.tenancy (the profile has none)")
        return str(self.tenancy)

    async def _stream(self, produce: Producer) -> None:
        buffer = max(8, 2 * self.settings["fetch.concurrency"])
        page_send, page_receive = anyio.create_memory_object_stream[Page | ListingEnd](buffer)
        row_send, row_receive = anyio.create_memory_object_stream[tuple[str, Any]](8)
        async with anyio.create_task_group() as group:
            group.start_soon(produce, page_send)
            group.start_soon(self._normalize_all, page_receive, row_send)
            group.start_soon(self._write_all, row_receive)

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

        with quiet_gc():
            await self._stream(replay)
        return await anyio.to_thread.run_sync(self.sink.close)

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

    # -- normalizing ------------------------------------------------------------------------

    async def _normalize_all(
        self,
        receive: ObjectReceiveStream[Page | ListingEnd],
        send: ObjectSendStream[tuple[str, Any]],
    ) -> None:
        """Convert pages in parallel, then handle the results strictly in arrival order.

        Each page's conversion starts as soon as it arrives (in a worker process, or a worker
        thread with ``normalize_workers = 0``); a bounded, ordered stream of slots hands the
        results to ``_collect``, so per-listing logic sees pages and listing ends in order.
        """
        depth = 4 * max(1, self._workers)
        slot_send, slot_receive = anyio.create_memory_object_stream[_Slot](depth)
        async with anyio.create_task_group() as group:
            group.start_soon(self._collect, slot_receive, send)
            async with receive, slot_send:
                async for message in receive:
                    slot = _Slot(message)
                    if isinstance(message, Page):
                        group.start_soon(self._convert, slot)
                    else:
                        slot.done.set()
                    await slot_send.send(slot)

    async def _convert(self, slot: _Slot) -> None:
        page = slot.message
        assert isinstance(page, Page)
        try:
            if self._workers:
                slot.result = await anyio.to_process.run_sync(
                    normalize_in_worker, page, self._run_info, limiter=self._process_limiter
                )
            else:
                slot.result = await anyio.to_thread.run_sync(
                    normalize_page, page, self._run_info, limiter=self._cpu
                )
        except PageError as exc:
            slot.error = {
                "status": None,
                "code": "InvalidResponse",
                "message": str(exc),
                "opc_request_id": page.opc_request_id,
            }
        finally:
            slot.done.set()

    async def _collect(
        self, receive: ObjectReceiveStream[_Slot], send: ObjectSendStream[tuple[str, Any]]
    ) -> None:
        states: dict[WorkItem, ListingState] = {}
        async with receive, send:
            async for slot in receive:
                await slot.done.wait()
                message = slot.message
                if isinstance(message, ListingEnd):
                    state = states.pop(message.item, None) or ListingState()
                    await self._end_listing(message, state, send)
                    continue
                item = WorkItem(message.region, message.compartment_id)
                state = states.setdefault(item, ListingState())
                if state.error is not None:
                    continue
                if slot.error is not None or slot.result is None:
                    state.error = slot.error
                    continue
                result = slot.result
                if result.rejects:
                    state.rejects += len(result.rejects)
                    await send.send(("rejects", result.rejects))
                batch = _dedupe(state, result.batch)
                if self._platform_mode != "every":
                    is_platform = cast(pa.BooleanArray, batch.column("_is_platform"))
                    if is_platform.true_count:
                        platform = batch.filter(is_platform)
                        batch = batch.filter(pc.invert(is_platform))
                        if self._platform_mode == "once":
                            state.platform.append(platform)
                if batch.num_rows:
                    state.rows += batch.num_rows
                    await send.send(("rows", (message.region, batch)))

    async def _end_listing(
        self, end: ListingEnd, state: ListingState, send: ObjectSendStream[tuple[str, Any]]
    ) -> None:
        error = end.error or state.error
        item = end.item
        if error is None and state.platform and item.region not in self._donors:
            # The first complete listing of a region contributes the region's platform images;
            # regions another shard donates for are in _donors from the start.
            self._donors.add(item.region)
            for batch in state.platform:
                state.rows += batch.num_rows
                await send.send(("rows", (item.region, batch)))
        status = "failed" if error else "ok"
        self.results[item] = {
            "region": item.region,
            "compartment_id": item.compartment_id,
            "status": status,
            "pages": end.pages,
            "rows": state.rows if not error else 0,
            "duplicates_dropped": state.duplicates,
            "rejects": state.rejects,
            "error": error,
        }
        self.progress.listings_done += 1
        if error:
            self.progress.listings_failed += 1
            log.warning(
                "listing.failed",
                region=item.region,
                compartment_id=item.compartment_id,
                pages=end.pages,
                **{k: v for k, v in error.items() if k != "message"},
                reason=error.get("message"),
            )
        else:
            self.progress.rows += state.rows
            log.debug(
                "listing.done",
                region=item.region,
                compartment_id=item.compartment_id,
                pages=end.pages,
                rows=state.rows,
            )

    # -- writing ----------------------------------------------------------------------------

    async def _write_all(self, receive: ObjectReceiveStream[tuple[str, Any]]) -> None:
        async with receive:
            async for kind, payload in receive:
                if kind == "rows":
                    region, batch = payload
                    await anyio.to_thread.run_sync(
                        self.sink.write, region, batch, limiter=self._disk
                    )
                else:
                    rejects: list[Reject] = payload
                    self.progress.rejects += len(rejects)
                    self.rejects.write(rejects)

    def _discard(self) -> None:
        """After a failure: close what is open and remove the run's staging."""
        try:
            self.sink.close()
            self.rejects.close()
        finally:
            if publish.exists(self.fs, self.layout.staging):
                self.fs.delete_dir(self.layout.staging)

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


def _dedupe(state: ListingState, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Drop ids this listing already returned (items shift between pages while paging)."""
    ids = cast(list[str], batch.column("id").to_pylist())
    seen = state.seen
    if seen.isdisjoint(ids) and len(set(ids)) == len(ids):
        seen.update(ids)
        return batch
    keep = []
    for image_id in ids:
        keep.append(image_id not in seen)
        seen.add(image_id)
    state.duplicates += keep.count(False)
    return batch.filter(pa.array(keep))


def commit(
    settings: Settings,
    run_id: str,
    *,
    fs: tuple[pafs.FileSystem, str] | None = None,
    started: float | None = None,
) -> Outcome:
    """Merge the staged shards of ``run_id`` into one manifest and publish the partition."""
    began = started or time.monotonic()
    filesystem, base = fs or publish.resolve(settings["output.uri"])
    shard_dir = f"{base}/{publish.STAGING}/{run_id}/shards"
    entries = filesystem.get_file_info(pafs.FileSelector(shard_dir, allow_not_found=True))
    shards = [
        publish.read_json(filesystem, e.path)
        for e in sorted(entries, key=lambda e: e.path)
        if e.path.endswith(".json")
    ]
    if not shards:
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
    publish.write_json(filesystem, f"{layout.staged_partition}/_manifest.json", manifest)
    with filesystem.open_output_stream(f"{layout.staged_partition}/_SUCCESS", compression=None):
        pass
    publish.swap_in(filesystem, layout)
    log.info(
        "run.published",
        run_id=run_id,
        partition=layout.partition,
        rows=manifest["rows"],
        status=manifest["status"],
    )
    return Outcome(EXIT_PARTIAL if partial else EXIT_OK, manifest, True, elapsed)


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
