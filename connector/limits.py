"""Limits that keep a hostile or broken service from hanging a run or exhausting its memory.

- **Response size.** A body is read a chunk at a time and refused as soon as it passes
  ``fetch.max_response_bytes`` on the wire or ``fetch.max_decompressed_bytes`` once decoded.
  Decoding (gzip, deflate) is done here, never more than the limit plus one byte at a time, so a
  gzip bomb (1 MB inflating to 1 GiB) is refused after inflating at most the limit, and a gzip
  stream that stops before its trailer is recognised as cut short.
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
from dataclasses import dataclass

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
    """

    def __init__(self, encoding: str | None, limits: Limits) -> None:
        self.encoding = (encoding or "identity").strip().lower()
        self.max_wire = limits.max_response_bytes
        self.max_body = limits.max_decompressed_bytes
        self.wire = 0
        self._parts: list[bytes] = []
        self._size = 0
        if self.encoding in ("identity", ""):
            self._decoder: zlib._Decompress | None = None
        elif self.encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "deflate":
            self._decoder = None
            self._pending_deflate = b""
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
        """Take the next chunk off the wire."""
        self.wire += len(chunk)
        if self.wire > self.max_wire:
            raise ResponseTooLarge(
                f"the response passed fetch.max_response_bytes = {self.max_wire} on the wire"
            )
        if self.encoding in ("identity", ""):
            self._keep(chunk)
        elif self.encoding == "deflate" and self._decoder is None:
            self._pending_deflate += chunk
            if len(self._pending_deflate) >= 2:
                # "deflate" is meant to be zlib-wrapped; some servers send raw deflate.
                wrapped = _zlib_header(self._pending_deflate[:2])
                self._decoder = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
                pending, self._pending_deflate = self._pending_deflate, b""
                self._inflate(pending)
        else:
            self._inflate(chunk)

    def finish(self) -> bytes:
        """The whole decoded body; ``TransportError`` if an encoded stream was cut short."""
        if self.encoding == "deflate" and self._decoder is None and self._pending_deflate:
            raise TransportError("the deflate-encoded response body was cut short")
        if self._decoder is not None:
            try:
                self._keep(self._decoder.flush())
            except zlib.error:
                raise TransportError("the encoded response body is corrupt") from None
            if not self._decoder.eof:
                raise TransportError(
                    f"the {self.encoding}-encoded response body was cut short (no end of stream)"
                )
        return b"".join(self._parts)

    def _inflate(self, data: bytes) -> None:
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
            room = self.max_body - self._size + 1
            try:
                out = self._decoder.decompress(data, room)
            except zlib.error:
                raise TransportError("the encoded response body is corrupt") from None
            self._keep(out)
            data = self._decoder.unconsumed_tail

    def _keep(self, data: bytes) -> None:
        if not data:
            return
        self._size += len(data)
        if self._size > self.max_body:
            raise ResponseTooLarge(
                f"the response passed fetch.max_decompressed_bytes = {self.max_body} once "
                f"decoded (after {self.wire} bytes on the wire); refused without decoding more"
            )
        self._parts.append(data)


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
