"""The HTTP client: signed GETs with retries, adaptive throttling and one error hierarchy.

One ``OciClient`` (one aiohttp session, one connection pool) serves a whole run. Every
lower-level failure is translated here, at one boundary, into ``TransportError`` (``TlsError``,
``ProxyError``, ``RequestTimeout``) or ``OciApiError``; nothing from aiohttp leaks to callers.
Errors the client gives up on name the call, the host, the credentials and the next step
(``connector.oci.troubleshoot``).

Network set-up follows the official SDK (whose sessions are requests sessions):

- proxies from ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY``, resolved per host
  by ``connector.oci.proxy`` with requests' rules (aiohttp's own ``trust_env`` would also read
  ``~/.netrc`` and differs on ``NO_PROXY`` networks);
- certificates verified always: against ``oci.ca_bundle`` when set (that file only, as requests'
  ``verify=path``), else ``OCI_CLI_CERT_BUNDLE`` (the OCI CLI's), ``REQUESTS_CA_BUNDLE`` or
  ``CURL_CA_BUNDLE`` as requests reads them,
  else the system's store. No setting turns verification off. A certificate that does not
  verify fails at once, naming the host and the CA file: retrying cannot change it;
- a 401 with instance or resource principals refreshes the token and is tried once more.
"""

from __future__ import annotations

import hashlib
import os
import platform
import ssl
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import anyio
import orjson
from yarl import URL

if TYPE_CHECKING:
    from connector.config import Settings
    from connector.oci.auth import Credentials

from connector import logs
from connector._version import __version__
from connector.errors import (
    ConfigError,
    OciApiError,
    PaginationError,
    ProxyError,
    RequestTimeout,
    TlsError,
    TransportError,
)
from connector.limits import BodyReader, Lease, Limits, PageCounter, ResponseBudget
from connector.oci import (
    diagnose,
    signing,
    troubleshoot,
)
from connector.oci.auth import Refreshable, RequestSigner
from connector.oci.proxy import Proxy, proxy_for
from connector.oci.retry import (
    AdaptiveLimiter,
    Clock,
    RateState,
    RetryPolicy,
    Sleep,
    endpoint_key,
    is_retryable_status,
)
from connector.pages import PageError

USER_AGENT = (
    f"oci-images-connector/{__version__} (Python {platform.python_version()}; "
    f"aiohttp {aiohttp.__version__})"
)

log = logs.get_logger("connector.oci.client")


