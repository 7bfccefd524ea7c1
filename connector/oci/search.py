"""Resource Search: which compartments hold custom images, so that ListImages runs only there.

``fetch.strategy = "search"``. In most tenancies a few shared compartments hold the custom
images, and a listing anywhere else returns only the region's 100-200 platform images, which the
connector then drops. One structured query per region (``query image resources``, paged by
1,000) names every compartment that holds custom images; the run lists those, plus, per region,
the one listing that brings the platform images (the region's first compartment in scope, the
same listing that donates them in ``list`` mode), and nothing else.

The search runs beside the listings: a compartment's listing starts as soon as a page of
results names it, so Search's pages, which follow one another, do not hold the listings back.

Search's index lags: an image created a moment ago may not be in it yet, one deleted may still
be. Each listing's custom image ids are compared with Search's (``Searching.known``, once the
region's search is over): the manifest
reports, per region, the images the listings returned that Search did not know, and those it
knew that the listings did not return. What this cannot see: an image created in a compartment
that holds no other custom image, before the index has it, is missed until a later run.

Search answers with what the principal may inspect, as ListImages does; a region where it fails
(after the client's retries) is listed in full, with a warning, rather than guessed at.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import aclosing, nullcontext
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import ObjectSendStream, TaskGroup

from connector import logs
from connector.errors import OciApiError, TransportError
from connector.pages import PageError, WorkItem, parse_one

if TYPE_CHECKING:
    from connector.oci.client import OciClient
    from connector.oci.endpoints import Endpoints

log = logs.get_logger("connector.oci.search")

QUERY = "query image resources"
PAGE_SIZE = 1000
RANGES = 4
"""Searches per region, side by side, each over a range of ``timeCreated``, when the first
page says more follow: a search's pages follow one another (each page's token is in the one
before), and a region of 150,000 custom images took 150 pages one after another, longer than
the listings they call for. The split costs a few requests: the first page, asked for again
within a range, and each range's last page, seldom full."""
STEALS = 12
STEAL_PAGES = 4
"""When fewer than ``RANGES`` searches run in a region, the one with the most pages left (at
least this many) stops and shares its remaining times (``STEALS`` times a region at most)."""
SPAN = timedelta(days=5 * 365)
"""The times the ranges divide when the tenancy's compartments say nothing older."""
EXPRESSED = {"displayName": "displayName", "lifecycleState": "lifecycleState"}
"""ListImages filters that Search's query language expresses, by their query parameter."""
NOT_FILTERS = frozenset({"sortBy", "sortOrder"})


