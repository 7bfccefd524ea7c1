"""The event loop's side of the workers: it hands each listing's pages to one worker, in order,
and gathers their results; a worker that fails or goes away fails the run (``WorkerError``).

``ThreadWorkers`` runs one ``PageWorker`` in a thread of this process (``fetch.workers = 0``);
``ProcessWorkers`` feeds worker processes (``spawn``) over socket pairs (``protocol``), each
listing to the least loaded worker.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from anyio.abc import SocketStream
from anyio.streams.memory import MemoryObjectSendStream

from connector import machine
from connector.errors import WorkerError
from connector.lean import quiet_gc
from connector.pages import AllStarted, ListingError, Message, Page, WorkItem
from connector.sinks import FileInfo
from connector.workers import protocol, spawn
from connector.workers.page import Closed, ListingResult, PageWorker, WorkerSetup

OnResult = Callable[[ListingResult], None]
Producer = Callable[[MemoryObjectSendStream[Message]], Coroutine[Any, Any, None]]
"""A coroutine that feeds pages (and the end of each listing) to the workers."""
Launched = spawn.Launched


class Workers(abc.ABC):
    """Hands pages to workers and gathers their results (the event loop's side).

    ``serve`` runs in the pipeline's task group for as long as the workers live: it collects
    what they send back. ``page`` and ``end`` feed them; ``close`` finishes them.
    """

    def __init__(self, on_result: OnResult) -> None:
        self.donations = Donations()
        self.verdicts = Verdicts()
        self._on_result = on_result

    def _listing_ended(self, worker: int, result: ListingResult) -> None:
        """A worker's result for a listing: a donor candidate, then the coordinator's."""
        self.donations.offer(worker, result)
        self._on_result(result)

    async def feed(self, produce: Producer) -> None:
        """Hand what ``produce`` sends (pages, the end of each listing, and ``AllStarted``
        once the last listing has begun) to the workers, each listing to its own worker."""
        # A few pages: the workers' sockets hold more, and fetch tasks hold one each.
        send, receive = anyio.create_memory_object_stream[Message](4)
        async with anyio.create_task_group() as group:
            group.start_soon(produce, send)
            async with receive:
                async for message in receive:
                    if isinstance(message, Page):
                        try:
                            await self.page(message)
                        finally:
                            message.released()  # in a worker now: out of the fetcher's budget
                    elif isinstance(message, AllStarted):
                        await self.flush()
                    else:
                        await self.end(message.item, message.pages, message.error)

    async def start(self) -> None:  # noqa: B027 - nothing to start for a thread
        """Start the workers early (processes import pyarrow, which takes a moment)."""

    def parsing(self) -> contextlib.AbstractContextManager[None]:
        """Around the feeding of pages: nothing where processes parse them."""
        return contextlib.nullcontext()

    async def serve(self) -> None:  # noqa: B027 - a thread's results come back directly
        """Collect listing results until every worker has closed."""

    @abc.abstractmethod
    async def page(self, page: Page) -> None:
        """Hand a page to the worker that owns its listing; waits while that worker is busy."""

    @abc.abstractmethod
    async def end(self, item: WorkItem, pages: int, error: ListingError | None) -> None:
        """End a listing; its ``ListingResult`` goes to the ``on_result`` callback."""

    async def flush(self) -> None:  # noqa: B027 - a thread shares this process's cores
        """Every listing has started: workers write the rows they hold now, while the last
        pages are still on their way (worker processes; a thread writes at ``close``)."""

    @abc.abstractmethod
    async def close(self) -> Closed:
        """Finish every worker: the files written and the platform rows donated."""

    @abc.abstractmethod
    async def discard(self) -> None:
        """Stop every worker after a failure."""

    async def reap(self) -> None:  # noqa: B027 - a thread has no process to wait for
        """After ``close``: wait for the worker processes to exit. They have closed their files
        before they answered ``close``; their exit (the kernel freeing their memory) overlaps
        what the run does next, the commit."""


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


class Verdicts:
    """Whether each page handed to a worker could be parsed, for the fetch task that sent it.

    A page whose JSON is cut short (a proxy that lost the end and sent a Content-Length to
    match) is recognised only by parsing it, which the workers do anyway: they say so for each
    page, and the fetch task asks again for the pages that failed before ending its listing.
    """

    def __init__(self) -> None:
        self._known: dict[WorkItem, dict[int, str | None]] = {}
        self._waiting: dict[WorkItem, anyio.Event] = {}

    def put(self, item: WorkItem, number: int, reason: str | None) -> None:
        """A worker's verdict on page ``number`` of ``item``."""
        self._known.setdefault(item, {})[number] = reason
        waiting = self._waiting.pop(item, None)
        if waiting is not None:
            waiting.set()

    async def collect(self, item: WorkItem, numbers: set[int]) -> dict[int, str | None]:
        """The verdicts on ``numbers`` once all are in (each is handed out once)."""
        while True:
            known = self._known.get(item, {})
            if numbers <= known.keys():
                found = {number: known.pop(number) for number in numbers}
                if not known:
                    self._known.pop(item, None)
                return found
            waiting = self._waiting.setdefault(item, anyio.Event())
            await waiting.wait()

    def forget(self, item: WorkItem) -> None:
        """Drop what nobody will collect (pages replayed without a fetch task)."""
        self._known.pop(item, None)


class ThreadWorkers(Workers):
    """One ``PageWorker`` in a worker thread of this process."""

    def __init__(self, setup: WorkerSetup, on_result: OnResult) -> None:
        super().__init__(on_result)
        self._worker = PageWorker(setup)
        self._limiter = anyio.CapacityLimiter(1)

    async def page(self, page: Page) -> None:
        reason = await anyio.to_thread.run_sync(self._worker.page, page, limiter=self._limiter)
        self.verdicts.put(page.item, page.number, reason)

    async def end(self, item: WorkItem, pages: int, error: ListingError | None) -> None:
        self.verdicts.forget(item)
        result = await anyio.to_thread.run_sync(
            self._worker.end, item, pages, error, limiter=self._limiter
        )
        self._listing_ended(0, result)

    def parsing(self) -> contextlib.AbstractContextManager[None]:
        """A quiet GC while pages are parsed in this process (a worker thread). With worker
        processes the run's own process only fetches, and a raised threshold there would let
        the reference cycles of thousands of requests pile up (``docs/performance.md``)."""
        return quiet_gc()

    async def close(self) -> Closed:
        donate = self.donations.of(0)
        return await anyio.to_thread.run_sync(self._worker.close, donate, limiter=self._limiter)

    async def discard(self) -> None:
        await anyio.to_thread.run_sync(self._worker.discard, limiter=self._limiter)


@dataclass(slots=True)
class _Process:
    channel: protocol.Channel
    pid: int | None = None
    started: int | None = None
    """The process's start time (``machine.process_start``): its pid, once reused, is not it."""
    assigned_bytes: int = 0
    closed: Closed | None = None
    heard: float = field(default_factory=time.monotonic)
    """When the worker last sent anything (its heartbeat comes every quarter of the limit)."""

    @property
    def index(self) -> int:
        return self.channel.index


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
        self._exiting = False  # closed: the processes exit on their own (``reap``)

    async def start(self) -> None:
        if self._starting:
            await self._ready.wait()
            return
        self._starting = True
        if self._launched is None:
            self._launched = await anyio.to_thread.run_sync(spawn.launch, self.count)
        for index, sock in enumerate(self._launched.sockets):
            channel = protocol.Channel(index, await SocketStream.from_socket(sock))
            self._processes.append(_Process(channel))
            await channel.send(protocol.Setup(self.setup))
        for worker in self._processes:
            # Each says its pid once it has imported everything: the workers are ready.
            with anyio.move_on_after(self.setup.heartbeat_s) as waited:
                message = await worker.channel.receive()
            if waited.cancelled_caught:
                raise WorkerError(
                    f"worker {worker.index} did not start within {self.setup.heartbeat_s:g} s "
                    "(fetch.worker_heartbeat_s)"
                )
            if not isinstance(message, protocol.Ready):
                reason = message.reason if isinstance(message, protocol.Failed) else message
                raise WorkerError(f"worker {worker.index} failed to start: {reason}")
            worker.pid = message.pid
            worker.started = machine.process_start(message.pid)
            worker.heard = time.monotonic()
        self._ready.set()

    async def serve(self) -> None:
        await self.start()
        async with anyio.create_task_group() as group:
            for worker in self._processes:
                group.start_soon(self._read, worker)
            await self._watch()
            group.cancel_scope.cancel()

    async def _watch(self) -> None:
        """Fail the run when a worker has sent nothing (not even its heartbeat) for
        ``heartbeat_s``: it was stopped (SIGSTOP) or hangs, and the run would wait forever."""
        limit = self.setup.heartbeat_s
        while not self._closed.is_set():
            now = time.monotonic()
            for worker in self._processes:
                if worker.closed is None and now - worker.heard > limit:
                    raise WorkerError(
                        f"worker {worker.index} (pid {worker.pid}) has sent nothing for "
                        f"{now - worker.heard:.0f} s: it is stopped or hung "
                        f"(fetch.worker_heartbeat_s = {limit:g})"
                    )
            with anyio.move_on_after(min(1.0, limit / 4)):
                await self._closed.wait()

    async def _read(self, worker: _Process) -> None:
        """Listing results as the worker finishes each, then its files; an error ends the run."""
        while True:
            message = await worker.channel.receive()
            worker.heard = time.monotonic()
            if isinstance(message, protocol.Alive):
                continue
            if isinstance(message, protocol.Verdict):
                self.verdicts.put(message.item, message.number, message.reason)
                continue
            if isinstance(message, protocol.Result):
                self._listing_ended(worker.index, message.result)
                self._awaiting -= 1
                if self._awaiting == 0:
                    self._settled.set()
            elif isinstance(message, protocol.Finished):
                worker.closed = message.closed
                if all(w.closed is not None for w in self._processes):
                    self._closed.set()
                return
            else:
                reason = message.reason if isinstance(message, protocol.Failed) else message
                raise WorkerError(f"worker {worker.index} failed: {reason}")

    async def page(self, page: Page) -> None:
        await self.start()
        item = page.item
        worker = self._owner.get(item)
        if worker is None:
            worker = self._owner[item] = min(self._processes, key=lambda w: w.assigned_bytes)
        worker.assigned_bytes += len(page.body)
        await worker.channel.send_page(page)

    async def end(self, item: WorkItem, pages: int, error: ListingError | None) -> None:
        await self.start()
        worker = self._owner.pop(item, None) or min(self._processes, key=lambda w: w.assigned_bytes)
        self.verdicts.forget(item)
        self._awaiting += 1
        self._settled = anyio.Event()
        await worker.channel.send(protocol.End(item, pages, error))

    async def flush(self) -> None:
        await self.start()
        for worker in self._processes:
            await worker.channel.send(protocol.Flush())

    async def close(self) -> Closed:
        await self.start()
        if self._awaiting:
            await self._settled.wait()  # the donors of platform images are known only then
        for worker in self._processes:
            await worker.channel.send(protocol.Close(self.donations.of(worker.index)))
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
            await worker.channel.aclose()
        self._exiting = True
        busy = sum(w.closed.busy_s for w in self._processes if w.closed is not None)
        return Closed(files, rejects, donated, busy)

    async def reap(self) -> None:
        if self._exiting:
            self._exiting = False
            await anyio.to_thread.run_sync(self._wait)

    async def discard(self) -> None:
        for worker in self._processes:
            await worker.channel.aclose()
        if self._launched is not None:
            for sock in self._launched.sockets[len(self._processes) :]:
                sock.close()  # never handed to a stream: the failure came before
            await anyio.to_thread.run_sync(self._wait, 5.0)

    def _wait(self, timeout: float = 30.0) -> None:
        """Wait for the workers to exit (they do once their socket closes); kill stragglers.

        The boot process is worker 0 and the others' parent, and waits for them before it
        exits; but once it was killed, the others run on, orphans, and a worker still
        discarding (closing its files, deleting them: on S3, pyarrow then puts its folder's
        marker back) would write into a staging the run has removed already. So each worker
        is waited for by its pid too.
        """
        if self._launched is None:
            return
        deadline = time.monotonic() + timeout
        boot = self._launched.process
        with contextlib.suppress(subprocess.TimeoutExpired):
            boot.wait(timeout)
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.02)
        stragglers = self._running()
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        boot.kill()
        boot.wait()
        gone = time.monotonic() + 2.0  # a SIGKILL takes effect soon, not at once
        while stragglers and self._running() and time.monotonic() < gone:
            time.sleep(0.01)

    def _running(self) -> list[int]:
        """The pids of the workers that still run (not exited, not a zombie)."""
        return [
            w.pid
            for w in self._processes
            if w.pid is not None and machine.process_running(w.pid, w.started)
        ]
