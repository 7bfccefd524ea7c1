"""The HTTP client: signed GETs with retries, adaptive throttling and one error hierarchy.

One ``OciClient`` (one aiohttp session, one connection pool) serves a whole run. Every
lower-level failure is translated here, at one boundary, into ``TransportError`` or
``OciApiError``; nothing from aiohttp leaks to callers.
"""

from __future__ import annotations

import contextlib
import platform
import ssl
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import anyio
import orjson
import structlog
from yarl import URL

from connector import __version__, diagnose
from connector.auth import RequestSigner
from connector.errors import OciApiError, PaginationError, RequestTimeout, TransportError
from connector.limits import BodyReader, Limits, PageCounter
from connector.pages import PageError
from connector.retry import AdaptiveLimiter, PriorityGate, RetryPolicy, is_retryable_status

USER_AGENT = (
    f"oci-images-connector/{__version__} (Python {platform.python_version()}; "
    f"aiohttp {aiohttp.__version__})"
)

log = structlog.get_logger("connector.client")


@dataclass(frozen=True, slots=True)
class Response:
    """A successful response, read in full."""

    status: int
    body: bytes
    opc_request_id: str | None
    next_page: str | None
    elapsed_ms: float
    attempts: int


@dataclass(frozen=True, slots=True)
class PageResponse:
    """One page of a list call: its number in the listing (from 1) and the response."""

    number: int
    response: Response
    token: str | None = None
    """The page token this page was requested with (None for the first): to ask again."""


