"""The checks of a configuration that need more than the configuration, before any request.

``connector.config`` checks every key and how keys go together, and imports nothing above the
base layer. What needs the other layers is checked here:

- ``oci.auth`` (or ``OCI_CLI_AUTH``) against the authentication modes
  (``connector.oci.auth.MODES``);
- ``oci.regions`` against the realm tables and region metadata (``connector.oci.regions``):
  short codes (``iad``) become region names and, without ``oci.endpoint``, every region must
  be known and, on a flavor without public endpoints, be the appliance's domain;
- ``metrics.textfile`` and ``metrics.pushgateway`` against the ``prometheus`` extra;
- ``output.uri`` and ``output.storage_options`` against the stores (``connector.lake.storage``),
  ``output.table_format`` against the table libraries (``connector.lake.tables``);
- once the credentials are known, that they and the settings name a region and a tenancy
  (``check_credentials``);
- before a run or a commit writes anything, that ``output.uri`` can be written: an object
  store answers, with the credentials given, within ``OUTPUT_PROBE_S`` seconds
  (``output_store``); a local folder exists or can be created and takes a file
  (``writable``).

``connector.load_config`` applies ``check`` after ``config.load``, and so the command and the
Airflow operators do; ``run`` and ``plan`` apply it again to the settings they are given, so a
copy made with ``Settings.replace`` is checked too. Each failure is a ``ConfigError`` naming
the key (exit 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from connector import config, flavors
from connector.config import Settings
from connector.errors import ConfigError
from connector.oci import auth, regions

if TYPE_CHECKING:
    from connector.lake.storage import Store

SUBSCRIBED = ("subscribed",)
OUTPUT_PROBE_S = 5.0
"""How long an object store has to answer before the run gives up on it, before any request.
A store offline otherwise costs minutes (gcsfs looks for credentials on a metadata server,
then retries with back-off) before a traceback."""


def check(settings: Settings) -> Settings:
    """``settings``, checked, with short region codes made region names; ``ConfigError``
    naming the key for the first problem found."""
    auth.mode_of(settings)
    settings = _regions(settings)
    _output(settings.output)
    _metrics(settings.metrics)
    return settings


def _metrics(metrics: config.MetricsSettings) -> None:
    """``[metrics]`` needs prometheus_client (the ``prometheus`` extra): found out now, not
    after the export."""
    import importlib.util

    for name in ("textfile", "pushgateway"):
        if getattr(metrics, name) and importlib.util.find_spec("prometheus_client") is None:
            raise ConfigError(
                f"metrics.{name}",
                "needs prometheus_client: pip install 'oci-images-connector[prometheus]'",
            )


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


def output_store(output: config.OutputSettings, timeout_s: float = OUTPUT_PROBE_S) -> Store:
    """The store of ``output.uri``, reached: ``ConfigError`` naming ``output.uri`` and the
    reason when it cannot be, before any request to OCI. Nothing is written (``writable``
    writes, once everything else is known to be right).

    An object store must answer a look at the output's prefix (and its bucket, when the prefix
    is new) within ``timeout_s`` seconds, with the credentials given; building its filesystem
    counts, as some libraries look for credentials on the network. When it does not answer,
    the thread asking stays behind, alone, until its library gives up.
    """
    from connector.lake import storage

    if "://" not in output.uri or output.uri.lower().startswith("file://"):
        return storage.resolve(output.uri, output.storage_options)
    answer: list[Store | BaseException] = []

    def look() -> None:
        import pyarrow.fs as pafs

        try:
            store = storage.resolve(output.uri, output.storage_options)
            found = store.fs.get_file_info(store.base).type
            if found == pafs.FileType.File:
                raise ConfigError(storage.URI_KEY, f"{output.uri} is an object, not a prefix")
            bucket = store.base.split("/", 1)[0]
            if found == pafs.FileType.NotFound and bucket != store.base:
                found = store.fs.get_file_info(bucket).type
            if found == pafs.FileType.NotFound:
                raise ConfigError(
                    storage.URI_KEY,
                    f"the bucket {bucket} does not exist, or these credentials cannot see it",
                )
            answer.append(store)
        except BaseException as exc:  # the caller raises it, or says what it was
            answer.append(exc)

    asker = threading.Thread(target=look, name="output-probe", daemon=True)
    asker.start()
    asker.join(timeout_s)
    if not answer:
        raise ConfigError(
            storage.URI_KEY,
            f"the store of {output.uri} did not answer within {timeout_s:g} s: check the "
            "network, a proxy, output.storage_options (endpoint_url) and the credentials",
        )
    [found] = answer
    if isinstance(found, ConfigError):
        raise found
    if isinstance(found, BaseException):
        raise ConfigError(
            storage.URI_KEY, f"the store of {output.uri} refused a look: {_said(found)}"
        ) from None
    return found


def writable(store: Store, *, renames: bool = True) -> None:
    """A local output exists or can be created, is a folder, and takes a file: one is written
    and removed in its ``_staging`` (through the deletion door), as the run is about to; and,
    where the publish renames (plain files, ``renames``), it is one filesystem
    (``one_filesystem``).
    ``ConfigError`` naming ``output.uri`` and the reason else. Object stores: see
    ``output_store``."""
    from connector.lake import door, layout

    if not store.is_local:
        return
    base = Path(store.base)
    key = "output.uri"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(key, f"{base} is a file, not a folder") from None
    except NotADirectoryError:
        raise ConfigError(key, f"{base} cannot be a folder: a part of its path is a file") from None
    except OSError as exc:
        raise ConfigError(key, f"{base} cannot be created: {_said(exc)}") from None
    staging = layout.staging_root(store.base)
    probe = layout.write_probe(store.base, secrets.token_hex(4))
    made_staging = wrote = False
    try:
        try:
            os.mkdir(staging)
            made_staging = True
        except FileExistsError:
            pass
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        wrote = True
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError(key, f"{base} is not writable: {_said(exc)}") from None
    finally:
        # A probe that cannot be removed is left behind rather than hiding why the check failed.
        with contextlib.suppress(OSError):
            if wrote:
                door.guarded_delete(store.fs, store.base, probe)
            if made_staging:
                door.remove_empty_dir(store.fs, store.base, staging)
    if renames:
        one_filesystem(store.base)


def one_filesystem(base: str) -> None:
    """Every folder a publish renames between is on the output's filesystem, or
    ``ConfigError`` naming ``output.uri`` (exit 2), before anything is fetched.

    The publish moves staged partitions from ``_staging`` into each dataset's folder, and the
    replaced ones to ``_trash``, by renames (the swap is one atomic step); a rename cannot
    cross filesystems (EXDEV). A separate mount at ``_staging``, ``_trash``, a dataset's folder
    or one of its partitions would make every run fail at the swap, after all the fetching.
    """
    from connector.lake import layout
    from connector.names import DATASETS

    device = os.stat(base).st_dev
    folders = [layout.staging_root(base), layout.trash_root(base)]
    for dataset in DATASETS:
        root = layout.dataset_root(base, dataset)
        folders.append(root)
        with contextlib.suppress(OSError):
            folders += [entry.path for entry in os.scandir(root) if entry.is_dir()]
    for folder in folders:
        try:
            other = os.stat(folder).st_dev
        except OSError:
            continue  # not there yet: created on the output's filesystem
        if other != device:
            raise ConfigError(
                "output.uri",
                f"{folder} is on another filesystem than {base} (a separate mount): a publish "
                "renames staged files into place, which cannot cross filesystems; mount the "
                "whole output as one filesystem",
            )


def _said(exc: BaseException) -> str:
    """What an OS or store error says, without its class name or a repeated path."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