class Searching:
    """Resource Search for a run: what it found so far, and the listings it calls for.

    The searches run beside the listings (``run``, which the fetcher starts): as soon as a page
    of results names a compartment of this shard's share, its listing can start, while Search
    goes on paging. ``plan`` completes them first (``complete``), to count the listings.
    """

    def __init__(
        self,
        client: OciClient,
        endpoints: Endpoints,
        items: Sequence[WorkItem],
        filters: Mapping[str, str],
        platform_images: str,
        *,
        since: datetime | None = None,
        now: datetime | None = None,
    ) -> None:
        self._client = client
        self._endpoints = endpoints
        self.scope = frozenset(items)
        self.query, self.exact = query_for(filters)
        """``exact``: whether the query expressed every ListImages filter, so that an image
        Search knew and a listing did not return was deleted since (not filtered out)."""
        self.since = since
        self.now = now or datetime.now(UTC)
        firsts: dict[str, WorkItem] = {}
        for item in sorted(items):
            firsts.setdefault(item.region, item)
        self.regions = tuple(sorted(firsts))
        self.platform = frozenset(firsts.values()) if platform_images == "once" else frozenset()
        """The listing per region that brings its platform images (``once``)."""
        self.known: dict[WorkItem, bytearray] = {}
        """Each listing in scope where Search found custom images: their ids so far, one a
        line (``ids``). Search may name hundreds of thousands of images in a region; as text
        they take about 90 bytes each, where a set of strings takes about twice that."""
        self.unsearched: set[str] = set()
        """Regions where Search failed: every compartment in scope is listed there."""
        self.done: set[str] = set()
        """Regions whose search is over."""

    def keeps(self, item: WorkItem) -> bool:
        """Whether the run lists ``item``, as far as the searches have gone."""
        return item in self.known or item in self.platform or item.region in self.unsearched

    def ids(self, item: WorkItem, *, release: bool = True) -> frozenset[str]:
        """The custom image ids Search named in ``item``'s compartment (so far); with
        ``release``, they are then let go (each listing is compared once)."""
        found = self.known.pop(item, None) if release else self.known.get(item)
        if not found:
            return frozenset()
        return frozenset(found.decode("utf-8", "surrogatepass").split("\n")[:-1])

    async def complete(self) -> None:
        """Run every region's search to its end (for ``plan``)."""
        async with anyio.create_task_group() as group:
            for region in self.regions:
                group.start_soon(self._region, region, None, frozenset[WorkItem]())

    async def run(
        self, share: frozenset[WorkItem], sends: Mapping[str, ObjectSendStream[WorkItem]]
    ) -> None:
        """Search every region; each listing of ``share`` (this shard's) that a result names
        goes, once, to its region's stream, which closes when the region's search ends."""
        async with anyio.create_task_group() as group:
            for region in self.regions:
                send = sends.get(region)
                if send is not None:
                    group.start_soon(self._region, region, send, share)

    async def _region(
        self,
        region: str,
        send: ObjectSendStream[WorkItem] | None,
        share: frozenset[WorkItem],
    ) -> None:
        handed = set(self.platform)
        found = _Found()
        failures: list[OciApiError | TransportError] = []

        async def hand(item: WorkItem) -> None:
            if send is not None and item in share and item not in handed:
                handed.add(item)
                await send.send(item)

        split = _Split(RANGES, STEALS, self.now)

        async def ranged(chain: _Range, group: TaskGroup) -> None:
            query = f"{within(self.query, chain.condition())} sorted by timeCreated asc"
            try:
                await self._search(region, query, hand, found, chain=chain)
            except (OciApiError, TransportError) as exc:
                if self._client.aborted is not None:
                    raise self._client.aborted from None
                failures.append(exc)
                return
            if chain.done:
                split.ended(chain)
            else:
                # Stopped, to share the times it has left with the searches that ended.
                for part in split.rest(chain):
                    group.start_soon(ranged, part, group)

        try:
            async with send or nullcontext():
                try:
                    sample = await self._search(region, self.query, hand, found, probe=True)
                except (OciApiError, TransportError) as exc:
                    if self._client.aborted is not None:
                        raise self._client.aborted from None
                    failures.append(exc)
                    sample = None
                if sample is not None:
                    bounds = sample_bounds(sample, RANGES) or even_bounds(
                        self.since, self.now, RANGES
                    )
                    async with anyio.create_task_group() as group:
                        for low, high in zip([None, *bounds], [*bounds, None], strict=True):
                            group.start_soon(ranged, split.start(low, high), group)
                if failures:
                    failure = failures[0]
                    self.unsearched.add(region)
                    log.warning(
                        "search.failed",
                        region=region,
                        status=getattr(failure, "status", None),
                        code=getattr(failure, "code", None),
                        reason=str(failure),
                        hint=failure.hint or "",
                    )
                    for item in sorted(share):
                        if item.region == region:
                            await hand(item)
                else:
                    log.info(
                        "search.found",
                        region=region,
                        compartments=len(found.compartments),
                        images=found.images,
                        pages=found.pages,
                    )
        finally:
            self.done.add(region)

    async def _search(
        self,
        region: str,
        query: str,
        hand: Callable[[WorkItem], Awaitable[None]],
        found: _Found,
        *,
        probe: bool = False,
        chain: _Range | None = None,
    ) -> list[datetime] | None:
        """One of a region's paged searches: the custom image ids of each compartment in
        scope (into ``known``), counted in ``found``.

        With ``probe``, only the first page if more follow: the region's search is then split
        in ranges of time, and the page's times (returned) say where to split it. Its
        compartments are named at once all the same; the ranges name its images again. With
        ``chain`` (a range's search, sorted by time), each page's times go into it, and the
        search stops after a page once ``chain.stop`` says so."""
        url = f"{self._endpoints.search(region)}/resources"
        body = orjson.dumps({"type": "Structured", "query": query})
        params = {"limit": PAGE_SIZE}
        parsed: dict[str, Any] = {}

        def validate(raw: bytes) -> None:
            # The page is parsed once: to check it (a body cut short is asked for again), and
            # that parse is the one read below.
            parsed["body"], parsed["items"] = raw, _collection(raw)

        paginate = self._client.paginate(
            url, params, body=body, validate=validate, first=0, region=region
        )
        async with aclosing(paginate) as paged:
            async for page in paged:
                found.pages += 1
                raw = page.response.body
                summaries = parsed["items"] if parsed.get("body") is raw else _collection(raw)
                split = probe and page.response.next_page is not None
                for compartment, ids in _by_compartment(summaries).items():
                    item = WorkItem(region, compartment)
                    if item in self.scope:
                        lines = "\n".join(ids).encode("utf-8", "surrogatepass") + b"\n"
                        self.known.setdefault(item, bytearray()).extend(lines)
                        found.compartments.add(item)
                        found.images += 0 if split else len(ids)
                        await hand(item)
                if split:
                    return _times(summaries)
                if chain is not None:
                    chain.paged(_times(summaries))
                    if chain.stop and chain.ordered and page.response.next_page is not None:
                        return None
        if chain is not None:
            chain.done = True
        return None


