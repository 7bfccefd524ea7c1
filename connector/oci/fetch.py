"""Fetching: tasks per region, each following a listing's pages through the client's pagination
loop, then the next listing.

Pages go, in order, into the pipeline's bounded stream, followed by a ``ListingEnd`` that says
how many there were and, if the listing could not be fetched whole, why. A failed listing ends
only itself; the run goes on (and ends partial).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import aclosing, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from anyio.abc import ObjectSendStream, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from connector import logs
from connector.errors import ConnectorError, OciApiError, PaginationError, TransportError
from connector.limits import ResponseTooLarge
from connector.oci.client import OciClient, Response, for_settings
from connector.oci.endpoints import Endpoints
from connector.oci.sharedrate import SharedRates
from connector.pages import AllStarted, ListingEnd, ListingError, Message, Page, PageError, WorkItem

if TYPE_CHECKING:
    from connector.config import Settings
    from connector.oci.auth import Credentials
    from connector.oci.search import Searching


class Verdicts(Protocol):
    """Whether each page handed to the workers could be parsed (the workers' coordinator keeps
    them): a page cut short is recognised only by parsing it, and is then asked for again."""

    async def collect(self, item: WorkItem, numbers: set[int]) -> dict[int, str | None]:
        """The verdicts on pages ``numbers`` of ``item``, once all are in."""
        ...


log = logs.get_logger("connector.oci.fetch")


class Fetcher:
    """Fetches listings of ListImages through one client.

    Each region has its own ``per_region`` tasks, each taking the region's listings one after
    another. Regions are paced on their own (see ``connector.oci.retry``), so a region held back
    by its rate limit keeps only its own tasks waiting, never another region's. A task holds at
    most one page that is not handed on yet, so at most regions × ``per_region`` pages are in
    hand, and the number of tasks does not grow with the number of compartments (20,000
    waiting tasks, one per listing, would take about 130 MB on their own).

    A listing ends once the workers have parsed its pages (``_end``). That waiting happens
    beside the fetch task, which goes on with its next listing meanwhile: at most
    ``ENDS_AHEAD`` of its listings wait so. Waiting in the fetch task itself kept a third of
    the requests that could be in flight idle while the workers were busy (S1).
    """

    ENDS_AHEAD = 4

    def __init__(
        self,
        client: OciClient,
        endpoints: Endpoints,
        page_size: int,
        filters: Mapping[str, str],
        per_region: int,
        verdicts: Verdicts | None = None,
    ) -> None:
        self.client = client
        self.verdicts = verdicts
        self.endpoints = endpoints
        self.page_size = page_size
        self.filters = filters
        self.per_region = max(1, per_region)
        self.search: tuple[Searching, frozenset[WorkItem]] | None = None
        """With ``fetch.strategy = "search"``: the search to run beside the listings, and this
        shard's share of the listings in scope; the listings it names join the queues."""

    async def fetch_all(
        self,
        items: Sequence[WorkItem],
        send: MemoryObjectSendStream[Message],
        expected_pages: Mapping[WorkItem, int] | None = None,
    ) -> None:
        """Fetch every listing, regions side by side; each region's long listings early
        (``long_listings_early``)."""
        regions: dict[str, list[WorkItem]] = {}
        arrivals: dict[str, MemoryObjectReceiveStream[WorkItem]] = {}
        sends: dict[str, MemoryObjectSendStream[WorkItem]] = {}
        if self.search is not None:
            for region in self.search[0].regions:
                regions[region] = []
                sends[region], arrivals[region] = anyio.create_memory_object_stream[WorkItem](
                    math.inf
                )
        for item in items:
            regions.setdefault(item.region, []).append(item)
        pages = expected_pages or {}
        queues = {
            region: deque(long_listings_early(listings, pages, self.per_region))
            for region, listings in regions.items()
        }
        started = _Started(list(queues.values()), streams=len(arrivals))
        async with (
            send,
            anyio.create_task_group() as ending,
            anyio.create_task_group() as fetching,
        ):
            if self.search is not None:
                fetching.start_soon(self.search[0].run, self.search[1], sends)
            for region, queue in queues.items():
                arriving = arrivals.get(region)
                tasks = self.per_region if arriving else min(self.per_region, len(queue))
                for _ in range(tasks):
                    more = arriving.clone() if arriving else None
                    fetching.start_soon(
                        self._fetch_from, queue, started, send.clone(), ending, more
                    )
                if arriving is not None:
                    arriving.close()

    async def _fetch_from(
        self,
        queue: deque[WorkItem],
        started: _Started,
        send: MemoryObjectSendStream[Message],
        ending: TaskGroup,
        arriving: MemoryObjectReceiveStream[WorkItem] | None = None,
    ) -> None:
        """The region's listings one after another: those of ``queue``, then those that
        ``arriving`` (Resource Search) names, until it closes."""
        ahead = anyio.Semaphore(self.ENDS_AHEAD)
        async with send, arriving or nullcontext():
            while True:
                if queue:
                    item = queue.popleft()
                elif arriving is not None:
                    try:
                        item = await arriving.receive()
                    except anyio.EndOfStream:
                        # The region's search is over: all its listings have begun.
                        started.closed.add(id(queue))
                        if started.last():
                            await send.send(AllStarted())
                        return
                else:
                    return
                if started.last():
                    await send.send(AllStarted())
                await self._listing(item, send, ending, ahead)

    async def _listing(
        self,
        item: WorkItem,
        send: MemoryObjectSendStream[Message],
        ending: TaskGroup,
        ahead: anyio.Semaphore,
    ) -> None:
        """One listing's pages; its end follows in ``ending`` (or now, if it failed)."""
        url = self.endpoints.compute(item.region) + "/images"
        params: dict[str, Any] = {
            "compartmentId": item.compartment_id,
            "limit": self.page_size,
            **self.filters,
        }
        pages = self.client.paginate(
            url, params, hold=True, region=item.region, compartment_id=item.compartment_id
        )
        sent = _Sent(item, url, params)
        try:
            async with aclosing(pages):
                async for paged in pages:
                    sent.tokens[paged.number] = paged.token
                    await _hand_on(send, _page(item, paged.number, paged.response))
        except _LISTING_ERRORS as exc:
            await self._end_failed(item, sent.pages, exc, send)
            return
        await ahead.acquire()
        ending.start_soon(self._end, sent, send.clone(), ahead)

    async def _end(
        self, sent: _Sent, send: ObjectSendStream[Message], ahead: anyio.Semaphore
    ) -> None:
        """End a listing whose pages were all sent: once the workers' verdicts are in and the
        pages they could not parse were fetched again (``_settle``)."""
        try:
            async with send:
                try:
                    await self._settle(sent, send)
                except _LISTING_ERRORS as exc:
                    await self._end_failed(sent.item, sent.pages, exc, send)
                else:
                    await send.send(ListingEnd(sent.item, sent.pages, None))
        finally:
            ahead.release()

    async def _end_failed(
        self, item: WorkItem, number: int, exc: ConnectorError, send: ObjectSendStream[Message]
    ) -> None:
        """A listing that could not be fetched whole ends with why; the others go on."""
        if self.client.aborted is not None:
            raise self.client.aborted from None  # the whole run stops, not a listing
        if getattr(exc, "concerns_run", False):
            raise exc  # every listing would fail the same way: stop the run, say why
        await send.send(ListingEnd(item, number, ListingError.from_exception(exc)))

    async def _settle(self, sent: _Sent, send: ObjectSendStream[Message]) -> None:
        """Wait for the workers' verdicts on the listing's pages; ask again for those that could
        not be parsed (cut short), with the same page token, a few times. ``PageError`` if one
        never comes whole."""
        if self.verdicts is None or not sent.tokens:
            return
        item = sent.item
        policy = self.client.options.retry
        bad = _failed(await self.verdicts.collect(item, set(sent.tokens)))
        attempt = 1
        while bad:
            if attempt >= policy.max_attempts:
                number, reason = min(bad.items())
                raise PageError(f"page {number} was not whole JSON in {attempt} attempts: {reason}")
            await anyio.sleep(policy.backoff(attempt))
            attempt += 1
            for number, reason in sorted(bad.items()):
                log.info(
                    "page.refetch",
                    region=item.region,
                    compartment_id=item.compartment_id,
                    page=number,
                    attempt=attempt,
                    reason=reason,
                )
                token = sent.tokens[number]
                query = {**sent.params, "page": token} if token else sent.params
                response = await self.client.get(
                    sent.url,
                    query,
                    priority=0,
                    region=item.region,
                    compartment_id=item.compartment_id,
                    page=number,
                    hold=True,
                )
                await _hand_on(send, _page(item, number, response))
            bad = _failed(await self.verdicts.collect(item, set(bad)))


