"""Limits that keep a hostile or broken service from hanging a run or exhausting its memory.

- **Response size.** A body is read a chunk at a time and refused as soon as it passes
  ``fetch.max_response_bytes`` on the wire or ``fetch.max_decompressed_bytes`` once decoded.
  Decoding (gzip, deflate) is done here, never more than the limit plus one byte at a time, so a
  gzip bomb (1 MB inflating to 1 GiB) is refused after inflating at most the limit, and a gzip
  stream that stops before its trailer is recognised as cut short.
- **Responses in flight** (``fetch.max_inflight_bytes``): the decoded bytes of every response
  the fetching process holds (being read, or read and not yet handed to a worker) share one
  budget, so memory stays bounded whatever ``fetch.concurrency`` is (``ResponseBudget``).
- **Pages per listing** (``fetch.max_pages_per_listing``): endless pagination (every page a
  new token) fails its listing instead of running forever.
- **Run deadline** (``fetch.run_deadline_s``) and **worker heartbeat**
  (``fetch.worker_heartbeat_s``): a run that outlives its deadline, or a worker that stops
  answering, fails the run with the reason.
- **Records that cannot be parsed on their own.** A page that orjson refuses (5,000-deep
  nesting, invalid UTF-8, a lone surrogate) is split into its top-level elements by a scanner
  that only tracks strings and brackets; each element is parsed alone and the bad ones are
  rejected with their reason. A page whose structure itself is broken (cut short) cannot be
  split: that is truncation, recognised by parsing and retried, whatever its last byte is.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from connector.errors import ConnectorError, PaginationError, TransportError

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one run (from ``[fetch]``)."""

    max_pages_per_listing: int = 10_000
    """10 million images at 1,000 a page: far beyond any real compartment."""
    max_response_bytes: int = 64 * MiB
    """On the wire. A page of 1,000 images is about 1 MB."""
    max_decompressed_bytes: int = 128 * MiB
    """After gzip or deflate. Bounds the memory one response can take."""
    max_inflight_bytes: int = 256 * MiB
    """Decoded bytes of every response held at once (``ResponseBudget``)."""
    run_deadline_s: float = 6 * 3600.0
    """0 = none."""
    worker_heartbeat_s: float = 60.0
    """A worker process that sends nothing for this long, while it has work, is stalled."""


class LimitExceeded(ConnectorError):
    """A configured limit was reached; the message names it and the key that sets it."""


class ResponseTooLarge(LimitExceeded):
    """A response passed ``fetch.max_response_bytes`` or ``fetch.max_decompressed_bytes``."""


class TooManyPages(LimitExceeded, PaginationError):
    """A listing passed ``fetch.max_pages_per_listing`` (the service keeps paginating)."""


class DeadlineExceeded(LimitExceeded):
    """The run passed ``fetch.run_deadline_s``."""


# -- response bodies -------------------------------------------------------------------------


