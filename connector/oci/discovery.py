"""What to export: regions, compartments, and the endpoints that serve them.

``discover`` asks the service which listings a run has; ``shard_items`` and ``donor_regions``
divide them among shards without another request, so that ``plan`` and every ``run --shard``
agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector import logs, names
from connector.errors import ConfigError, ConnectorError, OciApiError
from connector.oci import (
    compartments,
    regions,
    search,
)
from connector.oci.endpoints import Endpoints
from connector.pages import WorkItem, parse, parse_each, parse_one

if TYPE_CHECKING:
    import pyarrow as pa

    from connector.config import Settings
    from connector.oci.auth import Credentials
    from connector.oci.client import OciClient

log = logs.get_logger("connector.oci.discovery")


async def subscribed_regions(
    client: OciClient, endpoints: Endpoints, home: str, tenancy: str
) -> list[str]:
    """The tenancy's READY region subscriptions."""
    url = f"{endpoints.identity(home)}/tenancies/{tenancy}/regionSubscriptions"
    # An answer that is whole JSON but not an array fails at once (``PageError.whole``).
    response = await client.get(url, None, region=home, validate=parse)
    subscriptions = [s for s in parse(response.body) if isinstance(s, dict)]
    # A region name becomes a folder name (region=...): one that is not a region is refused.
    ready = sorted(
        names.check_region(s.get("regionName")) for s in subscriptions if s.get("status") == "READY"
    )
    skipped = [s for s in subscriptions if s.get("status") != "READY"]
    log.info(
        "discovery.regions", regions=ready, skipped=[str(s.get("regionName")) for s in skipped]
    )
    for subscription in skipped:
        # Why, in words: a region the user expected and does not find in the output.
        status = str(subscription.get("status") or "unknown")
        log.info(
            "discovery.region_skipped",
            region=str(subscription.get("regionName")),
            subscription=status,
            reason=f"its subscription is {status}, not READY: OCI serves no requests there "
            "until the subscription is ready; the next run after that exports it",
        )
    return ready


@dataclass(slots=True)
class Skipped:
    """Compartment records discovery could not use (``compartments.usable``), counted for the
    manifest; each one is warned about once."""

    count: int = 0

    def record(self, reason: str, region: str, **where: Any) -> None:
        """Count one, with its warning."""
        self.count += 1
        log.warning("discovery.compartment_skipped", reason=reason, region=region, **where)


async def discover_compartments(
    client: OciClient,
    endpoints: Endpoints,
    region: str,
    tenancy: str,
    exclude: Sequence[str],
    records: list[dict[str, Any]] | None = None,
    skipped: Skipped | None = None,
) -> list[str]:
    """The root plus every ACTIVE compartment the caller can access, minus excluded subtrees;
    ``records``, when given, receives every compartment record listed. A record without a
    usable id, or holding text that is not Unicode, is left out alone (counted in
    ``skipped``); its page and the run go on."""
    skipped = skipped if skipped is not None else Skipped()
    parents: dict[str, str] = {}
    params = {
        "compartmentId": tenancy,
        "compartmentIdInSubtree": True,
        "accessLevel": "ACCESSIBLE",
        "lifecycleState": "ACTIVE",
        "limit": 1000,
    }
    url = f"{endpoints.identity(region)}/compartments"
    async with aclosing(client.paginate(url, params, region=region, validate=parse_each)) as pages:
        async for paged in pages:
            items, unreadable = parse_each(paged.response.body)
            for _ in range(unreadable):
                skipped.record(
                    "the record holds text that is not Unicode", region, page=paged.number
                )
            for raw in items:
                item = compartments.usable(raw)
                if item is None:
                    skipped.record(compartments.describe_unusable(raw), region, page=paged.number)
                    continue
                if records is not None:
                    records.append(item)
                if (
                    item.get("lifecycleState") == "ACTIVE"
                    and item.get("isAccessible", True) is not False
                ):
                    parents[item["id"]] = item.get("compartmentId") or tenancy
    found = [tenancy, *sorted(parents)]
    kept = without_subtrees(found, parents, exclude)
    log.info("discovery.compartments", found=len(found), excluded=len(found) - len(kept))
    return kept