class _Range:
    """One search of a region's, over a range of ``timeCreated`` (``[low, high)``, None:
    open), sorted by time: how far it has come (``paged``)."""

    def __init__(self, low: datetime | None, high: datetime | None, split: _Split) -> None:
        self.low, self.high = low, high
        self.split = split
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.pages = 0
        self.stop = False
        """Set when it is to stop after its page in flight (``_Split.consider``)."""
        self.ordered = True
        self.done = False

    def condition(self) -> str:
        parts = [f"timeCreated >= '{_stamp(self.low)}'"] if self.low else []
        parts += [f"timeCreated < '{_stamp(self.high)}'"] if self.high else []
        return " && ".join(parts)

    def paged(self, times: list[datetime]) -> None:
        """A page came, with these times (in order: the search is sorted by them)."""
        self.pages += 1
        if times:
            previous = [self.last] if self.last is not None else []
            if not all(a <= b for a, b in itertools.pairwise([*previous, *times])):
                # Not in order of time after all: its remaining times are not known, so it
                # goes on to its end.
                self.ordered = False
            self.first = self.first or times[0]
            self.last = times[-1]
        self.split.consider()

    def left(self) -> float:
        """About how many pages are left, at the pace of those so far (0 if stopping or not
        yet known)."""
        if self.stop or not self.ordered or self.pages < 2 or not (self.first and self.last):
            return 0.0
        per_page = (self.last - self.first) / (self.pages - 1)
        end = self.high or self.split.now
        if per_page <= timedelta(0) or end <= self.last:
            return 0.0
        return (end - self.last) / per_page


class _Split:
    """A region's searches by ranges of time: at most ``slots`` at once; when fewer run, the
    one with the most pages left stops after its page in flight, and its remaining times go
    to two new searches (``steals`` times at most)."""

    def __init__(self, slots: int, steals: int, now: datetime) -> None:
        self.slots, self.steals, self.now = slots, steals, now
        self.running: set[_Range] = set()

    def start(self, low: datetime | None, high: datetime | None) -> _Range:
        chain = _Range(low, high, self)
        self.running.add(chain)
        return chain

    def ended(self, chain: _Range) -> None:
        self.running.discard(chain)
        self.consider()

    def consider(self) -> None:
        """Stop the search with the most pages left if a slot is free and it has enough."""
        if len(self.running) >= self.slots or not self.steals:
            return
        victim = max(self.running, key=lambda c: c.left(), default=None)
        if victim is not None and victim.left() >= STEAL_PAGES:
            victim.stop = True
            self.steals -= 1

    def rest(self, chain: _Range) -> list[_Range]:
        """The times a stopped search has not reached, in two halves (from its last time on,
        inclusive: the images of that millisecond it named already are named again, which
        does no harm). Each half ends with a page seldom full: one request more a split."""
        self.running.discard(chain)
        start = chain.last or chain.low
        end = chain.high or max(self.now, start or self.now)
        if start is None or end <= start:
            return [self.start(start, chain.high)]
        middle = start + (end - start) / 2
        return [self.start(start, middle), self.start(middle, chain.high)]