@dataclass(slots=True)
class RequestCounters:
    """What the run sent, for the manifest and the summary line."""

    sent: int = 0
    retried: int = 0
    throttled: int = 0
    failed: int = 0


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Connection and retry settings, from the ``[fetch]`` and ``[oci]`` sections."""

    concurrency: int = 16
    max_requests_per_second: float = 0.0
    request_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    ca_bundle: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: Limits = field(default_factory=Limits)
    profile: str = ""
    """Who signs, for messages: 'DEFAULT of ~/.oci/config'."""


class OciClient:
    """Signed, retried, throttle-aware GETs against OCI endpoints; an async context manager."""

    def __init__(self, signer: RequestSigner, options: ClientOptions | None = None) -> None:
        self.options = options or ClientOptions()
        self.signer = signer
        self.limiter = AdaptiveLimiter(
            self.options.concurrency, self.options.max_requests_per_second or None
        )
        self.counters = RequestCounters()
        self._session: aiohttp.ClientSession | None = None
        self._answered: set[str] = set()
        """Hosts that have answered a request of this run (``connector.diagnose``)."""
        self.aborted: diagnose.RunAbort | None = None
        """The first error seen that concerns the whole run (TLS, 401, DNS or connection
        refused before the host ever answered): callers stop the run with it."""

    async def __aenter__(self) -> OciClient:
        options = self.options
        # Without a CA bundle, aiohttp's own verifying context (built when it is imported)
        # serves; building another would load the system's certificates a second time.
        context: ssl.SSLContext | bool = True
        if options.ca_bundle:
            context = ssl.create_default_context(cafile=options.ca_bundle)
        connector = aiohttp.TCPConnector(limit=options.concurrency, ssl=context, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(
            total=options.request_timeout_s,
            connect=min(options.connect_timeout_s, options.request_timeout_s),
            sock_read=options.request_timeout_s,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={
                "user-agent": USER_AGENT,
                "accept": "application/json",
                "accept-encoding": "gzip, deflate",
            },
            # Bodies are decoded by ``limits.BodyReader``, which refuses one that inflates past
            # fetch.max_decompressed_bytes before inflating the rest.
            auto_decompress=False,
            read_bufsize=1 << 20,  # a page is about 1 MB
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: int = 1,
        validate: Callable[[bytes], object] | None = None,
        **context: Any,
    ) -> Response:
        """GET ``url`` with retries; raises ``OciApiError`` or ``TransportError`` when it gives up.

        ``priority`` 0 goes ahead of 1 when requests queue (see ``AdaptiveLimiter``).
        ``validate`` parses the body (and raises ``PageError`` if it cannot): a body cut short
        at a bracket, with a Content-Length to match, is then retried like any cut body. The
        worker processes do this for ListImages pages, where parsing twice would cost.
        ``context`` (region, compartment_id, page, ...) goes into every log line about the call.
        """
        full_url = _with_query(url, params or {})
        policy = self.options.retry
        request_id = uuid.uuid4().hex.upper()
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            async with self.limiter.slot(priority) as ticket:
                self.counters.sent += 1
                try:
                    response = await self._send(full_url, request_id, attempt, started)
                except TransportError as exc:
                    error: TransportError | OciApiError = exc
                else:
                    if isinstance(response, Response):
                        self.limiter.success(ticket)
                        problem = _invalid(response, validate)
                        if problem is None:
                            return response
                        error = problem
                    else:
                        error = response
                        retry_after = response.retry_after
                        if response.status == 429:
                            self.counters.throttled += 1
                            self.limiter.throttled(ticket)
            host = urlsplit(full_url).netloc
            abort = diagnose.whole_run(error, host, host in self._answered, self.options.profile)
            if abort is not None and self.aborted is None:
                # Not retried: it is the same for every request. The caller decides what it
                # means (the run stops; see ``aborted``).
                self.aborted = abort
                log.error("run.abort", reason=abort.reason, host=host, hint=abort.hint, **context)
            elapsed = time.monotonic() - started
            retry = error.retryable and abort is None
            delay = policy.delay(attempt, elapsed, retry_after) if retry else None
            if delay is None:
                self.counters.failed += 1
                log.warning(
                    "request.failed",
                    attempt=attempt,
                    elapsed_ms=round(elapsed * 1000, 1),
                    **_describe(error),
                    **context,
                )
                raise error
            self.counters.retried += 1
            log.info(
                "request.retry",
                attempt=attempt,
                delay_ms=round(delay * 1000, 1),
                **_describe(error),
                **context,
            )
            await anyio.sleep(delay)

    async def paginate(
        self,
        url: str,
        params: Mapping[str, Any],
        *,
        gate: PriorityGate | None = None,
        validate: Callable[[bytes], object] | None = None,
        **context: Any,
    ) -> AsyncGenerator[PageResponse, None]:
        """The pages of a list call, following ``opc-next-page``: the one pagination loop.

        A listing's next page (priority 0) goes ahead of a new listing's first (priority 1),
        here and in ``gate``, so that listings finish instead of all advancing a page at a
        time. With ``gate``, a unit is held from each request until the caller asks for the
        next page: it bounds the pages fetched but not yet handed on. A token the service gave
        before would make the loop endless: ``PaginationError``. Iterate inside
        ``contextlib.aclosing`` so that leaving early releases the gate at once.
        """
        seen: set[str] = set()
        token: str | None = None
        number = 0
        pages = PageCounter(self.options.limits)
        while True:
            pages.next_page()
            priority = 0 if token else 1
            query = {**params, "page": token} if token else params
            async with _held(gate, priority):
                response = await self.get(
                    url, query, priority=priority, validate=validate, page=number + 1, **context
                )
                number += 1
                yield PageResponse(number, response, token)
            token = response.next_page
            if token is None:
                return
            if token in seen:
                raise PaginationError(
                    f"the service repeated page token {token[:16]}… after page {number}"
                )
            seen.add(token)

    async def _send(
        self, url: str, request_id: str, attempt: int, started: float
    ) -> Response | OciApiError:
        assert self._session is not None, "use OciClient as an async context manager"
        headers = {"opc-request-id": request_id, "host": urlsplit(url).netloc}
        await self.signer.sign("GET", url, headers)
        sent = time.monotonic()
        server_id: str | None = None
        try:
            async with self._session.get(
                URL(url, encoded=True), headers=headers, allow_redirects=False
            ) as raw:
                server_id = raw.headers.get("opc-request-id")
                self._answered.add(urlsplit(url).netloc)
                reader = BodyReader(raw.headers.get("content-encoding"), self.options.limits)
                reader.check_declared(raw.content_length)
                async for chunk in raw.content.iter_chunked(1 << 16):
                    reader.feed(chunk)
                body = reader.finish()
                status = raw.status
                retry_after = _retry_after(raw.headers.get("retry-after"))
                next_page = raw.headers.get("opc-next-page") or None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise RequestTimeout(
                f"no complete response within {self.options.request_timeout_s:g} s",
                opc_request_id=server_id,
            ) from None
        except aiohttp.ClientPayloadError:
            raise TransportError(
                "the response body was cut short", opc_request_id=server_id
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(
                f"connection failed: {type(exc).__name__}: {exc}",
                opc_request_id=server_id,
                kind=diagnose.kind_of(exc),
            ) from None
        except TransportError as exc:
            exc.opc_request_id = exc.opc_request_id or server_id
            raise
        elapsed_ms = (time.monotonic() - sent) * 1000
        if status >= 400:
            return _api_error(status, body, server_id, retry_after)
        if status != 200 or not _looks_like_json(body):
            raise TransportError(
                f"unexpected response: HTTP {status} with a body that is not JSON",
                opc_request_id=server_id,
            )
        return Response(status, body, server_id, next_page, elapsed_ms, attempt)


def _invalid(
    response: Response, validate: Callable[[bytes], object] | None
) -> TransportError | None:
    """A retryable error for a body ``validate`` refuses (cut short), None if it is fine."""
    if validate is None:
        return None
    try:
        validate(response.body)
    except PageError as exc:
        return TransportError(
            f"the response body is not whole JSON ({exc})", opc_request_id=response.opc_request_id
        )
    return None


def _held(gate: PriorityGate | None, priority: int) -> AbstractAsyncContextManager[None]:
    return gate.hold(priority) if gate is not None else contextlib.nullcontext()


def _with_query(url: str, params: Mapping[str, Any]) -> str:
    """The URL with its query encoded once, so that what is signed is exactly what is sent."""
    pairs = [(k, _query_value(v)) for k, v in params.items() if v is not None]
    if not pairs:
        return url
    separator = "&" if urlsplit(url).query else "?"
    return url + separator + urlencode(pairs, quote_via=quote)


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _looks_like_json(body: bytes) -> bool:
    stripped = body.strip()
    return bool(stripped) and stripped[:1] in (b"[", b"{") and stripped[-1:] in (b"]", b"}")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _api_error(
    status: int, body: bytes, request_id: str | None, retry_after: float | None
) -> OciApiError:
    code, message = f"HTTP{status}", ""
    try:
        payload = orjson.loads(body)
        if isinstance(payload, dict):
            code = str(payload.get("code") or code)
            message = str(payload.get("message") or "")
    except orjson.JSONDecodeError:
        message = body[:200].decode("utf-8", "replace")
    return OciApiError(
        status,
        code,
        message,
        opc_request_id=request_id,
        retryable=is_retryable_status(status, code),
        retry_after=retry_after,
    )


def _describe(error: TransportError | OciApiError) -> dict[str, Any]:
    if isinstance(error, OciApiError):
        return {
            "status": error.status,
            "code": error.code,
            "opc_request_id": error.opc_request_id,
        }
    return {"status": None, "error": str(error), "opc_request_id": error.opc_request_id}
