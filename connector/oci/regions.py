"""Regions and realms: which host serves Compute and Identity in a region, in every realm.

Names resolve as the official SDK resolves them (``oci.regions``), from a table generated from
it (``_region_table``, ``make regions``), so that the SDK stays out of the runtime dependencies:

1. names are case-insensitive; a short code (``iad``) stands for its region (``us-ashburn-1``);
2. a region in the table takes its realm's second-level domain (``us-langley-1`` is in oc2:
   ``oraclegovcloud.com``; ``eu-frankfurt-2`` is in oc19: ``oraclecloud.eu``);
3. other regions come from ``~/.oci/regions-config.json`` (a JSON array), then from
   ``OCI_REGION_METADATA`` (one JSON object): entries with ``realmKey``,
   ``realmDomainComponent``, ``regionKey`` and ``regionIdentifier``, all non-empty. As in the
   SDK, an entry never overrides what is already known, and the file wins over the variable;
4. a name with a dot is a whole domain: ``pca.example.com`` gives
   ``https://iaas.pca.example.com`` (how profiles for a Private Cloud Appliance name it);
5. a well-formed name still unknown takes the domain in ``OCI_DEFAULT_REALM`` when it is set.

Where the SDK would then fall back to realm oc1, and send credentials of a government realm to a
commercial host that does not serve that region, the connector refuses: ``UnknownRegion`` names
the region and where it looked. Dual-stack hosts (``OCI_DUAL_STACK_ENDPOINT_ENABLED``) and
realm-specific templates (``OCI_REALM_SPECIFIC_SERVICE_ENDPOINT_TEMPLATE_ENABLED``) follow the
SDK too. The SDK's optional lookup in the instance metadata service is off by default there and
is not done here.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from connector.oci import _region_table

REGION_METADATA_ENV = "OCI_REGION_METADATA"
DEFAULT_REALM_ENV = "OCI_DEFAULT_REALM"
DUAL_STACK_ENV = "OCI_DUAL_STACK_ENDPOINT_ENABLED"
REALM_TEMPLATES_ENV = "OCI_REALM_SPECIFIC_SERVICE_ENDPOINT_TEMPLATE_ENABLED"
REGIONS_CONFIG_FILE = "~/.oci/regions-config.json"
METADATA_KEYS = ("realmKey", "realmDomainComponent", "regionKey", "regionIdentifier")

# Region identifiers: area, optional qualifiers (gov, dcc), city, number:
# us-ashburn-1, us-gov-ashburn-1, eu-dcc-milan-1, ap-chiyoda-1.
REGION_NAME = re.compile(r"^[a-z]{2,4}(?:-[a-z]+){1,3}-[0-9]{1,3}$")
# Short codes (regionKey): three letters (iad, fra); region metadata may define other keys,
# which are accepted once defined.
SHORT_CODE = re.compile(r"^[a-z][a-z0-9]{2}$")
# A DNS name of two labels or more: a Private Cloud Appliance's domain as a "region".
DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_OPTION = re.compile(r"{([^}]+)}")
_DUAL_STACK_OPTION = "{dualStack"


class UnknownRegion(ValueError):
    """A region name that no table, file or variable describes."""


@dataclass(frozen=True, slots=True)
class Region:
    """A resolved region: its identifier, realm and second-level domain, and where they came from.

    ``realm`` is None for a domain given as a region and for the ``OCI_DEFAULT_REALM`` fallback.
    """

    name: str
    realm: str | None
    domain: str
    source: str

    @property
    def is_domain(self) -> bool:
        """Whether the name is a whole domain (``pca.example.com``), not a region identifier."""
        return "." in self.name

    def endpoint(self, service: str, environ: Mapping[str, str] | None = None) -> str:
        """The base URL (scheme and host) of ``service`` ("compute", "identity" or "query", Resource
        Search) here."""
        env = os.environ if environ is None else environ
        spec = _SERVICES[service]
        if self.is_domain:
            return spec.domain_template.replace("{domain}", self.name)
        template = spec.template
        if _flag(env, REALM_TEMPLATES_ENV) and self.realm in spec.templates_per_realm:
            template = spec.templates_per_realm[self.realm]
        url = template.replace("{region}", self.name).replace("{secondLevelDomain}", self.domain)
        dual = _flag(env, DUAL_STACK_ENV, default=spec.dual_stack_by_default)
        return _strip_path(_resolve_options(url, dual))


@dataclass(frozen=True, slots=True)
class _Service:
    template: str
    templates_per_realm: dict[str, str]
    dual_stack_by_default: bool
    domain_template: str
    base_path: str


def _service(spec: Mapping[str, Any]) -> _Service:
    return _Service(
        str(spec["template"]),
        {str(k): str(v) for k, v in dict(spec["templates_per_realm"]).items()},
        bool(spec["dual_stack_by_default"]),
        str(spec["domain_template"]),
        str(spec["base_path"]),
    )


_SERVICES = {name: _service(spec) for name, spec in _region_table.SERVICES.items()}
API_VERSION = _SERVICES["compute"].base_path


@dataclass(slots=True)
class Catalog:
    """Every region known here: the SDK's table plus region metadata from the environment.

    ``problems`` lists metadata sources that were present but unusable (shown when a region is
    unknown, since that is usually why).
    """

    short_names: dict[str, str] = field(default_factory=lambda: dict(_region_table.SHORT_NAMES))
    region_realms: dict[str, str] = field(default_factory=lambda: dict(_region_table.REGION_REALMS))
    realms: dict[str, str] = field(default_factory=lambda: dict(_region_table.REALMS))
    sources: dict[str, str] = field(default_factory=dict)
    default_domain: str = ""
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, config_file: str | Path | None = None
    ) -> Catalog:
        """The table, then ``~/.oci/regions-config.json``, then ``OCI_REGION_METADATA``."""
        env = os.environ if environ is None else environ
        catalog = cls()
        path = Path(config_file or REGIONS_CONFIG_FILE).expanduser()
        if path.is_file():
            entries = catalog._read_json(path.read_bytes(), str(path))
            if entries is not None and not isinstance(entries, list):
                catalog.problems.append(f"{path} is not a JSON array")
            for entry in entries if isinstance(entries, list) else ():
                catalog._add(entry, str(path))
        if env.get(REGION_METADATA_ENV):
            entry = catalog._read_json(env[REGION_METADATA_ENV].encode(), REGION_METADATA_ENV)
            if entry is not None:
                catalog._add(entry, REGION_METADATA_ENV)
        catalog.default_domain = env.get(DEFAULT_REALM_ENV, "").strip().lower()
        return catalog

    def _read_json(self, data: bytes, origin: str) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self.problems.append(f"{origin} is not valid JSON ({exc})")
            return None

    def _add(self, entry: Any, origin: str) -> None:
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) and entry[k].strip() for k in METADATA_KEYS
        ):
            self.problems.append(
                f"{origin}: an entry lacks one of {', '.join(METADATA_KEYS)} (non-empty strings)"
            )
            return
        realm, domain, key, region = (entry[k].strip().lower() for k in METADATA_KEYS)
        self.short_names.setdefault(key, region)
        if region not in self.region_realms:
            self.region_realms[region] = realm
            self.sources[region] = origin
        self.realms.setdefault(realm, domain)

    def resolve(self, name: str, *, fallback_domain: str = "") -> Region:
        """The region ``name`` stands for; raises ``UnknownRegion`` with what was tried.

        ``fallback_domain`` serves regions learnt from the service itself (a tenancy's
        subscriptions lie in its home realm), after everything else.
        """
        text = name.strip().lower()
        region = self.short_names.get(text, text)
        if region in self.region_realms:
            realm = self.region_realms[region]
            source = self.sources.get(region, f"the OCI SDK {_region_table.SDK_VERSION} table")
            return Region(region, realm, self.realms[realm], source)
        if "." in region:
            if not DOMAIN.match(region):
                raise UnknownRegion(f"{name!r} is neither a region name nor a domain name")
            return Region(region, None, region, "a domain given as the region")
        if not REGION_NAME.match(region) and not SHORT_CODE.match(region):
            raise UnknownRegion(
                f"{name!r} is not a region name like us-ashburn-1, a short code like iad, "
                "or a domain like pca.example.com"
            )
        if REGION_NAME.match(region):
            if self.default_domain:
                return Region(region, None, self.default_domain, DEFAULT_REALM_ENV)
            if fallback_domain:
                return Region(region, None, fallback_domain, "the home region's realm")
        raise UnknownRegion(self._unknown(name, region))

    def _unknown(self, name: str, region: str) -> str:
        close = difflib.get_close_matches(
            region, [*self.region_realms, *self.short_names], n=1, cutoff=0.75
        )
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        looked = (
            f"the OCI SDK {_region_table.SDK_VERSION} region table, {REGIONS_CONFIG_FILE} "
            f"and {REGION_METADATA_ENV}"
        )
        text = f"{name!r} is not a region known to {looked}{hint}"
        if self.problems:
            text += "; " + "; ".join(self.problems)
        return (
            text + ". For a new or dedicated region, describe it in "
            f"{REGION_METADATA_ENV} or {REGIONS_CONFIG_FILE}, or set oci.endpoint"
        )


def resolve(name: str, *, fallback_domain: str = "") -> Region:
    """Resolve ``name`` against the table and the environment of this process."""
    return Catalog.load().resolve(name, fallback_domain=fallback_domain)


def canonical(name: str) -> str:
    """The region identifier ``name`` stands for (``iad`` → ``us-ashburn-1``), else ``name``."""
    try:
        return Catalog.load().resolve(name).name
    except UnknownRegion:
        return name


def compute_endpoint(region: str | Region) -> str:
    """Compute's base URL in ``region`` (scheme and host, as the SDK's ComputeClient has it)."""
    resolved = region if isinstance(region, Region) else resolve(region)
    return resolved.endpoint("compute")


def identity_endpoint(region: str | Region) -> str:
    """Identity's base URL in ``region`` (as the SDK's IdentityClient has it)."""
    resolved = region if isinstance(region, Region) else resolve(region)
    return resolved.endpoint("identity")


def _flag(environ: Mapping[str, str], name: str, *, default: bool = False) -> bool:
    value = environ.get(name)
    return default if value is None else value.strip().lower() == "true"


def _resolve_options(url: str, dual_stack: bool) -> str:
    """Expand ``{dualStack?on:off}`` blocks as the SDK's base client does (other blocks vanish)."""
    out: list[str] = []
    last = 0
    for match in _OPTION.finditer(url):
        start, end = match.span()
        option = match.group()
        out.append(url[last:start])
        last = end
        if "?" not in option or ":" not in option:
            out.append(option)
            continue
        if _DUAL_STACK_OPTION not in option or re.search(r"\s", option):
            continue
        on = option[option.index("?") + 1 : option.index(":")]
        off = option[option.index(":") + 1 : -1]
        if not all(side == "" or side[0].isalnum() for side in (on, off)):
            continue
        replacement = on if dual_stack else off
        if replacement.startswith(".") and out and out[-1].endswith("."):
            replacement = replacement[1:]
        if replacement.endswith(".") and end < len(url) and url[end] == ".":
            last = end + 1
        out.append(replacement)
    out.append(url[last:])
    return "".join(out)


def _strip_path(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