@dataclass(slots=True)
class _Sent:
    """A listing whose pages went to the workers: what its end needs to ask for one again."""

    item: WorkItem
    url: str
    params: dict[str, Any]
    tokens: dict[int, str | None] = field(default_factory=dict)
    """The token each page was asked for with (None for the first), by page number."""

    @property
    def pages(self) -> int:
        return len(self.tokens)


_LISTING_ERRORS = (OciApiError, TransportError, PaginationError, ResponseTooLarge, PageError)
"""What ends one listing as failed (unless it ``concerns_run``); anything else ends the run."""


@dataclass(slots=True)
class _Started:
    """The regions' queues of listings, and whether the last listing has started."""

    queues: list[deque[WorkItem]]
    streams: int = 0
    """Regions whose listings arrive as Resource Search names them: the last listing has begun
    only once each of their streams has closed (``closed``, by queue)."""
    closed: set[int] = field(default_factory=set)
    done: bool = False

    def last(self) -> bool:
        """True once, for the task that takes the last listing of every queue (and, with
        streams, once the last of them has closed)."""
        if self.done or any(self.queues) or len(self.closed) < self.streams:
            return False
        self.done = True
        return True


def long_listings_early(
    listings: Sequence[WorkItem], pages: Mapping[WorkItem, int], tasks: int
) -> list[WorkItem]:
    """One region's ``listings`` with the long ones spread over the first half of the queue,
    longest first, and the others in their order. ``pages`` says how many pages a listing
    took last time (``snapshots.listing_pages``; one, if it does not say); ``tasks`` is how
    many fetch tasks the region has.

    A listing's pages come one after another (each page's token is in the one before), so a
    long listing taken last runs alone at the end of the fetch while the other tasks have
    nothing left to do. Long means more than a quarter of what each task fetches in all. Spread
    rather than all at the very start, which would put the heaviest conversion at the start of
    every shard at once (``docs/performance.md``, "Long listings early").
    """
    if not pages:
        return list(listings)
    counts = {item: pages.get(item, 1) for item in listings}
    quarter = sum(counts.values()) / max(1, tasks) / 4
    long = sorted((item for item in listings if counts[item] > quarter), key=lambda i: -counts[i])
    rest = [item for item in listings if counts[item] <= quarter]
    # Spread over the first half of the queue, one every `step` of the others.
    step = len(rest) // 2 // max(1, len(long))
    ordered: list[WorkItem] = []
    for n, item in enumerate(long):
        ordered.append(item)
        ordered += rest[n * step : (n + 1) * step]
    return ordered + rest[len(long) * step :]


