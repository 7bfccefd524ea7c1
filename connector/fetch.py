"""Fetching: a task per listing, each following its pages through the client's pagination loop.

Pages go, in order, into the pipeline's bounded stream, followed by a ``ListingEnd`` that says
how many there were and, if the listing could not be fetched whole, why. A failed listing ends
only itself; the run goes on (and ends partial).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from connector.client import OciClient
from connector.discovery import Endpoints
from connector.errors import OciApiError, PaginationError, TransportError
from connector.limits import ResponseTooLarge
from connector.manifest import ListingError
from connector.pages import Page, WorkItem
from connector.retry import PriorityGate


@dataclass(frozen=True, slots=True)
class ListingEnd:
    """Sent by a fetch task after its last page, or when it gave up."""

    item: WorkItem
    pages: int
    error: ListingError | None


Message = Page | ListingEnd
"""What flows from the fetch tasks to the workers."""


class Fetcher:
    """Fetches listings of ListImages through one client."""

    def __init__(
        self,
        client: OciClient,
        endpoints: Endpoints,
        page_size: int,
        filters: dict[str, str],
        in_hand: int,
    ) -> None:
        self.client = client
        self.endpoints = endpoints
        self.page_size = page_size
        self.filters = filters
        # Pages fetched but not yet queued: without this bound, tasks that finished a request
        # would each hold a page while waiting for the queue, and memory would grow with the
        # number of compartments. Continuation pages go first, as in the request limiter.
        self._in_hand = PriorityGate(lambda: in_hand)

    async def fetch_all(
        self, items: Sequence[WorkItem], send: MemoryObjectSendStream[Message]
    ) -> None:
        """Fetch every listing concurrently (the client bounds the requests in flight)."""
        async with send, anyio.create_task_group() as group:
            for item in items:
                group.start_soon(self.fetch_listing, item, send.clone())

    async def fetch_listing(self, item: WorkItem, send: ObjectSendStream[Message]) -> None:
        """One listing's pages, then its end."""
        url = self.endpoints.compute(item.region) + "/images"
        params: dict[str, Any] = {
            "compartmentId": item.compartment_id,
            "limit": self.page_size,
            **self.filters,
        }
        pages = self.client.paginate(
            url, params, gate=self._in_hand, region=item.region, compartment_id=item.compartment_id
        )
        number = 0
        async with send:
            try:
                async with aclosing(pages):
                    async for paged in pages:
                        number = paged.number
                        response = paged.response
                        page = Page(
                            response.body,
                            item.region,
                            item.compartment_id,
                            number,
                            datetime.now(UTC),
                            response.opc_request_id,
                        )
                        await send.send(page)
            except (OciApiError, TransportError, PaginationError, ResponseTooLarge) as exc:
                if self.client.aborted is not None:
                    raise self.client.aborted from None  # the whole run stops, not a listing
                await send.send(ListingEnd(item, number, ListingError.from_exception(exc)))
            else:
                await send.send(ListingEnd(item, number, None))
