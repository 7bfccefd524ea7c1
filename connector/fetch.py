"""Fetching: tasks per region, each following a listing's pages through the client's pagination
loop, then the next listing.

Pages go, in order, into the pipeline's bounded stream, followed by a ``ListingEnd`` that says
how many there were and, if the listing could not be fetched whole, why. A failed listing ends
only itself; the run goes on (and ends partial).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from connector.client import OciClient, Response
from connector.discovery import Endpoints
from connector.errors import OciApiError, PaginationError, TransportError
from connector.limits import ResponseTooLarge
from connector.manifest import ListingError
from connector.pages import Page, PageError, WorkItem
from connector.workers.coordinator import Verdicts


@dataclass(frozen=True, slots=True)
class ListingEnd:
    """Sent by a fetch task after its last page, or when it gave up."""

    item: WorkItem
    pages: int
    error: ListingError | None


log = structlog.get_logger("connector.fetch")

Message = Page | ListingEnd
"""What flows from the fetch tasks to the workers."""


class Fetcher:
    """Fetches listings of ListImages through one client.

    Each region has its own ``per_region`` tasks, each taking the region's listings one after
    another. Regions are paced on their own (see ``connector.retry``), so a region held back
    by its rate limit keeps only its own tasks waiting, never another region's. A task holds at
    most one page that is not handed on yet, so at most regions × ``per_region`` pages are in
    hand, and the number of tasks does not grow with the number of compartments (20,000
    waiting tasks, one per listing, would take about 130 MB on their own).
    """

    def __init__(
        self,
        client: OciClient,
        endpoints: Endpoints,
        page_size: int,
        filters: dict[str, str],
        per_region: int,
        verdicts: Verdicts | None = None,
    ) -> None:
        self.client = client
        self.verdicts = verdicts
        self.endpoints = endpoints
        self.page_size = page_size
        self.filters = filters
        self.per_region = max(1, per_region)

    async def fetch_all(
        self,
        items: Sequence[WorkItem],
        send: MemoryObjectSendStream[Message],
        expected_pages: Mapping[WorkItem, int] | None = None,
    ) -> None:
        """Fetch every listing, regions side by side; each region's in the order of
        ``largest_first``."""
        queues: dict[str, deque[WorkItem]] = {}
        for item in largest_first(items, expected_pages or {}):
            queues.setdefault(item.region, deque()).append(item)
        async with send, anyio.create_task_group() as group:
            for queue in queues.values():
                for _ in range(min(self.per_region, len(queue))):
                    group.start_soon(self._fetch_from, queue, send.clone())

    async def _fetch_from(self, queue: deque[WorkItem], send: ObjectSendStream[Message]) -> None:
        async with send:
            while queue:
                await self._listing(queue.popleft(), send)

    async def _listing(self, item: WorkItem, send: ObjectSendStream[Message]) -> None:
        """One listing's pages, then its end (or why it could not be fetched whole)."""
        url = self.endpoints.compute(item.region) + "/images"
        params: dict[str, Any] = {
            "compartmentId": item.compartment_id,
            "limit": self.page_size,
            **self.filters,
        }
        pages = self.client.paginate(
            url, params, region=item.region, compartment_id=item.compartment_id
        )
        number = 0
        tokens: dict[int, str | None] = {}
        try:
            async with aclosing(pages):
                async for paged in pages:
                    number = paged.number
                    tokens[number] = paged.token
                    await send.send(_page(item, number, paged.response))
            await self._settle(item, url, params, tokens, send)
        except (
            OciApiError,
            TransportError,
            PaginationError,
            ResponseTooLarge,
            PageError,
        ) as exc:
            if self.client.aborted is not None:
                raise self.client.aborted from None  # the whole run stops, not a listing
            if getattr(exc, "concerns_run", False):
                raise  # every listing would fail the same way: stop the run, say why
            await send.send(ListingEnd(item, number, ListingError.from_exception(exc)))
        else:
            await send.send(ListingEnd(item, number, None))

    async def _settle(
        self,
        item: WorkItem,
        url: str,
        params: dict[str, Any],
        tokens: dict[int, str | None],
        send: ObjectSendStream[Message],
    ) -> None:
        """Wait for the workers' verdicts on the listing's pages; ask again for those that could
        not be parsed (cut short), with the same page token, a few times. ``PageError`` if one
        never comes whole."""
        if self.verdicts is None or not tokens:
            return
        policy = self.client.options.retry
        bad = _failed(await self.verdicts.collect(item, set(tokens)))
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
                token = tokens[number]
                query = {**params, "page": token} if token else params
                response = await self.client.get(
                    url,
                    query,
                    priority=0,
                    region=item.region,
                    compartment_id=item.compartment_id,
                    page=number,
                )
                await send.send(_page(item, number, response))
            bad = _failed(await self.verdicts.collect(item, set(bad)))


def largest_first(items: Sequence[WorkItem], pages: Mapping[WorkItem, int]) -> list[WorkItem]:
    """``items`` with the listings expected to take most pages first (``pages``: from the last
    snapshot, see ``snapshots.listing_pages``), the others in their order.

    A listing's pages come one after another (each page's token is in the one before), so a
    listing of many pages taken last runs alone at the end of the fetch while the other
    requests in flight have nothing left to do. Taken first, it runs beside the short ones.
    """
    if not pages:
        return list(items)
    return sorted(items, key=lambda item: -pages.get(item, 1))


def _page(item: WorkItem, number: int, response: Response) -> Page:
    return Page(
        response.body,
        item.region,
        item.compartment_id,
        number,
        datetime.now(UTC),
        response.opc_request_id,
    )


def _failed(verdicts: dict[int, str | None]) -> dict[int, str]:
    return {number: reason for number, reason in verdicts.items() if reason is not None}
