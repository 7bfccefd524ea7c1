"""Resource Search: which compartments hold custom images, so that ListImages runs only there.

``fetch.strategy = "search"``. In most tenancies a few shared compartments hold the custom
images, and a listing anywhere else returns only the region's 100-200 platform images, which the
connector then drops. One structured query per region (``query image resources``, paged by
1,000) names every compartment that holds custom images; the run lists those, plus, per region,
the one listing that brings the platform images (the region's first compartment in scope, the
same listing that donates them in ``list`` mode), and nothing else.

Search's index lags: an image created a moment ago may not be in it yet, one deleted may still
be. Each listing's custom image ids are compared with Search's (``Guide.known``): the manifest
reports, per region, the images the listings returned that Search did not know, and those it
knew that the listings did not return. What this cannot see: an image created in a compartment
that holds no other custom image, before the index has it, is missed until a later run.

Search answers with what the principal may inspect, as ListImages does; a region where it fails
(after the client's retries) is listed in full, with a warning, rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson

from connector import logs
from connector.errors import OciApiError, TransportError
from connector.pages import PageError, WorkItem, parse_one

if TYPE_CHECKING:
    from connector.oci.client import OciClient
    from connector.oci.discovery import Endpoints

log = logs.get_logger("connector.oci.search")

QUERY = "query image resources"
PAGE_SIZE = 1000
EXPRESSED = {"displayName": "displayName", "lifecycleState": "lifecycleState"}
"""ListImages filters that Search's query language expresses, by their query parameter."""
NOT_FILTERS = frozenset({"sortBy", "sortOrder"})


@dataclass(frozen=True, slots=True)
class Guide:
    """What Search found for a run: the listings it calls for, and what to compare them with."""

    known: Mapping[WorkItem, frozenset[str]]
    """Each listing in scope where Search found custom images: their ids."""
    platform: frozenset[WorkItem]
    """The listing per region that brings its platform images (``platform_images = once``)."""
    unsearched: frozenset[str]
    """Regions where Search failed: every compartment in scope is listed there."""
    exact: bool
    """Whether the query expressed every ListImages filter, so that an image Search knew and
    a listing did not return was deleted since (not merely filtered out)."""

    def keeps(self, item: WorkItem) -> bool:
        """Whether the run lists ``item``."""
        return item in self.known or item in self.platform or item.region in self.unsearched


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


async def guide(
    client: OciClient,
    endpoints: Endpoints,
    items: Sequence[WorkItem],
    filters: Mapping[str, str],
    platform_images: str,
) -> Guide:
    """Search each region of ``items`` (at once) and decide which listings the run makes."""
    scope = frozenset(items)
    text, exact = query_for(filters)
    body = orjson.dumps({"type": "Structured", "query": text})
    known: dict[WorkItem, set[str]] = {}
    unsearched: set[str] = set()

    async def one(region: str) -> None:
        try:
            found = await _search(client, endpoints, region, body, scope)
        except (OciApiError, TransportError) as exc:
            if client.aborted is not None:
                raise client.aborted from None
            unsearched.add(region)
            log.warning(
                "search.failed",
                region=region,
                status=getattr(exc, "status", None),
                code=getattr(exc, "code", None),
                reason=str(exc),
                hint=exc.hint or "",
            )
            return
        known.update(found)

    regions = sorted({item.region for item in items})
    async with anyio.create_task_group() as group:
        for region in regions:
            group.start_soon(one, region)
    platform: set[WorkItem] = set()
    if platform_images == "once":
        firsts: dict[str, WorkItem] = {}
        for item in sorted(items):
            firsts.setdefault(item.region, item)
        platform = set(firsts.values())
    return Guide(
        {item: frozenset(ids) for item, ids in known.items()},
        frozenset(platform),
        frozenset(unsearched),
        exact,
    )


async def _search(
    client: OciClient, endpoints: Endpoints, region: str, body: bytes, scope: frozenset[WorkItem]
) -> dict[WorkItem, set[str]]:
    """One region's paged search: the custom image ids of each compartment in ``scope``."""
    url = f"{endpoints.search(region)}/resources"
    found: dict[WorkItem, set[str]] = {}
    images = pages = 0
    params = {"limit": PAGE_SIZE}
    async with aclosing(
        client.paginate(url, params, body=body, validate=_collection, region=region)
    ) as paged:
        async for page in paged:
            pages += 1
            for summary in _collection(page.response.body):
                if not isinstance(summary, dict) or summary.get("resourceType") != "Image":
                    continue
                compartment, image = summary.get("compartmentId"), summary.get("identifier")
                if not (isinstance(compartment, str) and isinstance(image, str)):
                    continue
                item = WorkItem(region, compartment)
                if item in scope:
                    found.setdefault(item, set()).add(image)
                    images += 1
    log.info("search.found", region=region, compartments=len(found), images=images, pages=pages)
    return found


def _collection(body: bytes) -> list[Any]:
    """The summaries of a ``ResourceSummaryCollection``; ``PageError`` for anything else (a
    body cut short is retried, whole JSON of another shape is not)."""
    document = parse_one(body)
    items = document.get("items") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise PageError("the answer is not a ResourceSummaryCollection", whole=True)
    return items
