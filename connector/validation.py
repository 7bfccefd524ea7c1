"""The checks of a configuration that need more than the configuration, before any request.

``connector.config`` checks every key and how keys go together, and imports nothing above the
base layer. What needs the other layers is checked here:

- ``oci.auth`` (or ``OCI_CLI_AUTH``) against the authentication modes
  (``connector.oci.auth.MODES``);
- ``oci.regions`` against the realm tables and region metadata (``connector.oci.regions``):
  short codes (``iad``) become region names and, without ``oci.endpoint``, every region must
  be known and, on a flavor without public endpoints, be the appliance's domain;
- ``output.uri`` and ``output.storage_options`` against the stores (``connector.lake.storage``),
  ``output.table_format`` against the table libraries (``connector.lake.tables``);
- once the credentials are known, that they and the settings name a region and a tenancy
  (``check_credentials``).

``connector.load_config`` applies ``check`` after ``config.load``, and so the command and the
Airflow operators do; ``run`` and ``plan`` apply it again to the settings they are given, so a
copy made with ``Settings.replace`` is checked too. Each failure is a ``ConfigError`` naming
the key (exit 2).
"""

from __future__ import annotations

import dataclasses

from connector import config, flavors
from connector.config import Settings
from connector.errors import ConfigError
from connector.oci import auth, regions

SUBSCRIBED = ("subscribed",)


def check(settings: Settings) -> Settings:
    """``settings``, checked, with short region codes made region names; ``ConfigError``
    naming the key for the first problem found."""
    auth.mode_of(settings)
    settings = _regions(settings)
    _output(settings.output)
    return settings


def _regions(settings: Settings) -> Settings:
    """Region names (any realm), short codes or appliance domains; known ones, unless
    ``oci.endpoint`` makes each a label and a ``{region}`` substitution. ``oci.region`` (the
    credentials' region) is held to the same."""
    oci = settings.oci
    if oci.regions == SUBSCRIBED and not oci.region:
        return settings
    catalog = regions.Catalog.load()
    region = oci.region
    if region:
        region = _region_name(catalog, "oci.region", region)
        if not oci.endpoint:
            _known(settings, catalog, "oci.region", region)
    names = list(oci.regions)
    if oci.regions != SUBSCRIBED:
        names = [
            _region_name(catalog, f"oci.regions[{i}]", text, ' (or use ["subscribed"])')
            for i, text in enumerate(oci.regions)
        ]
        if len(set(names)) != len(names):
            raise ConfigError("oci.regions", "lists the same region twice")
        if not oci.endpoint:
            for i, name in enumerate(names):
                _known(settings, catalog, f"oci.regions[{i}]", name)
    if tuple(names) == oci.regions and region == oci.region:
        return settings
    changed = dataclasses.replace(oci, regions=tuple(names), region=region)
    return dataclasses.replace(settings, oci=changed)


def _region_name(catalog: regions.Catalog, key: str, text: str, hint: str = "") -> str:
    """``text`` as a region name (a short code made the region's name); ``ConfigError`` naming
    ``key`` when it looks like no region at all."""
    if not (
        regions.REGION_NAME.match(text)
        or regions.SHORT_CODE.match(text)
        or regions.DOMAIN.match(text)
        or text in catalog.short_names
    ):
        raise ConfigError(
            key,
            f"{text!r} is not a region name like us-ashburn-1 or us-gov-ashburn-1, a short "
            f"code like iad, or an appliance domain{hint}",
        )
    return catalog.short_names.get(text, text)


def _known(settings: Settings, catalog: regions.Catalog, key: str, name: str) -> None:
    """Without ``oci.endpoint``, ``name`` must be a region the realm tables know."""
    try:
        resolved = catalog.resolve(name)
    except regions.UnknownRegion as exc:
        raise ConfigError(key, str(exc)) from None
    _require_endpoint(settings, resolved)


def _output(output: config.OutputSettings) -> None:
    # Imported here: the lake's modules bring pyarrow, and only a run needs it loaded early.
    from connector.lake import storage

    storage.check(output.uri, output.storage_options)
    if output.table_format:
        from connector.lake import tables

        tables.check(output.table_format, output.uri, output.catalog)


def check_credentials(settings: Settings, credentials: auth.Credentials) -> None:
    """Fail with ``ConfigError`` unless ``credentials`` and ``settings`` together name a known
    region and, when discovery needs one, a tenancy that is not excluded."""
    names = settings.oci.regions
    if (not names or names == SUBSCRIBED) and not credentials.home_region:
        raise ConfigError("oci.regions", "is empty and the OCI profile names no region")
    needs_tenancy = names == SUBSCRIBED or not settings.scope.compartments
    if needs_tenancy and not (settings.scope.tenancy or credentials.tenancy):
        raise ConfigError("scope.tenancy", "is needed for discovery and the profile has none")
    check_home_region(settings, credentials.home_region, credentials.label or "the credentials")
    tenancy = settings.scope.tenancy or credentials.tenancy
    if tenancy and tenancy in settings.scope.exclude:
        raise ConfigError("scope.exclude", config.EXCLUDES_ROOT)


def check_home_region(settings: Settings, region: str | None, origin: str) -> None:
    """The credentials' region (``origin`` says whose) must be known when no endpoint is set."""
    if region is None or settings.oci.endpoint:
        return
    try:
        resolved = regions.Catalog.load().resolve(region)
    except regions.UnknownRegion as exc:
        raise ConfigError("oci.profile", f"the region of {origin}: {exc}") from None
    _require_endpoint(settings, resolved)


def _require_endpoint(settings: Settings, region: regions.Region) -> None:
    """A flavor without public endpoints is reached at ``oci.endpoint`` or by its domain."""
    flavor = flavors.named(settings.oci.flavor)
    if not flavor.public_endpoints and not region.is_domain:
        raise ConfigError(
            "oci.endpoint",
            f"is empty, and {flavor.platform} has no public endpoint: set it to "
            "https://iaas.<appliance domain> (or name the region by that domain)",
        )
