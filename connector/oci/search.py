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

from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing, nullcontext
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from anyio.abc import ObjectSendStream

from connector import logs
from connector.errors import OciApiError, TransportError
from connector.pages import PageError, WorkItem, parse_one

if TYPE_CHECKING:
    from connector.oci.client import OciClient
    from connector.oci.endpoints import Endpoints

log = logs.get_logger("connector.oci.search")

QUERY = "query image resources"
PAGE_SIZE = 1000
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
    ) -> None:
        self._client = client
        self._endpoints = endpoints
        self.scope = frozenset(items)
        self.query, self.exact = query_for(filters)
        """``exact``: whether the query expressed every ListImages filter, so that an image
        Search knew and a listing did not return was deleted since (not filtered out)."""
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
        body = orjson.dumps({"type": "Structured", "query": self.query})

        async def hand(item: WorkItem) -> None:
            if send is not None and item in share and item not in handed:
                handed.add(item)
                await send.send(item)

        try:
            async with send or nullcontext():
                try:
                    await self._search(region, body, hand)
                except (OciApiError, TransportError) as exc:
                    if self._client.aborted is not None:
                        raise self._client.aborted from None
                    self.unsearched.add(region)
                    log.warning(
                        "search.failed",
                        region=region,
                        status=getattr(exc, "status", None),
                        code=getattr(exc, "code", None),
                        reason=str(exc),
                        hint=exc.hint or "",
                    )
                    for item in sorted(share):
                        if item.region == region:
                            await hand(item)
        finally:
            self.done.add(region)

    async def _search(
        self, region: str, body: bytes, hand: Callable[[WorkItem], Awaitable[None]]
    ) -> None:
        """One region's paged search: the custom image ids of each compartment in scope."""
        url = f"{self._endpoints.search(region)}/resources"
        images = pages = 0
        compartments: set[WorkItem] = set()
        params = {"limit": PAGE_SIZE}
        parsed: dict[str, Any] = {}

        def validate(raw: bytes) -> None:
            # The page is parsed once: to check it (a body cut short is asked for again), and
            # that parse is the one read below.
            parsed["body"], parsed["items"] = raw, _collection(raw)

        paginate = self._client.paginate(url, params, body=body, validate=validate, region=region)
        async with aclosing(paginate) as paged:
            async for page in paged:
                pages += 1
                raw = page.response.body
                found = parsed["items"] if parsed.get("body") is raw else _collection(raw)
                for compartment, ids in _by_compartment(found).items():
                    item = WorkItem(region, compartment)
                    if item in self.scope:
                        lines = "\n".join(ids).encode("utf-8", "surrogatepass") + b"\n"
                        self.known.setdefault(item, bytearray()).extend(lines)
                        compartments.add(item)
                        images += len(ids)
                        await hand(item)
        log.info(
            "search.found",
            region=region,
            compartments=len(compartments),
            images=images,
            pages=pages,
        )


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


def _by_compartment(summaries: list[Any]) -> dict[str, list[str]]:
    """A page's image ids by compartment, in the order they came. Per compartment rather than
    per summary, the work per page that does not parse: a region's search can name hundreds of
    thousands of images, and a work item, a scope test and a hand-over per summary took the
    connector about as much CPU as parsing the pages (S6 at full size)."""
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
