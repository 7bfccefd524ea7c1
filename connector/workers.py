"""Page workers: the CPU side of a run, on as many cores as the machine has.

A worker owns the listings it is given. It parses and converts their pages (``normalize``),
drops ids a listing repeats, sets platform images aside, and writes rows and rejects into its
own files under the run's staging directory. All pages of a listing go to the same worker, in
order, so everything per listing happens in one place; the event loop only hands pages over
and collects a small result at the end of each listing.

Workers run either in this process, one thread (``fetch.workers = 0``), or as processes
(started by ``connector.spawn``) fed over socket pairs. Parsing JSON and building Arrow arrays
hold the GIL; in their own processes they use the other cores, and the event loop keeps its
core for fetching. Only pages go out and only listing results and file lists come back, so the
hand-over costs little. A busy worker stops reading its socket, the sends wait, and so, through
the pipeline's bounded stream, do the fetch tasks: backpressure, whichever way workers run.
"""

from __future__ import annotations

import abc
import contextlib
import os
import pickle
import signal
import socket
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import anyio
import anyio.to_thread
import pyarrow as pa
import pyarrow.fs as pafs
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from connector import publish, spawn
from connector.errors import ConnectorError
from connector.lean import quiet_gc
from connector.manifest import ListingError
from connector.pages import Page, PageError, RunInfo, WorkItem
from connector.sinks import FileInfo, PartitionedSink, SinkOptions