@dataclass(frozen=True, slots=True)
class Response:
    """A successful response, read in full."""

    status: int
    body: bytes
    opc_request_id: str | None
    next_page: str | None
    elapsed_ms: float
    attempts: int
    lease: Lease | None = field(default=None, compare=False, repr=False)
    """The body's part of the budget of responses in flight, when the caller keeps it
    (``get(hold=True)``): released by whoever hands the body on."""


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
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Requests by (region, status): the HTTP status code as text, or ``"none"`` where no
    response came (a connection error, a timeout, a body cut short). One counter update in
    the event loop per request, for the metrics (``connector.metrics``)."""


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
    # Who signs, for messages: 'profile "DEFAULT" of ~/.oci/config', "instance_principal".
    profile: str = ""
    auth: str = "api_key"
    # The environment proxies and CA bundles are read from (None: this process's).
    environ: Mapping[str, str] | None = None
    rate_share: float = 1.0
    """This process's part of the tenancy's request budget (1/N for one of N shards)."""
    rate_states: Callable[[str], RateState | None] | None = None
    """Each endpoint's pacing state, where the run's shards share it
    (``connector.oci.sharedrate``)."""


class OciClient:
    """Signed, retried, throttle-aware GETs against OCI endpoints; an async context manager.

    ``clock`` and ``sleep`` are injected in tests to run minutes of throttling in no time.
    """

    def __init__(
        self,
        signer: RequestSigner,
        options: ClientOptions | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.options = options or ClientOptions()
        self.signer = signer
        self._clock = clock
        self._sleep = sleep
        self.limiter = AdaptiveLimiter(
            self.options.concurrency,
            self.options.max_requests_per_second or None,
            clock,
            sleep,
            share=self.options.rate_share,
            states=self.options.rate_states,
        )
        self.counters = RequestCounters()
        limits = self.options.limits
        self.budget = ResponseBudget(limits.max_inflight_bytes, limits.max_decompressed_bytes)
        """Decoded bytes of every response held at once (``fetch.max_inflight_bytes``)."""
        self._session: aiohttp.ClientSession | None = None
        self._environ: Mapping[str, str] = {}
        self._ca_source = "the system's trusted CAs"
        self._proxies: dict[tuple[str, str], Proxy | None] = {}
        self._answered: set[str] = set()
        """Hosts that have answered a request of this run (``connector.oci.diagnose``)."""
        self.aborted: diagnose.RunAbort | None = None
        """The first error seen that concerns the whole run (TLS, 401, DNS or connection
        refused before the host ever answered): callers stop the run with it."""

    async def __aenter__(self) -> OciClient:
        options = self.options
        self._environ = dict(os.environ if options.environ is None else options.environ)
        context, self._ca_source = _ssl_context(options.ca_bundle, self._environ)
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
        hold: bool = False,
        **context: Any,
    ) -> Response:
        """GET ``url`` with retries; raises ``OciApiError`` or ``TransportError`` when it gives up.

        ``priority`` 0 goes ahead of 1 when requests queue (see ``AdaptiveLimiter``).
        ``validate`` parses the body (and raises ``PageError`` if it cannot): a body cut short
        at a bracket, with a Content-Length to match, is then retried like any cut body. The
        worker processes do this for ListImages pages, where parsing twice would cost.
        ``context`` (region, compartment_id, page, ...) goes into every log line about the call.
        ``hold``: the response keeps its part of the budget of responses in flight
        (``Response.lease``) until the caller releases it; otherwise it is released here.
        """
        return await self.request(
            "GET", url, params, priority=priority, validate=validate, hold=hold, **context
        )

    async def request(
        self,
        method: str,
        url: str,
        params: Mapping[str, Any] | None = None,
        *,
        body: bytes | None = None,
        priority: int = 1,
        validate: Callable[[bytes], object] | None = None,
        hold: bool = False,
        **context: Any,
    ) -> Response:
        """``get``, for any method; a ``body`` (JSON) is signed as the SDK signs one
        (``content-length``, ``content-type`` and ``x-content-sha256`` among the signed
        headers). Read-only queries such as Resource Search's POST are retried as GETs are."""
        full_url = _with_query(url, params or {})
        endpoint = endpoint_key(url)
        policy = self.options.retry
        request_id = uuid.uuid4().hex.upper()
        region = str(context.get("region") or "")
        started = self._clock()
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            retry_after: float | None = None
            async with self.limiter.slot(endpoint, priority) as ticket:
                self.counters.sent += 1
                lease = self.budget.lease()
                try:
                    response = await self._send(method, full_url, body, request_id, attempt, lease)
                except TransportError as exc:
                    error: TransportError | OciApiError = exc
                    self.counters.answers[region, "none"] += 1
                except BaseException:
                    lease.release()
                    raise
                else:
                    self.counters.answers[region, str(response.status)] += 1
                    if isinstance(response, Response):
                        self.limiter.success(ticket)
                        problem = _invalid(response, validate)
                        if problem is None:
                            if not hold:
                                lease.release()
                                return response
                            return replace(response, lease=lease)
                        error = problem
                    else:
                        error = response
                        retry_after = response.retry_after
                        if response.status == 429:
                            self.counters.throttled += 1
                            self.limiter.throttled(ticket)
                lease.release()
            elapsed = self._clock() - started
            if self._should_refresh(error, refreshed):
                # As the SDK: a principal's token may have been revoked or rotated early.
                refreshed = True
                self.counters.retried += 1
                log.info("request.refresh_token", attempt=attempt, **context)
                assert isinstance(self.signer, Refreshable)
                await self.signer.refresh()
                continue
            host = urlsplit(full_url).netloc
            # The call, the credentials and the next step, before ``whole_run`` reads the hint.
            self._explain(error, full_url, context.get("region"))
            abort = diagnose.whole_run(error, host, host in self._answered, self.options.profile)
            if abort is not None and self.aborted is None:
                # Not retried: it is the same for every request. The caller decides what it
                # means (the run stops; see ``aborted``).
                self.aborted = abort
                log.error("run.abort", reason=abort.reason, host=host, hint=abort.hint, **context)
            retry = error.retryable and abort is None
            delay = policy.delay(attempt, elapsed, retry_after) if retry else None
            if delay is None:
                self.counters.failed += 1
                # The listing's failure (summed up per region and cause) or the run's error
                # reports it; one line per failed request would repeat it for every listing.
                log.debug(
                    "request.failed",
                    attempt=attempt,
                    elapsed_ms=round(elapsed * 1000, 1),
                    **_describe(error),
                    **({"next": error.hint} if error.hint else {}),
                    **context,
                )
                raise error
            self.counters.retried += 1
            # Ordinary throttling: counted by the progress line and ``run.finished``.
            log.debug(
                "request.retry",
                attempt=attempt,
                delay_ms=round(delay * 1000, 1),
                **_describe(error),
                **context,
            )
            await self._sleep(delay)

    def _should_refresh(self, error: TransportError | OciApiError, refreshed: bool) -> bool:
        return (
            isinstance(error, OciApiError)
            and error.status == 401
            and not refreshed
            and isinstance(self.signer, Refreshable)
        )

    def _explain(self, error: TransportError | OciApiError, url: str, region: str | None) -> None:
        """Add the call, host, credentials and next step to an error about to be raised."""
        call = troubleshoot.call_name(url)
        hint = ""
        if isinstance(error, OciApiError):
            hint = troubleshoot.for_status(
                error.status,
                error.code,
                call=call,
                auth=self.options.auth,
                profile=self.options.profile or "these credentials",
                region=region,
                clock_skew_s=error.clock_skew_s,
            )
        error.add_context(
            call=call, host=troubleshoot.host_of(url), profile=self.options.profile, hint=hint
        )

    def _proxy(self, url: str) -> Proxy | None:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._proxies:
            self._proxies[key] = proxy_for(url, self._environ)
        return self._proxies[key]

    async def paginate(
        self,
        url: str,
        params: Mapping[str, Any],
        *,
        validate: Callable[[bytes], object] | None = None,
        body: bytes | None = None,
        hold: bool = False,
        **context: Any,
    ) -> AsyncGenerator[PageResponse, None]:
        """The pages of a list call, following ``opc-next-page``: the one pagination loop.

        A listing's next page (priority 0) goes ahead of a new listing's first (priority 1) in
        the limiter, so that listings finish instead of all advancing a page at a time. With a
        ``body``, each page is a POST of it (Resource Search's paged query). A token
        the service gave before would make the loop endless: ``PaginationError``. Iterate
        inside ``contextlib.aclosing``, so that leaving early closes the loop at once.
        ``hold`` as for ``get``: each page keeps its part of the budget until released.

        The tokens seen are kept as 16-byte digests: a token can be 7 KB, and a listing of
        10,000 pages would otherwise hold 70 MB of them.
        """
        seen: set[bytes] = set()
        token: str | None = None
        number = 0
        pages = PageCounter(self.options.limits)
        while True:
            pages.next_page()
            priority = 0 if token else 1
            query = {**params, "page": token} if token else params
            response = await self.request(
                "POST" if body is not None else "GET",
                url,
                query,
                body=body,
                priority=priority,
                validate=validate,
                hold=hold,
                page=number + 1,
                **context,
            )
            number += 1
            yield PageResponse(number, response, token)
            token = response.next_page
            if token is None:
                return
            digest = hashlib.blake2b(
                token.encode("utf-8", "surrogatepass"), digest_size=16
            ).digest()
            if digest in seen:
                raise PaginationError(
                    f"the service repeated page token {token[:16]}… after page {number}"
                )
            seen.add(digest)

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        request_id: str,
        attempt: int,
        lease: Lease,
    ) -> Response | OciApiError:
        assert self._session is not None, "use OciClient as an async context manager"
        host = urlsplit(url).netloc
        headers = {"opc-request-id": request_id, "host": host}
        if body is not None:
            headers.update(signing.body_headers(body))
        await self.signer.sign(method, url, headers)
        proxy = self._proxy(url)
        sent = time.monotonic()
        server_id: str | None = None
        try:
            async with self._session.request(
                method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                proxy=proxy.url if proxy else None,
                proxy_headers=proxy.headers if proxy and proxy.headers else None,
            ) as raw:
                server_id = raw.headers.get("opc-request-id")
                self._answered.add(urlsplit(url).netloc)
                reader = BodyReader(raw.headers.get("content-encoding"), self.options.limits, lease)
                reader.check_declared(raw.content_length)
                try:
                    async for chunk in raw.content.iter_chunked(1 << 16):
                        await reader.receive(chunk)
                    body = await reader.complete()
                except BaseException:
                    reader.drop()  # the traceback keeps the reader: not its bytes
                    raise
                lease.done()
                status = raw.status
                retry_after = _retry_after(raw.headers.get("retry-after"))
                next_page = raw.headers.get("opc-next-page") or None
                server_date = raw.headers.get("date")
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise RequestTimeout(
                f"no complete response within {self.options.request_timeout_s:g} s",
                opc_request_id=server_id,
                host=host,
            ) from None
        except aiohttp.ClientPayloadError:
            raise TransportError(
                "the response body was cut short", opc_request_id=server_id, host=host
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            failure = self._connection_error(exc, host, proxy)
            failure.opc_request_id = server_id
            failure.kind = diagnose.kind_of(exc)
            raise failure from None
        except TransportError as exc:
            exc.opc_request_id = exc.opc_request_id or server_id
            raise
        elapsed_ms = (time.monotonic() - sent) * 1000
        if status >= 400:
            error = _api_error(status, body, server_id, retry_after)
            if status == 401:
                error.clock_skew_s = _clock_skew(server_date)
            return error
        if status != 200 or not _looks_like_json(body):
            raise TransportError(
                f"unexpected response: HTTP {status} with a body that is not JSON",
                opc_request_id=server_id,
            )
        return Response(status, body, server_id, next_page, elapsed_ms, attempt)

    def _connection_error(
        self, exc: BaseException, host: str, proxy: Proxy | None
    ) -> TransportError:
        """An aiohttp or OS failure as the connector's error, with what to do about it."""
        via = proxy.display if proxy else None
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            reason = _certificate_reason(exc.certificate_error)
            return TlsError(
                f"TLS certificate of {host} not accepted ({reason}), verified against "
                f"{self._ca_source}",
                host=host,
                hint=troubleshoot.for_tls(host, self._ca_source, reason, via),
            )
        if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
            reason = _certificate_reason(exc)
            return TlsError(
                f"TLS handshake with {host} failed ({reason}); CA: {self._ca_source}",
                host=host,
                hint=troubleshoot.for_tls(host, self._ca_source, reason, via),
            )
        if isinstance(exc, aiohttp.ClientHttpProxyError) and proxy is not None:
            refused = ProxyError(
                f"the proxy {proxy.display} answered HTTP {exc.status} to CONNECT {host}",
                host=host,
                hint=troubleshoot.for_proxy(proxy.display, proxy.variable, exc.status),
                retryable=exc.status >= 500,
            )
            refused.concerns_run = exc.status in (403, 407)
            return refused
        if isinstance(exc, aiohttp.ClientProxyConnectionError) and proxy is not None:
            return ProxyError(
                f"cannot connect to the proxy {proxy.display} ({_os_reason(exc)})",
                host=host,
                hint=troubleshoot.for_proxy(proxy.display, proxy.variable, None),
            )
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return TransportError(
                f"cannot resolve {host.rsplit(':', 1)[0]}",
                host=host,
                hint=troubleshoot.for_connection(host, "", proxy is None),
            )
        return TransportError(
            f"connection failed ({_os_reason(exc)})",
            host=host,
            hint=troubleshoot.for_connection(host, "", proxy is None),
        )


def _ssl_context(ca_bundle: str, environ: Mapping[str, str]) -> tuple[ssl.SSLContext | bool, str]:
    """The verifying TLS context and, for messages, where its CAs come from.

    Without any bundle, aiohttp's own verifying context (built when it is imported) serves;
    building another would load the system's certificates a second time (about 20 ms). So it
    does for a bundle that is the very file OpenSSL loads by default, as ``REQUESTS_CA_BUNDLE``
    often names it (``/etc/ssl/certs/ca-certificates.crt`` on Debian and Ubuntu).
    """
    key, path = "oci.ca_bundle", ca_bundle
    if not path:
        for variable in ("OCI_CLI_CERT_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            if environ.get(variable):
                key, path = variable, environ[variable]
                break
    if not path:
        return True, "the system's trusted CAs"
    location = os.path.expanduser(path)
    if _is_default_bundle(location):
        return True, f"the CA file {path} ({key})"
    try:
        if os.path.isdir(location):
            context = ssl.create_default_context(capath=location)
        else:
            context = ssl.create_default_context(cafile=location)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            key, f"{path} is not a readable PEM bundle of CA certificates ({reason})"
        ) from None
    return context, f"the CA file {path} ({key})"


def _is_default_bundle(location: str) -> bool:
    """Whether ``location`` is the CA file a default verifying context loads."""
    default = ssl.get_default_verify_paths().cafile
    return (
        default is not None
        and os.path.isfile(location)
        and os.path.realpath(location) == os.path.realpath(default)
    )


def _certificate_reason(exc: BaseException) -> str:
    message = getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
    if isinstance(exc, aiohttp.ClientSSLError) and exc.__cause__ is not None:
        return _certificate_reason(exc.__cause__)
    return str(message or exc).strip() or type(exc).__name__


def _os_reason(exc: BaseException) -> str:
    cause = getattr(exc, "os_error", None) or exc
    return getattr(cause, "strerror", None) or type(cause).__name__


def _clock_skew(date_header: str | None) -> float | None:
    """Server time minus local time, from a response's Date header (whole seconds)."""
    if not date_header:
        return None
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(date_header).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def _invalid(
    response: Response, validate: Callable[[bytes], object] | None
) -> TransportError | None:
    """A retryable error for a body ``validate`` refuses (cut short), None if it is fine."""
    if validate is None:
        return None
    try:
        validate(response.body)
    except PageError as exc:
        if exc.whole:
            # Whole JSON, of the wrong kind: the same answer would come again.
            return TransportError(
                f"unexpected response: {exc}",
                opc_request_id=response.opc_request_id,
                retryable=False,
            )
        return TransportError(
            f"the response body is not whole JSON ({exc})", opc_request_id=response.opc_request_id
        )
    return None


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
    return {
        "status": None,
        "error": error.reason,
        "host": error.host or None,
        "opc_request_id": error.opc_request_id,
    }


def for_settings(
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
            limits=Limits(
                max_pages_per_listing=fetch.max_pages_per_listing,
                max_response_bytes=fetch.max_response_bytes,
                max_decompressed_bytes=fetch.max_decompressed_bytes,
                max_inflight_bytes=fetch.max_inflight_bytes,
                run_deadline_s=fetch.run_deadline_s,
                worker_heartbeat_s=fetch.worker_heartbeat_s,
            ),
            profile=credentials.label,
            auth=credentials.auth,
            rate_share=rate_share,
            rate_states=rate_states,
        ),
    )
