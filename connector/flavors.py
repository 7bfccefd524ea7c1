"""Flavors: the platforms that serve the Compute API (``oci.flavor``), and how each differs.

Everything that depends on the platform asks its record here rather than comparing its name,
so that another platform is one more record:

- how ListImages' ``sortBy`` by name is spelt: OCI's SDK refuses ``NAME``; a Private Cloud
  Appliance (and Compute Cloud@Customer) answers 400 to ``DISPLAYNAME``;
- whether its regions have public endpoints: an appliance has none, so ``oci.endpoint`` must
  be set, or the region named by the appliance's domain;
- where Identity is when only Compute's endpoint is configured: an appliance reached at
  ``https://iaas.<domain>`` serves Identity at ``https://identity.<domain>``.

This module is in the base layer: the configuration (choices, help) and the OCI side
(endpoints, advice) both read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from connector.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Flavor:
    """One platform's differences from the others."""

    name: str
    """The value of ``oci.flavor``."""
    platform: str
    """What it is, as messages and help name it."""
    label: str
    """The same, short."""
    sort_by_name: str
    """ListImages' ``sortBy`` by name, as this platform spells it."""
    public_endpoints: bool
    """Whether its regions have public endpoints; without, ``oci.endpoint`` is required (or a
    region named by the appliance's domain)."""
    identity_beside_iaas: bool
    """Whether Identity is at ``identity.<domain>`` when Compute is at ``https://iaas.<domain>``."""
    resource_search: bool
    """Whether the platform serves Resource Search (``fetch.strategy = "search"``)."""

    def identity_endpoint(self, endpoint: str) -> str:
        """Identity's endpoint when only Compute's (``endpoint``, ``oci.endpoint``) is given."""
        parts = urlsplit(endpoint)
        if (
            self.identity_beside_iaas
            and parts.scheme == "https"
            and (parts.hostname or "").startswith("iaas.")
        ):
            netloc = parts.netloc.replace("iaas.", "identity.", 1)
            return parts._replace(netloc=netloc).geturl()
        return endpoint


OCI = Flavor(
    name="oci",
    platform="Oracle Cloud Infrastructure",
    label="OCI",
    sort_by_name="DISPLAYNAME",
    public_endpoints=True,
    identity_beside_iaas=False,
    resource_search=True,
)
PCA = Flavor(
    name="pca",
    platform="a Private Cloud Appliance or Compute Cloud@Customer",
    label="a PCA",
    sort_by_name="NAME",
    public_endpoints=False,
    identity_beside_iaas=True,
    resource_search=False,
)

FLAVORS: dict[str, Flavor] = {flavor.name: flavor for flavor in (OCI, PCA)}
"""Every flavor, by name; the first is the default."""

DEFAULT = OCI

SORT_BY_NAME: tuple[str, ...] = tuple(dict.fromkeys(f.sort_by_name for f in FLAVORS.values()))
"""Every spelling of ``sortBy`` by name: each is accepted on any flavor, and sent as the
configured flavor spells it."""


def named(name: str) -> Flavor:
    """The flavor ``name``; ``ConfigError`` on ``oci.flavor`` for one that does not exist."""
    try:
        return FLAVORS[name]
    except KeyError:
        raise ConfigError(
            "oci.flavor", f"must be one of {', '.join(FLAVORS)}; got {name!r}"
        ) from None


def sort_by_spellings() -> str:
    """How each flavor spells ``sortBy`` by name: "DISPLAYNAME on OCI, NAME on a PCA"."""
    return ", ".join(f"{f.sort_by_name} on {f.label}" for f in FLAVORS.values())


def sort_by_advice() -> str:
    """What to check when ListImages refuses a parameter: how each flavor spells ``sortBy`` by
    name, and which flavor to set."""
    choices = "; ".join(
        f'set oci.flavor = "{f.name}" for {f.platform}'
        for f in FLAVORS.values()
        if f is not DEFAULT
    )
    return f"filters.sort_by by name is {sort_by_spellings()}; {choices}"