def _page(item: WorkItem, number: int, response: Response) -> Page:
    lease = response.lease
    return Page(
        response.body,
        item.region,
        item.compartment_id,
        number,
        datetime.now(UTC),
        response.opc_request_id,
        lease.release if lease is not None else None,
    )


async def _hand_on(send: ObjectSendStream[Message], page: Page) -> None:
    """Send ``page`` to the workers' feeder, which releases its bytes once a worker has it;
    a page that never gets there (the run is stopping) gives them back here."""
    try:
        await send.send(page)
    except BaseException:
        page.released()
        raise


def _failed(verdicts: dict[int, str | None]) -> dict[int, str]:
    return {number: reason for number, reason in verdicts.items() if reason is not None}


@dataclass(slots=True)
class Session:
    """The OCI side of one run: its client, its fetcher and, for one shard of several, the
    pacing state it shares with the run's other shards on this machine (opened while the run
    fetches: ``with session.shared_rates or nullcontext()``)."""

    client: OciClient
    fetcher: Fetcher
    shared_rates: SharedRates | None

    @classmethod
    def for_run(
        cls,
        settings: Settings,
        credentials: Credentials,
        endpoints: Endpoints,
        filters: Mapping[str, str],
        *,
        run_id: str,
        shard: tuple[int, int],
        rate_share: float,
        verdicts: Verdicts | None,
    ) -> Session:
        """The session of ``run_id``'s shard ``shard``, with ``rate_share`` of the budget."""
        index, count = shard
        shared = SharedRates(run_id, index, rate_share) if count > 1 else None
        states = shared.state if shared is not None else None
        client = for_settings(settings, credentials, rate_share, states)
        fetch = settings.fetch
        fetcher = Fetcher(
            client,
            endpoints,
            fetch.page_size,
            filters,
            per_region=fetch.concurrency,
            verdicts=verdicts,
        )
        return cls(client, fetcher, shared)
