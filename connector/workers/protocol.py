"""What the coordinator and a worker process say to each other, and how it is framed.

A frame is two little-endian lengths (message, body), the pickled message, then the body as
is: a page's JSON travels without being pickled or copied into the message. The socket pair
is private to this process and the children it started, so unpickling is safe.

The conversation: ``Setup`` → ``Ready``; then ``PageHead`` (with its body) and ``End`` for each
listing, each ``End`` answered by a ``Result``; once, ``Flush`` (unanswered) when the last
listing has started; finally ``Close`` → ``Finished``. A worker that fails says ``Failed`` and
stops.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from connector.errors import WorkerError
from connector.pages import Page, WorkItem

if TYPE_CHECKING:
    from connector.pages import ListingError
    from connector.workers.page import Closed, ListingResult, WorkerSetup

_HEADER = struct.Struct("<QQ")

# -- to a worker ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """The first message: what the worker needs to start."""

    setup: WorkerSetup


@dataclass(frozen=True, slots=True)
class PageHead:
    """A page without its body, which follows the message in the frame."""

    region: str
    compartment_id: str
    number: int
    fetched_at: datetime
    opc_request_id: str | None

    @classmethod
    def of(cls, page: Page) -> PageHead:
        """The head of ``page``."""
        return cls(
            page.region, page.compartment_id, page.number, page.fetched_at, page.opc_request_id
        )

    def page(self, body: bytes) -> Page:
        """The page again, with its body."""
        return Page(
            body,
            self.region,
            self.compartment_id,
            self.number,
            self.fetched_at,
            self.opc_request_id,
        )


@dataclass(frozen=True, slots=True)
class End:
    """A listing has no more pages; ``error`` if fetching it failed."""

    item: WorkItem
    pages: int
    error: ListingError | None


@dataclass(frozen=True, slots=True)
class Close:
    """No more listings: write the platform rows of the ``donate`` regions, close the files."""

    donate: frozenset[str]


@dataclass(frozen=True, slots=True)
class Flush:
    """Every listing has started: write the rows held for row groups now, while the last pages
    are still on their way, rather than all at ``Close``."""


ToWorker = Setup | PageHead | End | Flush | Close

# -- from a worker -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker has imported everything and holds its setup."""

    pid: int


@dataclass(frozen=True, slots=True)
class Result:
    """A listing's result, once its ``End`` is processed."""

    result: ListingResult


@dataclass(frozen=True, slots=True)
class Finished:
    """The files the worker wrote; its last message."""

    closed: Closed


@dataclass(frozen=True, slots=True)
class Failed:
    """The worker failed (``reason`` names the exception); its last message."""

    reason: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a page could be parsed: ``reason`` says why not (cut short), None if it was."""

    item: WorkItem
    number: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class Alive:
    """Sent every quarter of ``fetch.worker_heartbeat_s`` by a thread of the worker: a worker
    that sends nothing for the whole span is stopped or hung, and the run fails."""


FromWorker = Ready | Result | Finished | Failed | Alive | Verdict


class Readable(Protocol):
    """A buffered binary file (the worker's end of its socket, as a file)."""

    def read(self, size: int, /) -> bytes: ...


def _frame(message: ToWorker | FromWorker, body_size: int = 0) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload), body_size) + payload


class Channel:
    """The coordinator's end of one worker's socket."""

    def __init__(self, index: int, stream: SocketStream) -> None:
        self.index = index
        self._stream = stream
        self._receive = BufferedByteReceiveStream(stream)
        self.failed: str | None = None
        """The reason of the worker's ``Failed`` message, once received."""
        self._said: anyio.Event | None = None

    async def send(self, message: ToWorker, body: bytes = b"") -> None:
        """One frame; waits while the worker's socket is full (that is the backpressure)."""
        try:
            await self._stream.send(_frame(message, len(body)))
            if body:
                await self._stream.send(body)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            # A worker that failed (a full disk) said why, then exited: its socket may break
            # under a send before its last message is read. Its reason, not "went away".
            if self.failed is None:
                self._said = anyio.Event()
                with anyio.move_on_after(2):
                    await self._said.wait()
            if self.failed is not None:
                raise WorkerError(f"worker {self.index} failed: {self.failed}") from None
            raise _went_away(self.index) from None

    async def send_page(self, page: Page) -> None:
        """A page: its head, then its body as is."""
        await self.send(PageHead.of(page), page.body)

    async def receive(self) -> FromWorker:
        """The worker's next message; ``WorkerError`` if it went away."""
        try:
            size, _ = _HEADER.unpack(await self._receive.receive_exactly(_HEADER.size))
            payload = await self._receive.receive_exactly(size)
            message: FromWorker = pickle.loads(payload)  # noqa: S301 (see the module's docstring)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
            raise _went_away(self.index) from None
        if isinstance(message, Failed):
            self.failed = message.reason
            if self._said is not None:
                self._said.set()
        return message

    async def aclose(self) -> None:
        """Close the socket: a worker that reads its end exits."""
        await self._stream.aclose()


def read(incoming: Readable) -> Setup | Page | End | Flush | Close | None:
    """The worker's side: the next message, a page already joined to its body; None at the
    end (the coordinator went away, or gave up after a failure)."""
    header = incoming.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size, body_size = _HEADER.unpack(header)
    payload = incoming.read(size)
    body = incoming.read(body_size) if body_size else b""
    if len(payload) < size or len(body) < body_size:
        return None
    message: ToWorker = pickle.loads(payload)  # noqa: S301 (see the module's docstring)
    if isinstance(message, PageHead):
        return message.page(body)
    return message


_WRITING = threading.Lock()
"""The worker's loop and its heartbeat thread share the socket: one frame at a time."""


def write(sock: socket.socket, message: FromWorker) -> None:
    """The worker's side: send a message to the coordinator."""
    frame = _frame(message)
    with _WRITING:
        sock.sendall(frame)


def heartbeat(sock: socket.socket, interval_s: float) -> threading.Event:
    """Start sending ``Alive`` every ``interval_s`` from a daemon thread; set the returned event
    to stop it. A stopped process (SIGSTOP) stops its thread too, which is the point."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                write(sock, Alive())
            except OSError:
                return  # the coordinator went away

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
    return stop


def _went_away(index: int) -> WorkerError:
    error = WorkerError(_gone(index))
    error.gone = True
    return error


def _gone(index: int) -> str:
    """What the user reads when a worker process ends mid-run, on its own."""
    return (
        f"worker process {index} went away mid-run (killed, perhaps by the out-of-memory "
        "killer); nothing was published"
    )
