"""The base URLs of Compute, Identity and Resource Search in each region: configured
templates, or each region's public endpoints in its realm."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from connector import flavors
from connector.errors import ConfigError
from connector.oci import regions

if TYPE_CHECKING:
    from connector.config import OciSettings

API_VERSION = "/20160918"
SEARCH_API_VERSION = "/20180409"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Base URLs of Compute, Identity and Resource Search, per region.

    A template (``oci.endpoint``, ``oci.identity_endpoint``, ``oci.search_endpoint``) has
    ``{region}`` substituted; an empty one means the region's public endpoint in its realm
    (``connector.oci.regions``). Regions newer than the table, learnt from the tenancy's
    subscriptions, take the home region's realm.
    """

    compute_template: str
    identity_template: str
    home: str | None = None
    search_template: str = ""
    catalog: regions.Catalog = field(default_factory=regions.Catalog.load, compare=False)
    _resolved: dict[str, regions.Region] = field(default_factory=dict, compare=False)

    @classmethod
    def from_settings(cls, oci: OciSettings, home: str | None = None) -> Endpoints:
        """The configured overrides, else each region's public endpoints.

        Identity defaults to ``oci.endpoint``, or where the flavor puts it beside Compute (on a
        Private Cloud Appliance reached at ``https://iaas.<domain>``: ``https://identity.<domain>``);
        Resource Search defaults to ``oci.endpoint``.
        """
        identity = oci.identity_endpoint or flavors.named(oci.flavor).identity_endpoint(
            oci.endpoint
        )
        return cls(oci.endpoint, identity, home, oci.search_endpoint or oci.endpoint)

    def compute(self, region: str) -> str:
        """Compute's base URL in ``region``."""
        if self.compute_template:
            return self.compute_template.replace("{region}", region) + API_VERSION
        return self._region(region).endpoint("compute") + API_VERSION

    def identity(self, region: str) -> str:
        """Identity's base URL in ``region``."""
        if self.identity_template:
            return self.identity_template.replace("{region}", region) + API_VERSION
        return self._region(region).endpoint("identity") + API_VERSION

    def search(self, region: str) -> str:
        """Resource Search's base URL in ``region``."""
        if self.search_template:
            return self.search_template.replace("{region}", region) + SEARCH_API_VERSION
        return self._region(region).endpoint("query") + SEARCH_API_VERSION

    def _region(self, name: str) -> regions.Region:
        if name not in self._resolved:
            fallback = ""
            if self.home is not None:
                try:
                    fallback = self.catalog.resolve(self.home).domain
                except regions.UnknownRegion:
                    fallback = ""
            try:
                self._resolved[name] = self.catalog.resolve(name, fallback_domain=fallback)
            except regions.UnknownRegion as exc:
                raise ConfigError("oci.regions", str(exc)) from None
        return self._resolved[name]
