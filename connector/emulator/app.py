"""The emulator's HTTP application: OCI's ListImages, Identity and Resource Search endpoints
on aiohttp.web.

Requests pass through one middleware that does what the real service does around every call,
in this order: assign an ``opc-request-id``, wait the configured latency, verify the request
signature, apply the rate limit of the tenancy in that region, inject faults. The handlers then
validate parameters as the world's flavor does (commercial OCI and PCA spell sortBy differently)
and serve encoded records. Hostile behaviours (endless pages, gzip bombs, huge pages, poisoned
records, cut bodies, 401 for all, hostile region names) are Behaviour knobs, off by default.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import itertools
import random
import secrets
import struct
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from connector.emulator import search
from connector.emulator.data import Compartment, Image, World, region_code
from connector.oci import signing

API = "/20160918"
SEARCH_API = "/20180409"
INDEXED_BYTES = 128 * 2**20
"""Memory for listings as Search's index holds them (``Emulator._indexed``): a search's pages
walk a region's listings in order, so what it must hold is the few listings each search in
flight is in."""
_INDEXED_OVERHEAD = 600
"""Bytes an indexed image takes beside its encoded summary: the compared attributes' dict."""
STATS_PATH = "/_emulator/stats"
RESET_PATH = "/_emulator/reset"

IMAGE_LIFECYCLE_STATES = (
    "PROVISIONING",
    "IMPORTING",
    "AVAILABLE",
    "EXPORTING",
    "DISABLED",
    "DELETED",
)
COMPARTMENT_LIFECYCLE_STATES = ("CREATING", "ACTIVE", "INACTIVE", "DELETING", "DELETED")

# Records that cannot be parsed on their own, added to the first page of every listing when
# Behaviour.poison names them: raw bytes that are not UTF-8, a JSON escape of a lone UTF-16
# surrogate, and nesting deeper than any sane parser's recursion limit.
POISON_KINDS = ("invalid_utf8", "lone_surrogate", "deep_nesting")
# Region names a hostile or broken Identity service might return (Behaviour.hostile_regions).
HOSTILE_REGION_NAMES = ("../x", "us-ashburn-1/../../etc", "..", "eu-frankfurt-1%2F..", "")