class _Found:
    """What a region's searches found so far (for ``search.found``)."""

    __slots__ = ("compartments", "images", "pages")

    def __init__(self) -> None:
        self.compartments: set[WorkItem] = set()
        self.images = 0
        self.pages = 0


def query_for(filters: Mapping[str, str]) -> tuple[str, bool]:
    """The structured query for the run's ListImages filters, and whether it expresses every
    one of them (a value holding both quote characters cannot be written, and Search has no
    operating system or shape to compare: those leave Search's answer a superset)."""
    conditions: list[str] = []
    exact = True
    for param, value in sorted(filters.items()):
        field = EXPRESSED.get(param)
        if param in NOT_FILTERS:
            continue
        if field is None:
            exact = False
        elif "'" not in value:
            conditions.append(f"{field} = '{value}'")
        elif '"' not in value:
            conditions.append(f'{field} = "{value}"')
        else:
            exact = False
    if conditions:
        return f"{QUERY} where {' && '.join(conditions)}", exact
    return QUERY, exact


def sample_bounds(times: Sequence[datetime], count: int) -> list[datetime] | None:
    """``count - 1`` times that divide a sample of the region's times (the first page's) into
    ``count`` ranges of as many images; None if the sample says nothing of the whole: too
    small, or in the order of time (OCI documents newest first when a query does not sort: a
    page is then the newest images, not a sample). Searches that end take over from the
    longest (``_Range``), so the bounds need not be right, only a start."""
    if len(times) < 2 * count:
        return None
    if all(earlier >= later for earlier, later in itertools.pairwise(times)):
        return None
    ordered = sorted(times)
    return sorted({ordered[len(ordered) * n // count] for n in range(1, count)})


def even_bounds(since: datetime | None, now: datetime, count: int) -> list[datetime]:
    """``count - 1`` times that divide those from ``since`` (the tenancy's oldest compartment,
    or ``SPAN`` before ``now``) to ``now`` evenly. An image older or newer is in the first or
    the last range: bounds decide how the work divides, never what is found."""
    start = since if since is not None and since < now else now - SPAN
    step = (now - start) / max(1, count)
    return sorted({start + step * n for n in range(1, count)})


def earliest(times: Iterable[object]) -> datetime | None:
    """The oldest of ``times`` (RFC 3339 text, as Identity's records carry ``timeCreated``);
    None if none can be read."""
    moments = [moment for text in times if (moment := _time(text)) is not None]
    return min(moments, default=None)


def within(query: str, condition: str) -> str:
    """``query`` restricted by ``condition`` (which may be empty)."""
    if not condition:
        return query
    return f"{query} && {condition}" if " where " in query else f"{query} where {condition}"


def _stamp(moment: datetime) -> str:
    """A bound as the query language reads it: UTC, milliseconds (a summary's precision)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _times(summaries: list[Any]) -> list[datetime]:
    """The creation times a page of summaries gives (those that can be read), in its order."""
    return [
        moment
        for summary in summaries
        if isinstance(summary, dict) and (moment := _time(summary.get("timeCreated")))
    ]


def _time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _by_compartment(summaries: list[Any]) -> dict[str, list[str]]:
    """A page's image ids by compartment, in the order they came. Per compartment rather than
    per summary, the work per page that does not parse: a region's search can name hundreds of
    thousands of images, and work item, scope test and hand-over per summary took the
    connector as much CPU as parsing the pages did."""
    found: dict[str, list[str]] = {}
    for summary in summaries:
        if not isinstance(summary, dict) or summary.get("resourceType") != "Image":
            continue
        compartment, image = summary.get("compartmentId"), summary.get("identifier")
        if isinstance(compartment, str) and isinstance(image, str):
            ids = found.get(compartment)
            if ids is None:
                found[compartment] = ids = []
            ids.append(image)
    return found


def _collection(body: bytes) -> list[Any]:
    """The summaries of a ``ResourceSummaryCollection``; ``PageError`` for anything else (a
    body cut short is retried, whole JSON of another shape is not)."""
    document = parse_one(body)
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise PageError("the answer is not a ResourceSummaryCollection", whole=True)
    return items