def without_subtrees(
    compartments: Sequence[str], parents: Mapping[str, str], exclude: Sequence[str]
) -> list[str]:
    """``compartments`` without those in ``exclude`` and their descendants (``parents`` maps
    each compartment to its parent; the walk up is bounded, so a cycle cannot hang it)."""
    excluded = set(exclude)

    def is_excluded(compartment: str) -> bool:
        hops = 0
        while compartment in parents and hops < 64:
            if compartment in excluded:
                return True
            compartment, hops = parents[compartment], hops + 1
        return compartment in excluded

    return [c for c in compartments if not is_excluded(c)]


def shard_items(items: Sequence[WorkItem], index: int, count: int) -> list[WorkItem]:
    """Shard ``index`` of ``count``: every count-th item of the sorted work list.

    Round-robin over a sorted list balances counts and keeps each region spread over all
    shards; it is deterministic, so ``plan`` and each ``run --shard`` agree.
    """
    if not 0 <= index < count:
        raise ConfigError("--shard", f"shard {index}/{count} is out of range")
    return sorted(items)[index::count]


async def discover(
    client: OciClient, settings: Settings, credentials: Credentials
) -> list[WorkItem]:
    """Every (region, compartment) listing of the run, sorted."""
    return (await discover_run(client, settings, credentials)).items


@dataclass(frozen=True, slots=True)
class Discovery:
    """What discovery found: the run's listings and the compartment tree they come from."""

    items: list[WorkItem]
    tree: compartments.Tree | None
    """Identity's compartment records (None when the tenancy is unknown)."""
    reasons: dict[str, str]
    """Why each compartment of ``tree`` that is not exported was left out."""
    skipped: int = 0
    """Compartment records Identity returned that could not be used (no usable id, text that
    is not Unicode): left out, each with a warning; the manifest counts them."""
    guide: search.Searching | None = None
    """With ``fetch.strategy = "search"``: Resource Search (``items`` stay every listing in
    scope, so that shards divide them as in ``list`` mode)."""

    def listings(self, index: int, count: int) -> list[WorkItem]:
        """The listings shard ``index`` of ``count`` makes, as far as Search has gone (before
        a run's search: the platform listings; ``plan`` completes it first). Shards divide
        ``items`` as ``shard_items`` does, whatever Search says, so that shards which searched a
        moment apart still agree; Search only leaves out the listings it found no image in."""
        mine = shard_items(self.items, index, count)
        guide = self.guide
        return mine if guide is None else [item for item in mine if guide.keeps(item)]

    def search_for(
        self, index: int, count: int
    ) -> tuple[search.Searching, frozenset[WorkItem]] | None:
        """The search to run beside shard ``index`` of ``count``'s listings, and its share."""
        if self.guide is None:
            return None
        return self.guide, frozenset(shard_items(self.items, index, count))

    def compartments(self, run_id: str) -> pa.Table | None:
        """The ``compartments`` dataset's rows: every compartment of the tree, exported or not
        (and why); None when the tree is unknown. The snapshot date is the folder's name."""
        if self.tree is None:
            return None
        exported = frozenset(item.compartment_id for item in self.items)
        return compartments.table(self.tree, exported, self.reasons, run_id=run_id)