# The request id the middleware assigned, for handlers that stream their own response.
REQUEST_ID = web.RequestKey("opc-request-id", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class Behaviour:
    """The realism knobs: latency, throttling and faults. Mutable while the emulator runs."""

    latency_ms: float = 0.0
    jitter: float = 0.5
    rate: float = 0.0  # requests/s per tenancy, region (path prefix) and service; 0 = unlimited
    burst: float = 10.0
    retry_after: float | None = None
    fault_rate: float = 0.0
    truncate_rate: float = 0.0
    reset_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 30.0
    trailing_empty_page: bool = False
    shift_rate: float = 0.0
    max_clock_skew_s: float = 300.0
    default_limit: int = 100
    # Hostile behaviours, for reliability tests; each off by default.
    endless_pages: bool = False  # ListImages: past the end, empty pages with ever-new tokens
    gzip_bomb_mib: int = 0  # ListImages pages gzip-encoded behind this many MiB of whitespace
    huge_page_mb: float = 0.0  # ListImages pages padded to this size with one extra record
    poison: tuple[str, ...] = ()  # POISON_KINDS records added to each listing's first page
    cut_json_rate: float = 0.0  # bodies cut after a } or ], Content-Length matching the cut
    reject_auth: bool = False  # every API call 401 NotAuthenticated, as with a revoked key
    hostile_regions: tuple[str, ...] = ()  # extra READY region subscriptions, e.g. "../x"
    # ListImages answers 400 quoting the request's Authorization header, as some proxies' and
    # gateways' error pages do: "json" in the service's error body, "html" in a proxy's page.
    echo_authorization: str = ""
    # ListCompartments' first page: real records with fields of the wrong types, and extra
    # records without a usable id or with a lone surrogate (_hostile_compartments).
    hostile_compartments: bool = False
    # ListRegionSubscriptions answers a JSON object (whole, deterministic) instead of an array.
    subscriptions_object: bool = False
    # Resource Search's index lag: the share of custom images (chosen by their ids) it does not
    # know yet, as if just created, and how many deleted images per region it still lists.
    search_lag: float = 0.0
    search_ghosts: int = 0

    def __post_init__(self) -> None:
        if self.echo_authorization not in ("", "json", "html"):
            raise ValueError("echo_authorization must be '', 'json' or 'html'")
        unknown = set(self.poison) - set(POISON_KINDS)
        if unknown:
            raise ValueError(
                f"poison kinds must be among {', '.join(POISON_KINDS)}; got {sorted(unknown)}"
            )


@dataclass(slots=True)
class Stats:
    """Counters that tests and benchmarks read: what the service saw and did."""

    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    throttled: int = 0
    status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    listed: Counter[str] = field(default_factory=Counter)
    user_agents: Counter[str] = field(default_factory=Counter)
    regions: Counter[str] = field(default_factory=Counter)
    throttled_regions: Counter[str] = field(default_factory=Counter)
    searches: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot."""
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "throttled": self.throttled,
            "status": {str(k): v for k, v in sorted(self.status.items())},
            "faults": dict(self.faults),
            "listed_compartments": dict(self.listed),
            "user_agents": dict(self.user_agents),
            "requests_by_region": dict(self.regions),
            "throttled_by_region": dict(self.throttled_regions),
            "searches_by_region": dict(self.searches),
        }


class TokenBucket:
    """A request budget: ``rate`` tokens a second, at most ``burst`` saved up.

    The emulator keeps one per tenancy and region, as OCI limits each region's API on its own:
    a tenancy listing four regions may send four times the requests of one.
    """

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._stamp = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class ApiError(Exception):
    """An error response in OCI's shape; raised by handlers, rendered by the middleware."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Indexed:
    """A listing as Search's index holds it (``Emulator._indexed``)."""

    encoded: list[bytes | None]
    """Each custom image's summary, encoded (None: an image the index does not hold)."""
    facts: list[dict[str, Any] | None]
    """The attributes a query's conditions compare, by image (``search.FIELDS``)."""
    size: int


class Emulator:
    """The service state: the world, the registered API keys, behaviour knobs and counters."""

    def __init__(self, world: World, behaviour: Behaviour | None = None, *, seed: int = 0) -> None:
        self.world = world
        self.behaviour = behaviour or Behaviour()
        self.stats = Stats()
        self.keys: dict[str, rsa.RSAPublicKey] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._rng = random.Random(seed)
        self._token_secret = secrets.token_bytes(32)
        self._request_ids = itertools.count(1)
        # Filtered or sorted selections, least recently used first out (unfiltered listings
        # come straight from the world's own bounded cache).
        self._selections: OrderedDict[tuple[object, ...], list[Image]] = OrderedDict()
        self._children: dict[str, list[Compartment]] = {}
        # Resource Search: each region's custom-image count per compartment (in the order
        # results come), and whole results of queries that filter, sort or lag, LRU.
        self._search_counts: dict[str, list[tuple[str, int]]] = {}
        self._searches: OrderedDict[tuple[object, ...], list[dict[str, Any]]] = OrderedDict()
        # Each listing as Search's index holds it, LRU by size; where each filtered search's
        # page ended (by query and offset), for the page after it.
        self._indexes: OrderedDict[tuple[str, str, bool], _Indexed] = OrderedDict()
        self._indexed_bytes = 0
        self._cursors: OrderedDict[tuple[object, ...], tuple[int, int]] = OrderedDict()
        self._listing_times: dict[tuple[str, str], list[int | None]] = {}
        # Searches sorted by time: each one's images in order, packed (listing << 24 | image).
        self._by_time: OrderedDict[tuple[object, ...], list[int]] = OrderedDict()
        for comp in world.compartments[1:]:
            self._children.setdefault(comp.parent_id, []).append(comp)

    # -- keys -------------------------------------------------------------------------------

    def register_key(self, key_id: str, public_key: rsa.RSAPublicKey) -> None:
        """Accept signatures made with the private half of ``public_key`` under ``key_id``."""
        self.keys[key_id] = public_key

    def reset_stats(self) -> None:
        """Zero the counters and refill every rate-limit bucket."""
        self.stats = Stats()
        self._buckets.clear()

    # -- the aiohttp application ------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving this emulator."""
        app = web.Application(middlewares=[self._middleware])
        routes = [
            ("/images", self._list_images),
            ("/compartments", self._list_compartments),
            ("/compartments/{compartment_id}", self._get_compartment),
            ("/tenancies/{tenancy_id}/regionSubscriptions", self._list_region_subscriptions),
        ]
        for suffix, handler in routes:
            app.router.add_get(API + suffix, handler)
            app.router.add_get("/{region}" + API + suffix, handler)
        # Search is its own service (query.<region>...): also under /{region}/query, so that a
        # client can address it as a host of its own, with a rate limit of its own.
        for prefix in ("", "/{region}", "/{region}/query"):
            app.router.add_post(prefix + SEARCH_API + "/resources", self._search_resources)
        app.router.add_get(STATS_PATH, self._stats)
        app.router.add_post(RESET_PATH, self._reset)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            return await handler(request)
        stats = self.stats
        stats.requests += 1
        stats.user_agents[request.headers.get("user-agent", "")] += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        server_id = f"{next(self._request_ids):08X}{secrets.token_hex(12).upper()}"
        client_id = request.headers.get("opc-request-id")
        request_id = f"{client_id}/{server_id}" if client_id else server_id
        request[REQUEST_ID] = request_id
        stats.regions[self._limit_region(request)] += 1
        try:
            response = await self._serve(request, handler, request_id)
        except ApiError as exc:
            response = _error(exc.status, exc.code, exc.message)
        finally:
            stats.in_flight -= 1
        if not response.prepared:
            response.headers["opc-request-id"] = request_id
        stats.status[response.status] += 1
        return response

    async def _serve(
        self, request: web.Request, handler: Handler, request_id: str
    ) -> web.StreamResponse:
        knobs = self.behaviour
        if knobs.latency_ms > 0:
            spread = knobs.latency_ms * knobs.jitter
            await asyncio.sleep(
                max(0.0, self._rng.uniform(knobs.latency_ms - spread, knobs.latency_ms + spread))
                / 1000
            )
        if knobs.reject_auth:
            raise _not_authenticated(
                "The required information to complete authentication was not provided "
                "or was incorrect."
            )
        tenancy = self._authenticate(request)
        if knobs.echo_authorization and request.path.endswith(API + "/images"):
            return _echoed(knobs.echo_authorization, request.headers.get("authorization", ""))
        if knobs.rate > 0:
            region = self._limit_region(request)
            # OCI limits each service of a region on its own: Search apart from the others.
            service = "search" if SEARCH_API in request.path else "core"
            budget = f"{tenancy}/{region}/{service}"
            bucket = self._buckets.get(budget)
            if bucket is None:
                bucket = self._buckets[budget] = TokenBucket(knobs.rate, knobs.burst)
            if not bucket.take():
                self.stats.throttled += 1
                self.stats.throttled_regions[region] += 1
                throttled = _error(429, "TooManyRequests", "Too many requests for the tenant.")
                if knobs.retry_after is not None:
                    throttled.headers["Retry-After"] = f"{knobs.retry_after:g}"
                return throttled
        fault = self._pick_fault()
        if fault in ("500", "503"):
            self.stats.faults[fault] += 1
            if fault == "500":
                return _error(500, "InternalServerError", "The service encountered an error.")
            return _error(503, "ServiceUnavailable", "The service is unavailable; retry.")
        if fault == "reset":
            self.stats.faults["reset"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if fault == "stall":
            self.stats.faults["stall"] += 1
            await asyncio.sleep(knobs.stall_s)
        response = await handler(request)
        if fault == "truncate" and isinstance(response, web.Response) and response.body:
            self.stats.faults["truncate"] += 1
            return await _truncated(request, response, request_id)
        if fault == "cut" and isinstance(response, web.Response):
            cut = _cut_after_bracket(response.body)
            if cut is not None:
                self.stats.faults["cut"] += 1
                response.body = cut
        return response

    def _limit_region(self, request: web.Request) -> str:
        """The region whose budget a request spends: its path prefix, else the home region."""
        region = request.match_info.get("region")
        return region if region in self.world.regions else self.world.home_region

    def _pick_fault(self) -> str | None:
        """At most one fault per request, each with its configured probability."""
        knobs = self.behaviour
        roll = self._rng.random()
        for name, rate in (
            ("500", knobs.fault_rate / 2),
            ("503", knobs.fault_rate / 2),
            ("reset", knobs.reset_rate),
            ("stall", knobs.stall_rate),
            ("truncate", knobs.truncate_rate),
            ("cut", knobs.cut_json_rate),
        ):
            if roll < rate:
                return name
            roll -= rate
        return None

    def _authenticate(self, request: web.Request) -> str:
        """Verify the OCI signature; return the tenancy that signed. Raises 401 otherwise."""
        params = signing.parse_authorization(request.headers.get("authorization", ""))
        key_id = params.get("keyId", "")
        if (
            not params
            or params.get("algorithm") != signing.ALGORITHM
            or params.get("version") != "1"
        ):
            raise _not_authenticated("The request is not signed with an OCI signature, version 1.")
        signed = params.get("headers", "").split()
        if not set(signing.signed_headers_for(request.method)) <= set(signed):
            raise _not_authenticated(
                "The signature does not cover date, (request-target) and host."
            )
        public_key = self.keys.get(key_id)
        if public_key is None:
            raise _not_authenticated(
                "The required information to complete authentication was not provided "
                "or was incorrect."
            )
        headers = {k.lower(): v for k, v in request.headers.items()}
        if any(name != "(request-target)" and name not in headers for name in signed):
            raise _not_authenticated("A signed header is missing from the request.")
        try:
            signature = base64.b64decode(params.get("signature", ""), validate=True)
            message = signing.signing_string(request.method, request.raw_path, headers, signed)
        except (binascii.Error, UnicodeEncodeError):
            raise _not_authenticated("The signature is malformed.") from None
        if not signing.rsa_verify(public_key, signature, message):
            raise _not_authenticated("The signature does not match the request.")
        try:
            sent = parsedate_to_datetime(headers["date"]).timestamp()
        except (TypeError, ValueError):
            raise _not_authenticated("The date header is not an RFC 7231 date.") from None
        if abs(time.time() - sent) > self.behaviour.max_clock_skew_s:
            raise _not_authenticated(
                "The date header is more than 5 minutes from the service's clock."
            )
        return key_id.split("/", 1)[0]

    # -- handlers ---------------------------------------------------------------------------

    def _region(self, request: web.Request) -> str:
        region = request.match_info.get("region", self.world.home_region)
        if region not in self.world.regions:
            raise ApiError(
                404, "NotAuthorizedOrNotFound", f"The region {region!r} is not served here."
            )
        return region

    async def _list_images(self, request: web.Request) -> web.StreamResponse:
        region = self._region(request)
        query = request.query
        compartment_id = _string(query, "compartmentId", required=True)
        display_name = _string(query, "displayName")
        operating_system = _string(query, "operatingSystem")
        os_version = _string(query, "operatingSystemVersion")
        shape = _string(query, "shape")
        lifecycle = _string(query, "lifecycleState")
        if lifecycle is not None:
            lifecycle = lifecycle.upper()
            _enum("lifecycleState", lifecycle, IMAGE_LIFECYCLE_STATES)
        sort_by = _string(query, "sortBy")
        if sort_by is not None:
            # PCA documents NAME; commercial OCI (and its SDK) DISPLAYNAME. Each refuses the other.
            _enum("sortBy", sort_by, self.world.sort_by)
        sort_order = _string(query, "sortOrder") or "ASC"
        _enum("sortOrder", sort_order, ("ASC", "DESC"))
        limit = self._limit(query)
        assert compartment_id is not None
        comp = self.world.compartment(compartment_id)
        if comp is None or comp.lifecycle_state != "ACTIVE" or not comp.accessible:
            raise ApiError(
                404,
                "NotAuthorizedOrNotFound",
                "Authorization failed or requested resource not found.",
            )
        self.stats.listed[f"{region}/{compartment_id}"] += 1
        key = (
            "images",
            region,
            compartment_id,
            display_name,
            operating_system,
            os_version,
            shape,
            lifecycle,
            sort_by,
            sort_order,
        )
        default = all(value is None for value in key[3:9])
        selection = None if default else self._selected(key)
        if selection is None:
            custom = await self._custom(region, compartment_id)
            if default:
                selection = self.world.platform[region] + custom
            else:
                selection = self._select_images(region, custom, key[3:])
                self._remember(key, selection)
        offset = self._offset(query, key)
        if offset and self._rng.random() < self.behaviour.shift_rate:
            # Items shifted while the client paged: this page repeats the previous page's last.
            self.stats.faults["shift"] += 1
            offset -= 1
        page = selection[offset : offset + limit]
        if default and offset + limit >= len(selection):
            self.world.custom.served((region, compartment_id))
        records = [img.json for img in page]
        knobs = self.behaviour
        if knobs.poison and offset == 0:
            self.stats.faults["poison"] += len(knobs.poison)
            records += [_poison(kind, region, compartment_id) for kind in knobs.poison]
        body = b"[" + b",".join(records) + b"]"
        response = self._page(
            body, key, offset, len(page), limit, len(selection), endless=knobs.endless_pages
        )
        if knobs.gzip_bomb_mib > 0:
            self.stats.faults["gzip_bomb"] += 1
            return await _gzip_bomb(request, response, body, knobs.gzip_bomb_mib)
        if knobs.huge_page_mb > 0:
            self.stats.faults["huge_page"] += 1
            return await _huge_page(request, response, body, knobs.huge_page_mb)
        return response

    async def _custom(self, region: str, compartment_id: str) -> list[Image]:
        """A listing's custom images. One not cached takes tens of milliseconds to generate when
        it is large: in a thread, so that the event loop goes on answering the other requests
        meanwhile, as a service would."""
        key = (region, compartment_id)
        if self.world.custom.ready(key):
            return self.world.custom.get(key, [])
        return await asyncio.to_thread(self.world.custom.get, key, [])

    def _selected(self, key: tuple[object, ...]) -> list[Image] | None:
        selection = self._selections.get(key)
        if selection is not None:
            self._selections.move_to_end(key)
        return selection

    def _remember(self, key: tuple[object, ...], selection: list[Image]) -> None:
        self._selections[key] = selection
        while len(self._selections) > 64:
            self._selections.popitem(last=False)

    def _select_images(
        self, region: str, custom: list[Image], filters: Sequence[Any]
    ) -> list[Image]:
        display_name, operating_system, os_version, shape, lifecycle, sort_by, sort_order = filters
        groups = [self.world.platform[region], custom]
        result: list[Image] = []
        for group in groups:
            chosen = [
                img
                for img in group
                if (display_name is None or img.display_name == display_name)
                and (operating_system is None or img.operating_system == operating_system)
                and (os_version is None or img.operating_system_version == os_version)
                and (shape is None or shape in img.shapes)
                and (lifecycle is None or img.lifecycle_state == lifecycle)
            ]
            if sort_by in ("NAME", "DISPLAYNAME"):
                chosen.sort(
                    key=lambda i: (i.display_name is None, i.display_name or ""),
                    reverse=sort_order == "DESC",
                )
            elif sort_by == "TIMECREATED":
                chosen.sort(key=lambda i: i.created_us, reverse=sort_order == "DESC")

            result.extend(chosen)
        return result

    async def _list_compartments(self, request: web.Request) -> web.StreamResponse:
        self._region(request)
        query = request.query
        compartment_id = _string(query, "compartmentId", required=True)
        assert compartment_id is not None
        subtree = _boolean(query, "compartmentIdInSubtree")
        access = _string(query, "accessLevel")
        if access is not None:
            _enum("accessLevel", access, ("ANY", "ACCESSIBLE"))
        lifecycle = _string(query, "lifecycleState")
        if lifecycle is not None:
            _enum("lifecycleState", lifecycle, COMPARTMENT_LIFECYCLE_STATES)
        limit = self._limit(query)
        parent = self.world.compartment(compartment_id)
        if parent is None or not parent.accessible or parent.lifecycle_state == "DELETED":
            raise ApiError(
                404,
                "NotAuthorizedOrNotFound",
                "Authorization failed or requested resource not found.",
            )
        if subtree and compartment_id != self.world.tenancy_id:
            raise ApiError(
                400,
                "InvalidParameter",
                "compartmentIdInSubtree can only be true when compartmentId is the tenancy.",
            )
        candidates = (
            self.world.compartments[1:] if subtree else self._children.get(compartment_id, [])
        )
        selection = [
            c
            for c in candidates
            if (access != "ACCESSIBLE" or c.accessible)
            and (lifecycle is None or c.lifecycle_state == lifecycle)
        ]
        key = ("compartments", compartment_id, subtree, access, lifecycle)
        offset = self._offset(query, key)
        page = selection[offset : offset + limit]
        records = [c.to_api() for c in page]
        if self.behaviour.hostile_compartments and offset == 0:
            body = _hostile_compartments(records, self.world.tenancy_id)
        else:
            body = orjson.dumps(records)
        return self._page(body, key, offset, len(page), limit, len(selection))

    async def _get_compartment(self, request: web.Request) -> web.StreamResponse:
        self._region(request)
        comp = self.world.compartment(request.match_info["compartment_id"])
        if comp is None or not comp.accessible:
            raise ApiError(
                404,
                "NotAuthorizedOrNotFound",
                "Authorization failed or requested resource not found.",
            )
        body = orjson.dumps(comp.to_api())
        response = web.Response(body=body, content_type="application/json")
        response.headers["etag"] = hashlib.sha256(body).hexdigest()[:32]
        return response

    async def _list_region_subscriptions(self, request: web.Request) -> web.StreamResponse:
        self._region(request)
        if request.match_info["tenancy_id"] != self.world.tenancy_id:
            raise ApiError(
                404,
                "NotAuthorizedOrNotFound",
                "Authorization failed or requested resource not found.",
            )
        records = [s.to_api() for s in self.world.subscriptions]
        records += [
            {"isHomeRegion": False, "regionKey": "XXX", "regionName": name, "status": "READY"}
            for name in self.behaviour.hostile_regions
        ]
        answer: Any = {"items": records} if self.behaviour.subscriptions_object else records
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    async def _search_resources(self, request: web.Request) -> web.StreamResponse:
        """SearchResources: a structured query over the region's custom images, paged.

        The index covers the tenancy's own resources only, so never platform images; the
        compartments it covers are those a caller can list images in (ACTIVE, accessible).
        """
        region = self._region(request)
        if self.world.flavor == "pca":
            raise ApiError(
                404,
                "NotAuthorizedOrNotFound",
                "Resource Search is not a service of this appliance.",
            )
        body = await request.read()
        _check_body_hash(request, body)
        text = _structured_query(body)
        tenant = _string(request.query, "tenantId")
        if tenant is not None and tenant != self.world.tenancy_id:
            raise ApiError(
                404,
                "NotAuthorizedOrNotFound",
                "Authorization failed or requested resource not found.",
            )
        limit = self._limit(request.query)
        try:
            query = search.parse(text)
        except search.QueryError as exc:
            raise ApiError(400, "InvalidParameter", f"Invalid search query: {exc}.") from None
        self.stats.searches[region] += 1
        knobs = self.behaviour
        key = ("search", region, text, knobs.search_lag, knobs.search_ghosts)
        offset = self._offset(request.query, key)
        if not query.images:
            return self._page(search.encode([]), key, 0, 0, limit, 0)
        indexed = not knobs.search_lag and not knobs.search_ghosts
        by_time = query.sort is not None and query.sort[0] == "timeCreated"
        timed = query.where is None or (query.window is not None and query.rest is None)
        if by_time and indexed and timed:
            encoded, total = await self._search_by_time(region, key, query, offset, limit)
            body = search.encode_parts(encoded)
            return self._page(body, key, offset, len(encoded), limit, total)
        if indexed and query.sort is None:
            if query.where is None:
                encoded, total = await self._search_window(region, offset, limit, query.all_fields)
            else:
                encoded, more = await self._search_scan(region, key, query, offset, limit)
                total = offset + len(encoded) + (1 if more else 0)
            body = search.encode_parts(encoded)
            return self._page(body, key, offset, len(encoded), limit, total)
        found = self._searches.get(key)
        if found is None:
            found = await self._search_all(region, query)
            self._searches[key] = found
            while len(self._searches) > 8:
                self._searches.popitem(last=False)
        self._searches.move_to_end(key)
        page, total = found[offset : offset + limit], len(found)
        return self._page(search.encode(page), key, offset, len(page), limit, total)

    def _region_counts(self, region: str) -> list[tuple[str, int]]:
        counts = self._search_counts.get(region)
        if counts is None:
            custom = self.world.custom
            counts = [
                (c.id, n)
                for c in self.world.listable_compartments()
                if (n := custom.count(region, c.id))
            ]
            self._search_counts[region] = counts
        return counts

    async def _search_window(
        self, region: str, offset: int, limit: int, all_fields: bool
    ) -> tuple[list[bytes], int]:
        """One page of an unfiltered search (its summaries, encoded), generating only the
        listings the page spans."""
        counts = self._region_counts(region)
        page: list[bytes] = []
        start = 0
        for compartment_id, count in counts:
            end = start + count
            if end > offset and start < offset + limit:
                indexed = await self._indexed(region, compartment_id, all_fields)
                window = indexed.encoded[max(0, offset - start) : offset + limit - start]
                page += [summary for summary in window if summary is not None]
            start = end
        return page, start

    async def _search_scan(
        self, region: str, key: tuple[object, ...], query: search.Query, offset: int, limit: int
    ) -> tuple[list[bytes], bool]:
        """One page of a filtered search, and whether more follow: the region's listings in
        order, from where the page before ended (``_cursors``), until one summary past the
        page matches. The answer is the filtered whole's ``[offset : offset + limit]``, as
        ``_search_all`` would cut it, without matching and keeping the whole region for each
        query: a client that splits its search in ranges of ``timeCreated`` sends several,
        side by side. A range of times selects from the listings' times alone (``_times``),
        as an index on them would, without reading each summary."""
        counts = self._region_counts(region)
        cursor = self._cursors.get((key, offset))
        position, index, skip = (0, 0, offset) if cursor is None else (*cursor, 0)
        page: list[bytes] = []
        while position < len(counts):
            compartment_id = counts[position][0]
            indexed: _Indexed | None = None
            rest = query.where
            if query.window is not None:
                start, end = query.window
                times = await self._times(region, compartment_id)
                matched = [
                    at
                    for at in range(index, len(times))
                    if (time := times[at]) is not None
                    and (start is None or time >= start)
                    and (end is None or time < end)
                ]
                rest = query.rest
            else:
                matched = list(range(index, counts[position][1]))
            if rest is not None and matched:
                indexed = await self._indexed(region, compartment_id, query.all_fields)
                facts = indexed.facts
                matched = [at for at in matched if (f := facts[at]) is not None and rest(f)]
            for at in matched:
                if skip:
                    skip -= 1
                    continue
                if len(page) == limit:
                    self._cursor((key, offset + limit), (position, at))
                    return page, True
                if indexed is None:
                    indexed = await self._indexed(region, compartment_id, query.all_fields)
                encoded = indexed.encoded[at]
                assert encoded is not None
                page.append(encoded)
            position, index = position + 1, 0
        self._cursor((key, offset + len(page)), (position, 0))
        return page, False

    async def _times(self, region: str, compartment_id: str) -> list[int | None]:
        """Each custom image's time as its summary gives it (``search.summary_micros``), None
        for one the index does not hold; kept for the emulator's life (about 40 bytes an image)."""
        key = (region, compartment_id)
        times = self._listing_times.get(key)
        if times is None:
            images = await self._custom(region, compartment_id)
            # A record the generator made whole always has its id; only a corrupted one
            # (``bad_records``) may be left out of the index.
            whole = not self.world.bad_records
            times = [
                search.summary_micros(image) if whole or search.summary(image) is not None else None
                for image in images
            ]
            self._listing_times[key] = times
        return times

    async def _search_by_time(
        self, region: str, key: tuple[object, ...], query: search.Query, offset: int, limit: int
    ) -> tuple[list[bytes], int]:
        """One page of a search sorted by ``timeCreated`` (within a range of it, if the query
        says one and nothing else): the region's matching images ordered by their times alone
        (``_times``), as an index on them would, ties in the region's order as the stable sort
        of ``_search_all`` leaves them; only the page's summaries are read."""
        assert query.sort is not None
        order = self._by_time.get(key)
        if order is None:
            start, end = query.window or (None, None)
            descending = query.sort[1]
            counts = self._region_counts(region)
            keyed: list[tuple[int, int]] = []
            for position, (compartment_id, _) in enumerate(counts):
                times = await self._times(region, compartment_id)
                keyed += [
                    (-time if descending else time, position << 24 | at)
                    for at, time in enumerate(times)
                    if time is not None
                    and (start is None or time >= start)
                    and (end is None or time < end)
                ]
            keyed.sort()
            order = [packed for _, packed in keyed]
            self._by_time[key] = order
            while len(self._by_time) > 32:
                self._by_time.popitem(last=False)
        self._by_time.move_to_end(key)
        counts = self._region_counts(region)
        page: list[bytes] = []
        for packed in order[offset : offset + limit]:
            # A page in order of time spans hundreds of listings: its summaries are made one
            # by one, not the listings' (``_indexed``).
            images = await self._custom(region, counts[packed >> 24][0])
            found = search.summary(images[packed & 0xFFFFFF], query.all_fields)
            assert found is not None
            page.append(orjson.dumps(found))
        return page, len(order)

    def _cursor(self, at: tuple[object, ...], cursor: tuple[int, int]) -> None:
        self._cursors[at] = cursor
        while len(self._cursors) > 4096:
            self._cursors.popitem(last=False)

    async def _indexed(self, region: str, compartment_id: str, all_fields: bool) -> _Indexed:
        """A listing as Search's index holds it: each custom image's summary, encoded, and the
        attributes a query compares (None for an image the index does not hold). Built once and
        kept while pages span the listing: a page of 1,000 summaries built anew from the
        images' records took the emulator about 40 ms of CPU, which four regions' searches
        queued behind one another, so that Search's pages took twice their latency and S6
        measured the emulator."""
        key = (region, compartment_id, all_fields)
        hit = self._indexes.get(key)
        if hit is not None:
            self._indexes.move_to_end(key)
            return hit
        images = await self._custom(region, compartment_id)
        indexed = _Indexed([], [], 0)
        for image in images:
            found = search.summary(image, all_fields)
            if found is None:
                indexed.encoded.append(None)
                indexed.facts.append(None)
                continue
            encoded = orjson.dumps(found)
            indexed.encoded.append(encoded)
            indexed.facts.append({name: found[name] for name in search.FIELDS.values()})
            indexed.size += len(encoded) + _INDEXED_OVERHEAD
        if key not in self._indexes:
            self._indexes[key] = indexed
            self._indexed_bytes += indexed.size
            while self._indexed_bytes > INDEXED_BYTES and len(self._indexes) > 1:
                _, dropped = self._indexes.popitem(last=False)
                self._indexed_bytes -= dropped.size
        return indexed

    async def _search_all(self, region: str, query: search.Query) -> list[dict[str, Any]]:
        """Every summary a query matches in a region, index lag applied, in its order."""
        knobs = self.behaviour
        found: list[dict[str, Any]] = []
        for compartment_id, _ in self._region_counts(region):
            for img in await self._custom(region, compartment_id):
                if knobs.search_lag and _lagging(img.id, knobs.search_lag):
                    continue
                summary = search.summary(img, query.all_fields)
                if summary is not None:
                    found.append(summary)
        listable = self.world.listable_compartments()
        for number in range(knobs.search_ghosts if listable else 0):
            digest = hashlib.blake2b(f"{region}/ghost/{number}".encode(), digest_size=8).digest()
            comp = listable[int.from_bytes(digest, "big") % len(listable)]
            ghost_id = f"ocid1.image.oc1.{region_code(region)}.aaaaaaaaghost{digest.hex()}"
            found.append(search.ghost(ghost_id, comp.id))
        if query.where is not None:
            found = [s for s in found if query.where(s)]
        if query.sort is not None:
            field, descending = query.sort
            found.sort(key=lambda s: str(s.get(field) or ""), reverse=descending)
        return found

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=orjson.dumps(self.stats.as_dict()), content_type="application/json"
        )

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        return web.Response(status=204)

    # -- pagination -------------------------------------------------------------------------

    def _limit(self, query: Any) -> int:
        raw = query.get("limit")
        if raw is None:
            return self.behaviour.default_limit
        try:
            limit = int(raw)
        except ValueError:
            raise ApiError(
                400, "InvalidParameter", "limit must be an integer from 1 to 1000."
            ) from None
        if not 1 <= limit <= 1000:
            raise ApiError(400, "InvalidParameter", "limit must be an integer from 1 to 1000.")
        return limit

    def _mac(self, key: tuple[object, ...], offset: int) -> str:
        message = repr((key, offset)).encode()
        return hmac.new(self._token_secret, message, hashlib.sha256).hexdigest()[:24]

    def _token(self, key: tuple[object, ...], offset: int) -> str:
        raw = f"{offset}.{self._mac(key, offset)}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def _offset(self, query: Any, key: tuple[object, ...]) -> int:
        token = _string(query, "page", max_length=512)
        if token is None:
            return 0
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            offset_text, mac = raw.split(".", 1)
            offset = int(offset_text)
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise ApiError(400, "InvalidParameter", "The page token is not valid.") from None
        if offset < 0 or not hmac.compare_digest(mac, self._mac(key, offset)):
            raise ApiError(400, "InvalidParameter", "The page token is not valid for this request.")
        return offset

    def _page(
        self,
        body: bytes,
        key: tuple[object, ...],
        offset: int,
        count: int,
        limit: int,
        total: int,
        *,
        endless: bool = False,
    ) -> web.Response:
        response = web.Response(body=body, content_type="application/json")
        end = offset + count
        more = end < total or (
            self.behaviour.trailing_empty_page and count == limit and end == total
        )
        if endless and not more:
            # Past the end, each empty page still points to a new one.
            self.stats.faults["endless"] += 1
            more, end = True, max(end, offset + 1)
        if more:
            response.headers["opc-next-page"] = self._token(key, end)
        return response


HOSTILE_COMPARTMENT_IDS = {
    "numeric": 12345,
    "list": ["ocid1.compartment.oc1..aaaalisted"],
    "empty": "",
}
"""Ids of the extra records ``Behaviour.hostile_compartments`` adds (and one without an id, one
that is not an object, one whose name holds a lone surrogate: SURROGATE_COMPARTMENT_ID)."""
SURROGATE_COMPARTMENT_ID = "ocid1.compartment.oc1..aaaasurrogate"
WRONG_TYPES = {
    "description": 42,
    "freeformTags": {"team": 7},
    "definedTags": {"Ops": 5},
    "timeCreated": 1700000000,
    "isAccessible": "yes",
}
"""Fields of the wrong type given to the page's first real record; its second gets a list for
its name."""


def _hostile_compartments(records: list[dict[str, Any]], tenancy_id: str) -> bytes:
    """A ListCompartments page with hostile records (``Behaviour.hostile_compartments``): the
    real ones stay (so the export is unchanged), fields of the wrong types on two of them."""
    records = [dict(r) for r in records]
    if records:
        records[0].update(WRONG_TYPES)
    if len(records) > 1:
        records[1]["name"] = ["Team", 2]
    active = {"lifecycleState": "ACTIVE", "compartmentId": tenancy_id, "name": "hostile"}
    extra: list[Any] = [{**active, "id": value} for value in HOSTILE_COMPARTMENT_IDS.values()]
    extra += [dict(active), "not a record"]
    body = orjson.dumps(records + extra)
    surrogate = orjson.dumps({**active, "id": SURROGATE_COMPARTMENT_ID})
    surrogate = surrogate.replace(b'"name":"hostile"', b'"name":"lone \\ud800 surrogate"')
    return body[:-1] + b"," + surrogate + b"]"


def _echoed(kind: str, authorization: str) -> web.Response:
    """A 400 that quotes the request's Authorization header (``Behaviour.echo_authorization``)."""
    if kind == "json":
        return _error(400, "InvalidParameter", f"Rejected header Authorization: {authorization}")
    page = (
        f"<html><body><h1>400 Bad Request</h1><p>Authorization: {authorization}</p></body></html>"
    )
    return web.Response(status=400, text=page, content_type="text/html")


def _lagging(image_id: str, share: float) -> bool:
    """Whether Search's index has not caught up with this image yet (``search_lag``)."""
    digest = hashlib.blake2b(f"lag/{image_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 2**32 < share


def _check_body_hash(request: web.Request, body: bytes) -> None:
    """The body is the one signed: its SHA-256 is the signed ``x-content-sha256``, its length
    the signed ``content-length``."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    if request.headers.get("x-content-sha256") != digest:
        raise _not_authenticated("The x-content-sha256 header does not match the request body.")
    if request.headers.get("content-length") != str(len(body)):
        raise _not_authenticated("The content-length header does not match the request body.")


def _structured_query(body: bytes) -> str:
    """The query text of a ``StructuredSearchDetails`` body."""
    try:
        details = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "InvalidParameter", "The request body is not valid JSON.") from None
    if not isinstance(details, dict):
        raise ApiError(400, "InvalidParameter", "The request body must be a SearchDetails object.")
    kind = details.get("type")
    if kind == "FreeText":
        raise ApiError(
            400, "InvalidParameter", "FreeText search is not served here; send a Structured query."
        )
    if kind != "Structured":
        raise ApiError(400, "InvalidParameter", "type must be Structured or FreeText.")
    text = details.get("query")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "MissingParameter", "A Structured search needs a query.")
    return text


def _error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"code": code, "message": message}),
        content_type="application/json",
    )


def _not_authenticated(message: str) -> ApiError:
    return ApiError(401, "NotAuthenticated", message)


def _string(query: Any, name: str, *, required: bool = False, max_length: int = 255) -> str | None:
    value: str | None = query.get(name)
    if value is None:
        if required:
            raise ApiError(400, "MissingParameter", f"Missing required parameter {name}.")
        return None
    if not 1 <= len(value) <= max_length:
        raise ApiError(
            400, "InvalidParameter", f"{name} must be between 1 and {max_length} characters long."
        )
    return value


def _enum(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ApiError(
            400, "InvalidParameter", f"{name} must be one of {', '.join(allowed)}; got {value!r}."
        )


def _boolean(query: Any, name: str) -> bool:
    raw = query.get(name)
    if raw is None:
        return False
    if raw.lower() not in ("true", "false"):
        raise ApiError(400, "InvalidParameter", f"{name} must be true or false.")
    return bool(raw.lower() == "true")


async def _truncated(
    request: web.Request, full: web.Response, request_id: str
) -> web.StreamResponse:
    """Announce the whole body, send half of it, then drop the connection."""
    body = full.body
    assert isinstance(body, bytes)
    response = web.StreamResponse(status=full.status, headers=full.headers)
    response.headers["opc-request-id"] = request_id
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()
    return response


def _cut_after_bracket(body: bytes | Any) -> bytes | None:
    """The body cut right after a ``}`` or ``]`` in its first half, as a proxy that lost the
    rest and recomputed Content-Length would send it: complete at the HTTP level, ending in a
    closing bracket, and still not the whole JSON text. None if the body has no such point."""
    if not isinstance(body, bytes) or len(body) < 3:
        return None
    end = max(body.rfind(b"}", 0, len(body) // 2 + 1), body.rfind(b"]", 0, len(body) // 2 + 1))
    if end <= 0:
        return None
    return body[: end + 1]


def _poison(kind: str, region: str, compartment_id: str) -> bytes:
    """A record that no strict parser accepts on its own (see POISON_KINDS)."""
    head = (
        f'{{"id":"ocid1.image.oc1..poisoned-{kind.replace("_", "-")}",'
        f'"compartmentId":"{compartment_id}","createImageAllowed":true,'
        '"lifecycleState":"AVAILABLE","operatingSystem":"Oracle Linux",'
        f'"operatingSystemVersion":"9","timeCreated":"2026-01-01T00:00:00.000Z","region":"{region}",'
    ).encode()
    if kind == "invalid_utf8":
        return head + b'"displayName":"not \xff\xfe utf-8"}'
    if kind == "lone_surrogate":
        return head + b'"displayName":"lone \\ud800 surrogate"}'
    depth = 5000
    return head + b'"freeformTags":{"deep":' + b"[" * depth + b"]" * depth + b"}}"


_BLOCK = 2**20


@functools.cache
def _bomb_parts(mib: int) -> tuple[bytes, bytes, int]:
    """The invariant part of a gzip bomb: ``[`` and ``mib`` MiB of JSON whitespace.

    After a full flush deflate starts afresh, so every MiB of spaces compresses to the same
    bytes; the bomb is those bytes repeated, never the expanded text. Returns the compressed
    opening, one compressed block, and the CRC-32 of the whole expanded prefix.
    """
    spaces = b" " * _BLOCK
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    opening = compressor.compress(b"[") + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(spaces) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(b"[")
    for _ in range(mib):
        crc = zlib.crc32(spaces, crc)
    return opening, block, crc


async def _gzip_bomb(
    request: web.Request, page: web.Response, body: bytes, mib: int
) -> web.StreamResponse:
    """The page, gzip-encoded behind ``mib`` MiB of whitespace: a few KB per expanded MiB.

    The expanded text is valid JSON holding the real page (``[`` + spaces + records + ``]``),
    so only a client that caps decompressed bytes notices anything."""
    opening, block, crc = await asyncio.to_thread(_bomb_parts, mib)
    rest = body[1:]
    tail_compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = tail_compressor.compress(rest) + tail_compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(rest, crc)
    size = (1 + mib * _BLOCK + len(rest)) % 2**32
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc, size)
    response = web.StreamResponse(status=200, headers=page.headers)
    response.headers["opc-request-id"] = request.get(REQUEST_ID, "")
    response.headers["Content-Encoding"] = "gzip"
    response.content_type = "application/json"
    response.content_length = len(header) + len(opening) + mib * len(block) + len(tail) + 8
    await response.prepare(request)
    await response.write(header + opening)
    for _ in range(mib):
        await response.write(block)
    await response.write(tail + trailer)
    await response.write_eof()
    return response


async def _huge_page(
    request: web.Request, page: web.Response, body: bytes, megabytes: float
) -> web.StreamResponse:
    """The page plus one padding record, ``megabytes`` MB in all, streamed in 1 MiB writes."""
    head = body[:-1] + (b"," if len(body) > 2 else b"")
    head += b'{"id":"ocid1.image.oc1..padding","freeformTags":{"padding":"'
    tail = b'"}}]'
    padding = max(0, int(megabytes * 1_000_000) - len(head) - len(tail))
    response = web.StreamResponse(status=200, headers=page.headers)
    response.headers["opc-request-id"] = request.get(REQUEST_ID, "")
    response.content_type = "application/json"
    response.content_length = len(head) + padding + len(tail)
    await response.prepare(request)
    await response.write(head)
    chunk = b"x" * _BLOCK
    while padding > 0:
        await response.write(chunk[: min(padding, _BLOCK)])
        padding -= _BLOCK
    await response.write(tail)
    await response.write_eof()
    return response