class WorkerError(ConnectorError):
    """A worker process failed or went away; the run cannot be trusted."""


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What every worker needs to know; sent once, when it starts."""

    run: RunInfo
    platform_mode: str
    fs: pafs.FileSystem
    layout: publish.Layout
    options: SinkOptions
    file_prefix: str
    reject_prefix: str


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


@dataclass(frozen=True, slots=True)
class Closed:
    """What a worker wrote, and the platform rows it added for the regions it donated."""

    files: list[FileInfo]
    reject_files: list[FileInfo]
    donated: dict[WorkItem, int]


@dataclass(slots=True)
class _Listing:
    seen: set[str] = field(default_factory=set)
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
        self.rejects = publish.RejectWriter(setup.fs, setup.layout, setup.reject_prefix, index)
        # Imported here: a process that only fetches (workers in processes) never needs it.
        from connector.normalize import normalize_page

        self._normalize = normalize_page
        self._listings: dict[WorkItem, _Listing] = {}
        # Under `once`: per region, the first complete listing's platform rows, until the
        # coordinator says which worker donates them.
        self._candidates: dict[str, tuple[WorkItem, list[pa.RecordBatch]]] = {}

    def page(self, page: Page) -> None:
        """Convert a page and write its rows."""
        item = page.item
        listing = self._listings.setdefault(item, _Listing())
        if listing.error is not None:
            return
        try:
            result = self._normalize(page, self.setup.run)
        except PageError as exc:
            listing.error = ListingError.from_exception(exc, opc_request_id=page.opc_request_id)
            return
        if result.rejects:
            listing.rejects += len(result.rejects)
            self.rejects.write(result.rejects)
        batch = _dedupe(listing, result.batch, result.ids)
        mode = self.setup.platform_mode
        if mode != "every":
            is_platform = cast(pa.BooleanArray, batch.column("_is_platform"))
            if is_platform.true_count:
                if mode == "once":
                    listing.platform.append(batch.filter(is_platform))
                batch = batch.filter(_invert(is_platform))
        if batch.num_rows:
            listing.rows += batch.num_rows
            self.sink.write(item.region, batch)

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
        )

    def close(self, donate: frozenset[str]) -> Closed:
        """Write the platform rows of the regions this worker donates; close every file."""
        donated: dict[WorkItem, int] = {}
        for region in sorted(donate):
            item, batches = self._candidates[region]
            for batch in batches:
                self.sink.write(region, batch)
            donated[item] = sum(b.num_rows for b in batches)
        self._candidates.clear()
        return Closed(self.sink.close(), self.rejects.close(), donated)

    def discard(self) -> None:
        """Close files after a failure (the run's staging directory is removed anyway)."""
        try:
            self.sink.close()
        finally:
            self.rejects.close()


def _invert(mask: pa.BooleanArray) -> pa.BooleanArray:
    import pyarrow.compute as pc  # loaded with the normalizer; not in a fetch-only process

    inverted: pa.BooleanArray = pc.invert(mask)
    return inverted


ROW_GROUP_FLOOR = 64 * 1024


def shared_budget(options: SinkOptions, workers: int) -> SinkOptions:
    """Sink options for one of ``workers`` writers.

    A writer holds a row group in memory (as Arrow, about 600 bytes a row) until it is full,
    so the workers share the budget of one writer: with two, each writes row groups of half
    the size (64k rows), and memory stays what it is with one. The floor keeps row groups
    worth reading when there are more workers.
    """
    rows = max(ROW_GROUP_FLOOR, options.row_group_rows // workers)
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


# -- the coordinator's side --------------------------------------------------------------------

OnResult = Callable[[ListingResult], None]


class Workers(abc.ABC):
    """Hands pages to workers and gathers their results (the event loop's side).

    ``serve`` runs in the pipeline's task group for as long as the workers live: it collects
    what they send back. ``page`` and ``end`` feed them; ``close`` finishes them.
    """

    def __init__(self, on_result: OnResult) -> None:
        self.donations = Donations()
        self._on_result = on_result

    def _listing_ended(self, worker: int, result: ListingResult) -> None:
        """A worker's result for a listing: a donor candidate, then the coordinator's."""
        self.donations.offer(worker, result)
        self._on_result(result)

    async def start(self) -> None:  # noqa: B027 - nothing to start for a thread
        """Start the workers early (processes import pyarrow, which takes a moment)."""

    async def serve(self) -> None:  # noqa: B027 - a thread's results come back directly
        """Collect listing results until every worker has closed."""

    @abc.abstractmethod
    async def page(self, page: Page) -> None:
        """Hand a page to the worker that owns its listing; waits while that worker is busy."""

    @abc.abstractmethod
    async def end(self, item: WorkItem, pages: int, error: ListingError | None) -> None:
        """End a listing; its ``ListingResult`` goes to the ``on_result`` callback."""

    @abc.abstractmethod
    async def close(self) -> Closed:
        """Finish every worker: the files written and the platform rows donated."""

    @abc.abstractmethod
    async def discard(self) -> None:
        """Stop every worker after a failure."""


def create(
    setup: WorkerSetup,
    processes: int,
    on_result: OnResult,
    launched: spawn.Launched | None = None,
) -> Workers:
    """Workers in ``processes`` processes (``launched`` already, perhaps), or in a thread of
    this process when 0."""
    if processes == 0:
        return ThreadWorkers(setup, on_result)
    return ProcessWorkers(setup, processes, on_result, launched)


class Donations:
    """Under ``once``: which worker donates each region's platform rows (the first to offer)."""

    def __init__(self) -> None:
        self._taken: set[str] = set()
        self._by_worker: dict[int, set[str]] = {}

    def exclude(self, regions: set[str]) -> None:
        """Regions whose platform images another shard contributes."""
        self._taken |= regions

    def offer(self, worker: int, result: ListingResult) -> None:
        region = result.item.region
        if result.platform_rows and region not in self._taken:
            self._taken.add(region)
            self._by_worker.setdefault(worker, set()).add(region)

    def of(self, worker: int) -> frozenset[str]:
        return frozenset(self._by_worker.get(worker, ()))


class ThreadWorkers(Workers):
    """One ``PageWorker`` in a worker thread of this process."""

    def __init__(self, setup: WorkerSetup, on_result: OnResult) -> None:
        super().__init__(on_result)
        self._worker = PageWorker(setup)
        self._limiter = anyio.CapacityLimiter(1)

    async def page(self, page: Page) -> None:
        await anyio.to_thread.run_sync(self._worker.page, page, limiter=self._limiter)

    async def end(self, item: WorkItem, pages: int, error: ListingError | None) -> None:
        result = await anyio.to_thread.run_sync(
            self._worker.end, item, pages, error, limiter=self._limiter
        )
        self._listing_ended(0, result)

    async def close(self) -> Closed:
        donate = self.donations.of(0)
        return await anyio.to_thread.run_sync(self._worker.close, donate, limiter=self._limiter)

    async def discard(self) -> None:
        await anyio.to_thread.run_sync(self._worker.discard, limiter=self._limiter)


_HEADER = struct.Struct("<QQ")


@dataclass(slots=True)
class _Process:
    index: int
    stream: SocketStream
    receive: BufferedByteReceiveStream
    pid: int | None = None
    assigned_bytes: int = 0
    closed: Closed | None = None


class ProcessWorkers(Workers):
    """``PageWorker`` s in processes (see ``connector.spawn``), fed over socket pairs."""

    def __init__(
        self,
        setup: WorkerSetup,
        count: int,
        on_result: OnResult,
        launched: spawn.Launched | None = None,
    ) -> None:
        super().__init__(on_result)
        self.setup = setup
        self.count = count
        self._launched = launched
        self._processes: list[_Process] = []
        self._owner: dict[WorkItem, _Process] = {}
        self._starting = False
        self._ready = anyio.Event()
        self._closed = anyio.Event()
        self._awaiting = 0  # listings ended whose results have not come back yet
        self._settled = anyio.Event()

    async def start(self) -> None:
        if self._starting:
            await self._ready.wait()
            return
        self._starting = True
        if self._launched is None:
            self._launched = await anyio.to_thread.run_sync(spawn.launch, self.count)
        for index, sock in enumerate(self._launched.sockets):
            stream = await SocketStream.from_socket(sock)
            worker = _Process(index, stream, BufferedByteReceiveStream(stream))
            self._processes.append(worker)
            await _send(worker, ("setup", self.setup))
        for worker in self._processes:
            # Each says its pid once it has imported everything: the workers are ready.
            message = await _receive(worker)
            if message[0] != "ready":
                raise WorkerError(f"worker {worker.index} failed to start: {message[1]}")
            worker.pid = message[1]
        self._ready.set()

    async def serve(self) -> None:
        await self.start()
        async with anyio.create_task_group() as group:
            for worker in self._processes:
                group.start_soon(self._read, worker)

    async def _read(self, worker: _Process) -> None:
        """Listing results as the worker finishes each, then its files; an error ends the run."""
        while True:
            message = await _receive(worker)
            if message[0] == "result":
                self._listing_ended(worker.index, message[1])
                self._awaiting -= 1
                if self._awaiting == 0:
                    self._settled.set()
            elif message[0] == "closed":
                worker.closed = message[1]
                if all(w.closed is not None for w in self._processes):
                    self._closed.set()
                return
            else:
                raise WorkerError(f"worker {worker.index} failed: {message[1]}")

    async def page(self, page: Page) -> None:
        await self.start()
        item = page.item
        worker = self._owner.get(item)
        if worker is None:
            worker = self._owner[item] = min(self._processes, key=lambda w: w.assigned_bytes)
        worker.assigned_bytes += len(page.body)
        fields = (page.region, page.compartment_id, page.number, page.fetched_at)
        await _send(worker, ("page", *fields, page.opc_request_id), page.body)

    async def end(self, item: WorkItem, pages: int, error: ListingError | None) -> None:
        await self.start()
        worker = self._owner.pop(item, None) or min(self._processes, key=lambda w: w.assigned_bytes)
        self._awaiting += 1
        self._settled = anyio.Event()
        await _send(worker, ("end", item, pages, error))

    async def close(self) -> Closed:
        await self.start()
        if self._awaiting:
            await self._settled.wait()  # the donors of platform images are known only then
        for worker in self._processes:
            await _send(worker, ("close", self.donations.of(worker.index)))
        await self._closed.wait()
        files: list[FileInfo] = []
        rejects: list[FileInfo] = []
        donated: dict[WorkItem, int] = {}
        for worker in self._processes:
            assert worker.closed is not None
            files += worker.closed.files
            rejects += worker.closed.reject_files
            donated |= worker.closed.donated
        for worker in self._processes:
            await worker.stream.aclose()
        await anyio.to_thread.run_sync(self._wait)
        return Closed(files, rejects, donated)

    async def discard(self) -> None:
        for worker in self._processes:
            await worker.stream.aclose()
        if self._launched is not None:
            for sock in self._launched.sockets[len(self._processes) :]:
                sock.close()  # never handed to a stream: the failure came before
            await anyio.to_thread.run_sync(self._wait, 5.0)

    def _wait(self, timeout: float = 30.0) -> None:
        """Wait for the workers to exit (they do once their socket closes); kill stragglers."""
        if self._launched is None:
            return
        boot = self._launched.process
        try:
            boot.wait(timeout)
        except subprocess.TimeoutExpired:
            for worker in self._processes:
                if worker.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGKILL)
            boot.kill()
            boot.wait()


def _frame(message: tuple[Any, ...], body_size: int = 0) -> bytes:
    """A frame's head: the two lengths and the pickled message (the body, if any, follows)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload), body_size) + payload


async def _send(worker: _Process, message: tuple[Any, ...], body: bytes = b"") -> None:
    """One frame: the lengths, the pickled message, then ``body`` as is (a page's JSON)."""
    try:
        await worker.stream.send(_frame(message, len(body)))
        if body:
            await worker.stream.send(body)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        raise WorkerError(f"worker {worker.index} went away") from None


async def _receive(worker: _Process) -> tuple[Any, ...]:
    try:
        size, _ = _HEADER.unpack(await worker.receive.receive_exactly(_HEADER.size))
        payload = await worker.receive.receive_exactly(size)
        # The socket pair is private to this process and the children it started.
        message: tuple[Any, ...] = pickle.loads(payload)  # noqa: S301
    except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
        raise WorkerError(f"worker {worker.index} went away") from None
    return message


# -- the worker process --------------------------------------------------------------------------


def serve_fd(fd: int, index: int, count: int) -> None:
    """A worker process's loop (see ``connector._worker_boot``): its setup, then pages in,
    listing results and finally the file list out."""
    with (
        quiet_gc(),
        socket.socket(fileno=fd) as sock,
        sock.makefile("rb", buffering=1 << 20) as incoming,
    ):
        first = _read_message(incoming)
        if first is None or first[0] != "setup":
            return
        try:
            worker = PageWorker(first[1], index, count)
        except Exception as exc:
            _write_message(sock, ("error", f"{type(exc).__name__}: {exc}"))
            return
        _write_message(sock, ("ready", os.getpid()))
        while True:
            message = _read_message(incoming)
            if message is None:  # the coordinator went away, or gave up after a failure
                worker.discard()
                return
            try:
                kind = message[0]
                if kind == "page":
                    worker.page(message[1])
                elif kind == "end":
                    _write_message(sock, ("result", worker.end(*message[1:])))
                elif kind == "close":
                    _write_message(sock, ("closed", worker.close(message[1])))
                    return
            except Exception as exc:  # reported to the coordinator, which fails the run
                worker.discard()
                _write_message(sock, ("error", f"{type(exc).__name__}: {exc}"))
                return


def _read_message(incoming: Any) -> tuple[Any, ...] | None:
    """The next frame (see ``_send``); a page comes back as a ``Page``. None at the end."""
    header = incoming.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size, body_size = _HEADER.unpack(header)
    payload = incoming.read(size)
    body = incoming.read(body_size) if body_size else b""
    if len(payload) < size or len(body) < body_size:
        return None
    message: tuple[Any, ...] = pickle.loads(payload)  # noqa: S301 (see _receive)
    if message[0] == "page":
        return ("page", Page(body, *message[1:]))
    return message


def _write_message(sock: socket.socket, message: tuple[Any, ...]) -> None:
    sock.sendall(_frame(message))