async def discover_run(
    client: OciClient, settings: Settings, credentials: Credentials
) -> Discovery:
    """Every (region, compartment) listing of the run, sorted, and the compartment tree."""
    names = settings.oci.regions
    home = credentials.home_region or (names[0] if names and names != ("subscribed",) else None)
    if home is None:
        raise ConnectorError("no region: set oci.regions or a region in the OCI profile")
    home = regions.canonical(home)
    tenancy = settings.scope.tenancy or credentials.tenancy
    endpoints = Endpoints.from_settings(settings.oci, home)

    def require_tenancy() -> str:
        if not tenancy:
            raise ConnectorError("no tenancy: set scope.tenancy (the profile has none)")
        return tenancy

    if names == ("subscribed",):
        names = tuple(await subscribed_regions(client, endpoints, home, require_tenancy()))
    elif not names:
        names = (home,)
    excluded = settings.scope.exclude
    records: list[dict[str, Any]] = []
    skipped = Skipped()
    if settings.scope.compartments:
        listed = [c for c in settings.scope.compartments if c not in excluded]
        if tenancy:
            records = await fetch_compartments(
                client, endpoints, home, tenancy, settings.scope.compartments, skipped
            )
    else:
        root = require_tenancy()
        listed = await discover_compartments(
            client, endpoints, home, root, excluded, records, skipped
        )
        if not settings.scope.include_root:
            # A least-privilege principal may read the compartments below the root and not
            # the root itself: the tree is listed from the root, its own images are not.
            listed = [c for c in listed if c != root]
    items = sorted(WorkItem(r, c) for r in names for c in listed)
    guide = None
    if settings.fetch.strategy == "search":
        filters = settings.filters.query_params(settings.oci.flavor)
        platform = settings.fetch.platform_images
        guide = search.Searching(client, endpoints, items, filters, platform)
    if not tenancy:
        return Discovery(items, None, {}, skipped.count, guide)
    tree = compartments.Tree.of(tenancy, records)
    reasons = {
        c: reason
        for c in tree.records
        if (
            reason := compartments.exclusion_reason(
                tree, c, frozenset(excluded), settings.scope.include_root
            )
        )
    }
    return Discovery(items, tree, reasons, skipped.count, guide)


async def fetch_compartments(
    client: OciClient,
    endpoints: Endpoints,
    region: str,
    tenancy: str,
    wanted: Sequence[str],
    skipped: Skipped | None = None,
) -> list[dict[str, Any]]:
    """GetCompartment for explicitly listed compartments and their ancestors (for paths).

    One that cannot be read (no policy, deleted) is left out, with a warning: the dataset
    then names it by its OCID; the export itself does not depend on it. So is one whose record
    cannot be used (``compartments.usable``), counted in ``skipped``.
    """
    skipped = skipped if skipped is not None else Skipped()
    found: dict[str, dict[str, Any]] = {}
    pending = [c for c in wanted if c != tenancy]
    while pending:
        batch, pending = pending, []
        for compartment_id in batch:
            if compartment_id in found:
                continue
            url = f"{endpoints.identity(region)}/compartments/{compartment_id}"
            try:
                response = await client.get(url, None, region=region, validate=parse_one)
            except OciApiError as exc:
                log.warning(
                    "discovery.compartment_unreadable",
                    compartment_id=compartment_id,
                    status=exc.status,
                    code=exc.code,
                )
                continue
            raw = parse_one(response.body)
            record = compartments.usable(raw)
            if record is None:
                reason = (
                    "the record holds text that is not Unicode"
                    if raw is None
                    else compartments.describe_unusable(raw)
                )
                skipped.record(reason, region, compartment_id=compartment_id)
                continue
            found[compartment_id] = record
            parent = record.get("compartmentId")
            if parent and parent != tenancy and parent not in found and len(found) < 10_000:
                pending.append(parent)
    return list(found.values())


def donor_regions(items: Sequence[WorkItem], index: int, count: int) -> frozenset[str]:
    """The regions whose platform images shard ``index`` of ``count`` contributes under
    ``fetch.platform_images = once``: those whose first listing it holds (within the shard, the
    first complete listing donates them)."""
    firsts: dict[str, WorkItem] = {}
    for item in sorted(items):
        firsts.setdefault(item.region, item)
    mine = set(shard_items(items, index, count))
    return frozenset(region for region, item in firsts.items() if item in mine)