class BodyReader:
    """Accumulates a response body from its chunks, decoding it, within the limits.

    ``feed`` each chunk as it arrives off the socket, then ``finish``. Raises
    ``ResponseTooLarge`` the moment a limit is passed, and ``TransportError`` for an encoded
    stream that is corrupt or ends before its end (retryable, like any cut body).

    With a ``lease`` of the process's ``ResponseBudget``, use ``receive`` and ``complete``
    instead: every decoded byte is taken from the budget before it exists (gzip is inflated
    ``STEP`` bytes at a time for that), waiting while the responses in flight hold it.
    """

    STEP = 1 * MiB
    """Decoded bytes taken from the budget at a time: a gzip bomb's 64 KB chunk can inflate to
    64 MB, which must not exist before the budget has room for it."""

    def __init__(self, encoding: str | None, limits: Limits, lease: Lease | None = None) -> None:
        self.encoding = (encoding or "identity").strip().lower()
        self.max_wire = limits.max_response_bytes
        self.max_body = limits.max_decompressed_bytes
        self.lease = lease
        self.wire = 0
        self._parts: list[bytes] = []
        self._size = 0
        self._pending_deflate = b""
        self._plain = self.encoding in ("identity", "")
        """Sent as is: each chunk off the wire is a decoded piece."""
        if self._plain:
            self._decoder: zlib._Decompress | None = None
        elif self.encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "deflate":
            self._decoder = None
        else:
            raise TransportError(f"unsupported Content-Encoding {self.encoding!r}")

    def check_declared(self, content_length: int | None) -> None:
        """Refuse at once a body whose declared length is over the wire limit."""
        if content_length is not None and content_length > self.max_wire:
            raise ResponseTooLarge(
                f"the response announces {content_length} bytes, more than "
                f"fetch.max_response_bytes = {self.max_wire}"
            )

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk off the wire (no budget)."""
        for piece in self._decode(chunk, self.max_body + 1):
            self._keep(piece)

    def finish(self) -> bytes:
        """The whole decoded body; ``TransportError`` if an encoded stream was cut short."""
        for piece in self._flush():
            self._keep(piece)
        return b"".join(self._parts)

    async def receive(self, chunk: bytes) -> None:
        """``feed``, taking each decoded piece from the budget before it is decoded."""
        assert self.lease is not None
        if self._plain:
            # A chunk off the wire is its own decoded piece: taken from the budget at once, with
            # no pause (nothing inflates; reading the socket is the event loop's turn anyway).
            self._count_wire(chunk)
            await self.lease.take(len(chunk))
            self._keep(chunk)
            return
        pieces = self._decode(chunk, self.STEP)
        while True:
            step = min(self.STEP, self.max_body + 1 - self._size)  # what one piece may inflate to
            await self.lease.take(step)
            piece = next(pieces, None)
            self.lease.give(step - (len(piece) if piece is not None else 0))
            if piece is None:
                return
            self._keep(piece)
            # Let the other responses decode too: a 50 KB bomb inflates in one chunk.
            await anyio.lowlevel.checkpoint()

    async def complete(self) -> bytes:
        """``finish``, taking the decoder's last bytes from the budget. The joined body is a
        copy of the pieces while both exist; the join runs without a pause, so at most one such
        copy exists at a time in the process (within the fixed allowance, not the budget)."""
        assert self.lease is not None
        for piece in self._flush():
            await self.lease.take(len(piece))
            self._keep(piece)
        body = b"".join(self._parts)
        self._parts.clear()
        return body

    def drop(self) -> None:
        """Let go of what was decoded: the reader stays referenced from the traceback of the
        error that stopped it, which a failed listing keeps; 64 refused bombs would otherwise
        keep 64 × ``max_decompressed_bytes`` alive long after their budget was given back."""
        self._parts.clear()

    def _count_wire(self, chunk: bytes) -> None:
        self.wire += len(chunk)
        if self.wire > self.max_wire:
            raise ResponseTooLarge(
                f"the response passed fetch.max_response_bytes = {self.max_wire} on the wire"
            )

    def _decode(self, chunk: bytes, step: int) -> Iterator[bytes]:
        """The decoded pieces of ``chunk`` (each at most ``step`` bytes once decoding)."""
        self._count_wire(chunk)
        if self._plain:
            yield chunk
            return
        if self.encoding == "deflate" and self._decoder is None:
            self._pending_deflate += chunk
            if len(self._pending_deflate) < 2:
                return
            # "deflate" is meant to be zlib-wrapped; some servers send raw deflate.
            wrapped = _zlib_header(self._pending_deflate[:2])
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            chunk, self._pending_deflate = self._pending_deflate, b""
        yield from self._inflate(chunk, step)

    def _flush(self) -> Iterator[bytes]:
        if self.encoding == "deflate" and self._decoder is None and self._pending_deflate:
            raise TransportError("the deflate-encoded response body was cut short")
        if self._decoder is not None:
            try:
                yield self._decoder.flush()
            except zlib.error:
                raise TransportError("the encoded response body is corrupt") from None
            if not self._decoder.eof:
                raise TransportError(
                    f"the {self.encoding}-encoded response body was cut short (no end of stream)"
                )

    def _inflate(self, data: bytes, step: int) -> Iterator[bytes]:
        assert self._decoder is not None
        while data:
            if self._decoder.eof:
                trailing = self._decoder.unused_data + data
                if self.encoding in ("gzip", "x-gzip") and trailing.strip(b"\x00"):
                    # Another gzip member follows (concatenated gzip is valid).
                    self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    data = trailing
                    continue
                return
            room = min(step, self.max_body - self._size + 1)
            try:
                out = self._decoder.decompress(data, room)
            except zlib.error:
                raise TransportError("the encoded response body is corrupt") from None
            yield out
            data = self._decoder.unconsumed_tail

    def _keep(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._size > self.max_body:
            self.drop()
            raise ResponseTooLarge(
                f"the response passed fetch.max_decompressed_bytes = {self.max_body} once "
                f"decoded (after {self.wire} bytes on the wire); refused without decoding more"
            )
        self._parts.append(data)


# -- responses in flight ---------------------------------------------------------------------


class ResponseBudget:
    """The decoded bytes every response of the process may hold at once, ``total``.

    Each response takes a ``Lease``; its reader takes bytes before decoding them and the lease
    is released once the page has left the process (handed to a worker). A response may grow
    to ``claim`` bytes (``fetch.max_decompressed_bytes``, or the whole budget if smaller), and
    nobody knows in advance how far it will: bytes are granted only while every response being
    read could still finish, one after another, with what is free and what the others will
    give back (the banker's rule). So responses wait for room, in any number, and never wait
    for each other in a circle; the only response refused is one that alone needs more than
    the whole budget.
    """

    def __init__(self, total: int, claim: int) -> None:
        self.total = total
        self.claim = min(claim + 1, total)  # a response is refused at its limit plus one byte
        self.used = 0
        self.peak = 0
        self._leases: set[Lease] = set()
        self._changed: anyio.Event | None = None  # made by a waiter (it needs an event loop)

    def lease(self) -> Lease:
        """A lease for one response (empty until its reader takes bytes)."""
        lease = Lease(self)
        self._leases.add(lease)
        return lease

    def _grantable(self, lease: Lease, size: int) -> bool:
        free = self.total - self.used - size
        if free >= self.claim:
            return True  # any response can finish from what is free: the usual case, at once
        if free < 0:
            return False
        needs: list[tuple[int, int]] = []
        for other in self._leases:
            held = other.held + (size if other is lease else 0)
            if other.reading:
                needs.append((max(0, self.claim - held), held))
            else:
                free += held  # read whole: given back once handed on, whatever happens
        for need, held in sorted(needs):
            if need > free:
                return False
            free += held
        return True

    def _changed_now(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


class Lease:
    """One response's part of the ``ResponseBudget``."""

    __slots__ = ("budget", "held", "reading")

    def __init__(self, budget: ResponseBudget) -> None:
        self.budget = budget
        self.held = 0
        self.reading = True

    async def take(self, size: int) -> None:
        """Take ``size`` more bytes, waiting for room; ``ResponseTooLarge`` if this response
        alone would pass the whole budget."""
        budget = self.budget
        if size <= 0:
            return
        if self.held + size > budget.total:
            raise ResponseTooLarge(
                f"the response passed fetch.max_inflight_bytes = {budget.total} once decoded "
                "(the budget of every response in flight); refused without decoding more"
            )
        while not budget._grantable(self, size):
            if budget._changed is None:
                budget._changed = anyio.Event()
            await budget._changed.wait()
        self.held += size
        budget.used += size
        budget.peak = max(budget.peak, budget.used)

    def give(self, size: int) -> None:
        """Give back ``size`` bytes taken but not used."""
        if size > 0:
            self.held -= size
            self.budget.used -= size
            self.budget._changed_now()

    def done(self) -> None:
        """The response is read whole: it will take nothing more."""
        if self.reading:
            self.reading = False
            self.budget._changed_now()

    def release(self) -> None:
        """The response is gone (handed on, or failed): all its bytes back. Idempotent."""
        budget = self.budget
        if self in budget._leases:
            budget._leases.discard(self)
            budget.used -= self.held
            self.held = 0
            self.reading = False
            budget._changed_now()


def _zlib_header(head: bytes) -> bool:
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0


# -- pagination ------------------------------------------------------------------------------


class PageCounter:
    """Counts one listing's pages and refuses the page past ``max_pages``."""

    def __init__(self, limits: Limits) -> None:
        self.max_pages = limits.max_pages_per_listing
        self.pages = 0

    def next_page(self) -> int:
        """Count a page about to be requested; its number."""
        if self.pages >= self.max_pages:
            raise TooManyPages(
                f"the listing still has more pages after {self.pages}; "
                f"fetch.max_pages_per_listing = {self.max_pages} (the service may be looping)"
            )
        self.pages += 1
        return self.pages
