"""What to export: regions, compartments, and the endpoints that serve them.

``discover`` asks the service which listings a run has; ``shard_items`` and ``donor_regions``
divide them among shards without another request, so that ``plan`` and every ``run --shard``
agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import structlog

from connector import safety
from connector.errors import ConfigError, ConnectorError
from connector.pages import WorkItem, parse

if TYPE_CHECKING:
    from connector.auth import Credentials
    from connector.client import OciClient
    from connector.config import Settings

API_VERSION = "/20160918"
log = structlog.get_logger("connector.discovery")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Base URLs of Compute and Identity, per region."""

    compute_template: str
    identity_template: str

    @classmethod
    def from_settings(cls, endpoint: str, identity_endpoint: str) -> Endpoints:
        """The configured overrides, or OCI's public endpoints (realm oc1)."""
        compute = endpoint or "https://iaas.{region}.oraclecloud.com"
        identity = identity_endpoint or endpoint or "https://identity.{region}.oci.oraclecloud.com"
        return cls(compute, identity)

    def compute(self, region: str) -> str:
        """Compute's base URL in ``region``."""
        return self.compute_template.replace("{region}", region) + API_VERSION

    def identity(self, region: str) -> str:
        """Identity's base URL in ``region``."""
        return self.identity_template.replace("{region}", region) + API_VERSION


async def subscribed_regions(
    client: OciClient, endpoints: Endpoints, home: str, tenancy: str
) -> list[str]:
    """The tenancy's READY region subscriptions."""
    url = f"{endpoints.identity(home)}/tenancies/{tenancy}/regionSubscriptions"
    response = await client.get(url, None, region=home, validate=parse)
    subscriptions = orjson.loads(response.body)
    # A region name becomes a folder name (region=...): one that is not a region is refused.
    ready = sorted(
        safety.check_region(s.get("regionName"))
        for s in subscriptions
        if s.get("status") == "READY"
    )
    log.info(
        "discovery.regions",
        regions=ready,
        skipped=[s["regionName"] for s in subscriptions if s.get("status") != "READY"],
    )
    return ready


async def discover_compartments(
    client: OciClient, endpoints: Endpoints, region: str, tenancy: str, exclude: Sequence[str]
) -> list[str]:
    """The root plus every ACTIVE compartment the caller can access, minus excluded subtrees."""
    parents: dict[str, str] = {}
    params = {
        "compartmentId": tenancy,
        "compartmentIdInSubtree": True,
        "accessLevel": "ACCESSIBLE",
        "lifecycleState": "ACTIVE",
        "limit": 1000,
    }
    url = f"{endpoints.identity(region)}/compartments"
    async with aclosing(client.paginate(url, params, region=region, validate=parse)) as pages:
        async for paged in pages:
            for item in parse(paged.response.body):
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
    regions = settings.oci.regions
    home = credentials.home_region or (
        regions[0] if regions and regions != ("subscribed",) else None
    )
    if home is None:
        raise ConnectorError("no region: set oci.regions or a region in the OCI profile")
    tenancy = settings.scope.tenancy or credentials.tenancy
    endpoints = Endpoints.from_settings(settings.oci.endpoint, settings.oci.identity_endpoint)

    def require_tenancy() -> str:
        if not tenancy:
            raise ConnectorError("no tenancy: set scope.tenancy (the profile has none)")
        return tenancy

    if regions == ("subscribed",):
        regions = tuple(await subscribed_regions(client, endpoints, home, require_tenancy()))
    elif not regions:
        regions = (home,)
    excluded = settings.scope.exclude
    if settings.scope.compartments:
        compartments = [c for c in settings.scope.compartments if c not in excluded]
    else:
        compartments = await discover_compartments(
            client, endpoints, home, require_tenancy(), excluded
        )
    return sorted(WorkItem(r, c) for r in regions for c in compartments)


def donor_regions(items: Sequence[WorkItem], index: int, count: int) -> frozenset[str]:
    """The regions whose platform images shard ``index`` of ``count`` contributes under
    ``fetch.platform_images = once``: those whose first listing it holds (within the shard, the
    first complete listing donates them)."""
    firsts: dict[str, WorkItem] = {}
    for item in sorted(items):
        firsts.setdefault(item.region, item)
    mine = set(shard_items(items, index, count))
    return frozenset(region for region, item in firsts.items() if item in mine)
