"""Configuration: TOML, ``OCI_IMAGES__SECTION__KEY`` environment variables and
``--set section.key=value`` overrides, validated before any request.

Every key is declared once, as a field of its section's dataclass below: its type, default,
check and help text. That declaration drives validation, ``--set``, the typed ``Settings`` the
rest of the code reads (``settings.fetch.page_size``), the README's configuration table and the
comments of ``configs/example.toml`` (``scripts/update_readme.py``). Validation is complete and
happens before the first network call: a bad value raises ``ConfigError`` naming the key and the
reason, and the command exits 2.

Precedence, lowest first: the defaults, the file (then the API's ``values``), the environment
(``OCI_IMAGES__FETCH__CONCURRENCY=8``; ``OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__REGION=x`` for an
entry of a table), ``--set``. A container is configured by its environment alone, with no file
and no secret on its command line (``environment_values``).

This module is in the base layer: it imports nothing from ``connector.oci``, ``connector.lake``,
``connector.sinks`` or ``connector.workers``. The checks that need them (the authentication
mode, regions against the realm tables, the store and the table format) are in
``connector.validation``, which ``connector.load_config`` applies after ``load``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import stat
import textwrap
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from connector import flavors, formats
from connector.errors import ConfigError

OCID = re.compile(
    r"^ocid1\.([a-z0-9]+)\.([a-z0-9-]+)\.([a-z0-9-]*)(\.[a-z0-9-]+)?\.([a-z0-9]{1,255})$"
)
IMAGE_LIFECYCLE = ("PROVISIONING", "IMPORTING", "AVAILABLE", "EXPORTING", "DISABLED", "DELETED")
SORT_BY = ("TIMECREATED", *flavors.SORT_BY_NAME)

Check = Callable[[str, Any], Any]
"""Validates one key's raw value (from TOML or ``--set``) and returns the value to keep."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its default, the check that returns its validated value, the
    help text the README and ``configs/example.toml`` show, and the value that example shows."""

    default: Any
    check: Check
    help: str
    example: Any = None
    """What ``configs/example.toml`` sets, when not the default."""


def key(default: T, check: Check, help: str, *, example: Any = None) -> T:
    """Declare a section field as a configuration key (a dataclass field carrying its ``Key``)."""
    spec = Key(default, check, help, example)
    if isinstance(default, dict):  # a table-valued key: each Settings gets its own copy
        table = dict(default)
        return cast(T, field(default_factory=lambda: dict(table), metadata={"key": spec}))
    return field(default=default, metadata={"key": spec})


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (plain http is allowed only there by default)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# -- checks -----------------------------------------------------------------------------------


def _type(expected: type | tuple[type, ...], name: str) -> Check:
    def check(key: str, value: Any) -> Any:
        if isinstance(value, bool) and bool not in (
            expected if isinstance(expected, tuple) else (expected,)
        ):
            raise ConfigError(key, f"must be {name}, not a boolean")
        if not isinstance(value, expected):
            raise ConfigError(key, f"must be {name}, got {type(value).__name__} {value!r}")
        return value

    return check


def _string(min_length: int = 0, max_length: int = 4096) -> Check:
    def check(key: str, value: Any) -> str:
        text = _type(str, "a string")(key, value)
        if text and not min_length <= len(text) <= max_length:
            raise ConfigError(key, f"must be {min_length} to {max_length} characters long")
        return str(text)

    return check


def _choice(*allowed: str, case_insensitive: bool = False, allow_empty: bool = False) -> Check:
    def check(key: str, value: Any) -> str:
        text = _type(str, "a string")(key, value)
        if allow_empty and text == "":
            return ""
        candidate = text.upper() if case_insensitive else text
        if candidate not in allowed:
            hint = _suggest(text, allowed)
            raise ConfigError(key, f"must be one of {', '.join(allowed)}; got {text!r}{hint}")
        return str(candidate)

    return check


def _alternatives(words: Sequence[str]) -> str:
    """``a, b or c``."""
    return " or ".join(filter(None, (", ".join(words[:-1]), words[-1])))


def _output_format(key: str, value: Any) -> str:
    """A registered output format (``connector.formats``): asked at each check, so that a
    format registered after this module was imported counts."""
    return str(_choice(*(f.name for f in formats.registered()))(key, value))


def _compression(key: str, value: Any) -> str:
    """A compression that some format takes, or "" (the format's default); whether it is one
    the chosen format takes is a cross-check."""
    known = dict.fromkeys(c for f in formats.registered() for c in f.compressions)
    return str(_choice(*known, allow_empty=True)(key, value))


def _compression_help() -> str:
    """What the docs say of ``output.compression``: each built-in format's default and choices."""
    builtin = formats.registered()
    defaults = ", ".join(f"{f.default_compression} for {f.name}" for f in builtin)
    choices = "; ".join(f"{f.name}: {_alternatives(f.compressions)}" for f in builtin)
    return f'"" = the format\'s default ({defaults}); {choices}'


def _integer(low: int, high: int) -> Check:
    def check(key: str, value: Any) -> int:
        number = _type(int, "an integer")(key, value)
        if not low <= number <= high:
            raise ConfigError(key, f"must be from {low} to {high}, got {number}")
        return int(number)

    return check


def _workers(key: str, value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        raise ConfigError(key, f"must be auto or an integer from 0 to 64, got {value!r}")
    count: int = _integer(0, 64)(key, value)
    return count


def _number(low: float, high: float, *, low_open: bool = False) -> Check:
    def check(key: str, value: Any) -> float:
        number = _type((int, float), "a number")(key, value)
        if not math.isfinite(number):
            # Every comparison with NaN is false: a NaN floor or deadline would switch its
            # check off silently rather than fail a range test.
            raise ConfigError(key, f"must be a finite number, got {number}")
        if number < low or number > high or (low_open and number == low):
            bound = f"more than {low:g}" if low_open else f"at least {low:g}"
            raise ConfigError(key, f"must be {bound} and at most {high:g}, got {number}")
        return float(number)

    return check


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _ocid(key: str, value: Any, kinds: Sequence[str]) -> str:
    text = _type(str, "an OCID string")(key, value)
    match = OCID.match(text)
    if match is None or match.group(1) not in kinds:
        raise ConfigError(key, f"{text!r} is not an OCID of a {' or '.join(kinds)}")
    return str(text)


def _ocid_or_empty(*kinds: str) -> Check:
    def check(key: str, value: Any) -> str:
        return "" if value == "" else _ocid(key, value, kinds)

    return check


def _ocid_list(*kinds: str) -> Check:
    def check(key: str, value: Any) -> tuple[str, ...]:
        items = _type(list, "a list")(key, value)
        result = tuple(_ocid(f"{key}[{i}]", item, kinds) for i, item in enumerate(items))
        if len(set(result)) != len(result):
            raise ConfigError(key, "lists the same OCID twice")
        return result

    return check


def _regions(key: str, value: Any) -> tuple[str, ...]:
    """A list of region names, short codes or appliance domains, in lower case.

    What each names is checked against the realm tables by ``connector.validation``, which
    also makes short codes (``iad``) full names: with an ``oci.endpoint`` override, a region is
    only a label and a ``{region}`` substitution.
    """
    items = _type(list, "a list of region names")(key, value)
    for i, item in enumerate(items):
        _type(str, "a region name")(f"{key}[{i}]", item)
    return tuple(item.strip().lower() for item in items)


def _region(key: str, value: Any) -> str:
    """One region name, short code or appliance domain, in lower case, or "" (checked against
    the realm tables by ``connector.validation``, as ``oci.regions``)."""
    return str(_type(str, "a region name")(key, value)).strip().lower()


def _endpoint(key: str, value: Any) -> str:
    text = _type(str, "a URL")(key, value)
    if text == "":
        return ""
    parts = urlsplit(text.replace("{region}", "region"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"must be an http(s) URL, optionally with {{region}}; got {text!r}")
    if parts.query or parts.fragment:
        raise ConfigError(key, "must not have a query or fragment")
    return str(text).rstrip("/")


def _output_uri(key: str, value: Any) -> str:
    from connector.names import check_output_uri

    return check_output_uri(_type(str, "a path or URI")(key, value), key)


def _existing_file(key: str, value: Any) -> str:
    text = _type(str, "a file path")(key, value)
    if text and not Path(text).expanduser().is_file():
        raise ConfigError(key, f"{text} does not exist or is not a file")
    return str(text)


def _textfile(key: str, value: Any) -> str:
    """A file path whose folder exists and can be written: the file itself is replaced at the
    end of every run, so a folder that is missing or read-only would otherwise be found out
    only after the export."""
    text = _type(str, "a file path")(key, value)
    if not text:
        return ""
    path = Path(text).expanduser()
    if path.is_dir():
        raise ConfigError(key, f"{text} is a folder; name a file in it, such as oci_images.prom")
    folder = path.parent
    if not folder.is_dir():
        raise ConfigError(key, f"the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(key, f"the folder {folder} cannot be written")
    return str(path)


def _http_url(key: str, value: Any) -> str:
    text = _type(str, "a URL")(key, value)
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"must be an http(s) URL, got {_without_userinfo(text)!r}")
    if parts.query or parts.fragment:
        raise ConfigError(key, "must not have a query or fragment")
    return str(text).rstrip("/")


def _without_userinfo(url: str) -> str:
    """``url`` without a user name and password, for a message."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _snapshot_date(key: str, value: Any) -> str:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    text = _type(str, "a date YYYY-MM-DD")(key, value)
    if text == "":
        return ""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise ConfigError(key, f"must be a date YYYY-MM-DD, got {text!r}") from None


def date_argument(key: str, value: Any) -> str:
    """A snapshot date given to a command or the API (``--from``): YYYY-MM-DD, required."""
    if value == "":
        raise ConfigError(key, "must be a date YYYY-MM-DD, got nothing")
    return _snapshot_date(key, value)


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(
            word.upper(), [o.upper() for o in options], n=1, cutoff=0.6
        )
    return f" (did you mean {close[0]!r}?)" if close else ""


def _table(key: str, value: Any) -> dict[str, str | int | float | bool]:
    """A TOML table of scalars (options handed to a library as they are, e.g. storage options)."""
    table = _type(dict, "a table of keys and values")(key, value)
    for name, item in table.items():
        if not isinstance(item, str | int | float | bool):
            raise ConfigError(
                f"{key}.{name}", f"must be a string, number or boolean, got {type(item).__name__}"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{key}.{name}", f"must be a finite number, got {item}")
    return dict(table)


# -- the keys: one dataclass per section ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OciSettings:
    """[oci]: credentials and endpoints."""

    config_file: str = key(
        "",
        _string(),
        'OCI CLI config file; "" = $OCI_CLI_CONFIG_FILE, $OCI_CONFIG_FILE or ~/.oci/config; none is read when the OCI_CLI_* variables make a profile (see Credentials)',
    )
    profile: str = key("", _string(), 'profile in it; "" = $OCI_CLI_PROFILE or DEFAULT')
    region: str = key(
        "",
        _region,
        "the credentials' region (as the OCI CLI's --region), which oci.regions = [] exports; \"\" = $OCI_CLI_REGION, else the profile's (or the principal's) region",
    )
    auth: str = key(
        "api_key",
        _string(),  # one of connector.oci.auth.MODES, checked by connector.validation
        "api_key, security_token (oci session authenticate), instance_principal or resource_principal (these two need the [oci] extra); when set nowhere, $OCI_CLI_AUTH, else api_key",
    )
    regions: tuple[str, ...] = key(
        (),
        _regions,
        '[]: the profile\'s region; ["subscribed"]: every READY region subscription; or a list of regions of any realm or short codes, e.g. ["us-ashburn-1", "us-gov-ashburn-1", "fra"]',
        example=("subscribed",),
    )
    endpoint: str = key(
        "",
        _endpoint,
        'Compute endpoint override, {region} substituted (without it, oci.regions must name one region), e.g. a Private Cloud Appliance: "https://iaas.pca.example.com"; "" = each region\'s public endpoint, in its realm',
    )
    identity_endpoint: str = key(
        "",
        _endpoint,
        'Identity endpoint override; "" = oci.endpoint when set (with flavor pca and https://iaas.<domain>: https://identity.<domain>), else public OCI',
    )
    search_endpoint: str = key(
        "",
        _endpoint,
        'Resource Search endpoint override (fetch.strategy = "search"), {region} substituted; "" = oci.endpoint when set, else https://query.<region>.oci.<realm domain>',
    )
    ca_bundle: str = key(
        "",
        _existing_file,
        'PEM bundle for appliances with their own CA (only these CAs are trusted); "" = $OCI_CLI_CERT_BUNDLE, $REQUESTS_CA_BUNDLE, $CURL_CA_BUNDLE or the system\'s CAs',
    )
    allow_insecure_http: bool = key(
        False, _boolean, "allow plain http:// to hosts other than loopback"
    )
    flavor: str = key(
        flavors.DEFAULT.name,
        _choice(*flavors.FLAVORS),
        ", or ".join(f"{f.name} ({f.platform})" for f in flavors.FLAVORS.values())
        + ": the API's spelling differences (sortBy, platform images, Identity at "
        "identity.<domain>)",
    )


@dataclass(frozen=True, slots=True)
class ScopeSettings:
    """[scope]: which compartments are listed."""

    tenancy: str = key("", _ocid_or_empty("tenancy"), 'tenancy OCID; "" = the profile\'s tenancy')
    compartments: tuple[str, ...] = key(
        (),
        _ocid_list("compartment", "tenancy"),
        "explicit compartment OCIDs; when set, there is no discovery",
    )
    discover: bool = key(
        True, _boolean, "the root plus ListCompartments(tenancy, subtree, ACCESSIBLE, ACTIVE)"
    )
    include_root: bool = key(
        True,
        _boolean,
        "list images in the root compartment itself (false: only the compartments below it)",
    )
    exclude: tuple[str, ...] = key(
        (),
        _ocid_list("compartment", "tenancy"),
        "compartment OCIDs to leave out (with their subtrees when discovered)",
    )


@dataclass(frozen=True, slots=True)
class FilterSettings:
    """[filters]: ListImages query parameters; "" = no filter."""

    display_name: str = key("", _string(1, 255), "displayName: an exact display name")
    lifecycle_state: str = key(
        "",
        _choice(*IMAGE_LIFECYCLE, case_insensitive=True, allow_empty=True),
        "lifecycleState (case-insensitive): " + ", ".join(IMAGE_LIFECYCLE),
    )
    operating_system: str = key("", _string(1, 255), 'operatingSystem, e.g. "Oracle Linux"')
    operating_system_version: str = key("", _string(1, 255), 'operatingSystemVersion, e.g. "9"')
    shape: str = key(
        "", _string(1, 255), 'shape: only images compatible with it, e.g. "VM.Standard.E5.Flex"'
    )
    sort_by: str = key(
        "",
        _choice(*SORT_BY, case_insensitive=True, allow_empty=True),
        f"sortBy: {', '.join(SORT_BY[:-1])} or {SORT_BY[-1]}; by name is sent as oci.flavor "
        f"spells it ({flavors.sort_by_spellings()})",
    )
    sort_order: str = key(
        "",
        _choice("ASC", "DESC", case_insensitive=True, allow_empty=True),
        "sortOrder: ASC or DESC",
    )

    def query_params(self, flavor: str = flavors.DEFAULT.name) -> dict[str, str]:
        """The filters that are set, as ListImages query parameters (the keys in camelCase),
        with ``sortBy`` by name spelt as ``flavor`` wants it."""
        params = {
            _camel(f.name): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != ""
        }
        if params.get("sortBy") in flavors.SORT_BY_NAME:
            params["sortBy"] = flavors.named(flavor).sort_by_name
        return params


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """[fetch]: requests, and the processes that convert pages."""

    concurrency: int = key(
        16, _integer(1, 256), "requests in flight in this process (adapts down under 429s)"
    )
    page_size: int = key(1000, _integer(1, 1000), "ListImages limit, 1..1000")
    max_attempts: int = key(
        8,
        _integer(1, 50),
        "attempts per request; waits as the OCI SDK's: min(2^(n-1) s + U(0, 1 s), 30 s), none after 600 s",
    )
    request_timeout_s: float = key(60.0, _number(0.0, 3600.0, low_open=True), "seconds per request")
    max_requests_per_second: float = key(
        0.0, _number(0.0, 10000.0), "client-side cap; 0 = none (the rate still adapts to 429s)"
    )
    platform_images: str = key(
        "once",
        _choice("once", "every", "skip"),
        "once per region, every listing, or skip (see Platform images)",
    )
    strategy: str = key(
        "list",
        _choice("list", "search"),
        "list: ListImages in every compartment; search: Resource Search finds the compartments holding custom images, ListImages runs there plus once per region for platform images, and the manifest reports the index's lag (see Resource Search)",
    )
    workers: int | str = key(
        "auto",
        _workers,
        'processes that convert and write pages beside the fetcher: "auto" = one per core (at most 4; none on one core), 0 = a thread in this process. Each writes its own files; a thread writes row groups of 128k rows, n worker processes share a budget of 48k rows held in memory (row groups of 48k / n rows, at least 16k), across all regions',
    )
    max_pages_per_listing: int = key(
        10_000,
        _integer(1, 10_000_000),
        "a listing that still has more pages after this many fails (a service that paginates forever)",
    )
    max_response_bytes: int = key(
        64 * 1024 * 1024,
        _integer(1024, 1 << 40),
        "bytes: a response larger than this on the wire fails its listing (a declared length is refused before reading)",
    )
    max_decompressed_bytes: int = key(
        128 * 1024 * 1024,
        _integer(1024, 1 << 40),
        "bytes: a response larger than this once decoded fails its listing; a gzip bomb is refused after decoding at most this much",
    )
    max_inflight_bytes: int = key(
        256 * 1024 * 1024,
        _integer(1 << 20, 1 << 40),
        "bytes: the decoded responses this process holds at once, across all requests (being read, or waiting for a worker); requests wait for room, and a response that alone needs more fails its listing. Bounds the fetcher's memory whatever the concurrency",
    )
    run_deadline_s: float = key(
        6 * 3600.0,
        _number(0.0, 30 * 86400.0),
        "seconds: past this the run fails (exit 1, nothing published); 0 = no deadline",
    )
    worker_heartbeat_s: float = key(
        60.0,
        _number(1.0, 86400.0),
        "seconds: a worker process that sends nothing (not even its heartbeat) for this long fails the run (a stopped or hung worker)",
    )

    def worker_processes(self) -> int:
        """``workers`` as a number: ``auto`` is one per core, at most 4, none on one core."""
        if self.workers != "auto":
            return int(self.workers)
        if not hasattr(os, "fork"):  # workers are forked (see connector.workers.spawn)
            return 0
        if hasattr(os, "sched_getaffinity"):
            cores = len(os.sched_getaffinity(0))
        else:
            cores = os.cpu_count() or 1
        return min(4, cores) if cores > 1 else 0


@dataclass(frozen=True, slots=True)
class OutputSettings:
    """[output]: where and how the snapshot is written."""

    uri: str = key(
        "out",
        _output_uri,
        'local directory, s3://bucket/prefix (AWS, OCI Object Storage\'s S3 compatibility endpoint, MinIO), oci://bucket@namespace/prefix, gs://bucket/prefix or abfs://container/prefix; not "" nor a root',
        example="/data/lake/oci",
    )
    format: str = key(
        formats.PARQUET.name,
        _output_format,
        _alternatives([f.name for f in formats.registered()]),
    )
    compression: str = key("", _compression, _compression_help(), example="zstd")
    snapshot_date: str = key(
        "",
        _snapshot_date,
        'YYYY-MM-DD; "" = today (UTC); the Airflow integration passes the run date',
    )
    allow_partial: bool = key(
        False, _boolean, "publish even when some compartments failed (the exit code stays 3)"
    )
    min_complete_ratio: float = key(
        0.9,
        _number(0.0, 1.0),
        "the share of listings that must complete for a partial run to be published (with "
        "allow_partial); below it the run fails (exit 1) and nothing is published",
    )
    changes: bool = key(
        False,
        _boolean,
        "also publish the `changes` dataset: images added, removed or changed since the latest complete snapshot before this date",
    )
    table_format: str = key(
        "",
        _choice("delta", "iceberg", allow_empty=True),
        '"" = plain Parquet/NDJSON files; delta or iceberg: a table `images` partitioned by snapshot_date and region, one atomic commit per snapshot date (local directory or s3:// only)',
    )
    keep_days: int = key(
        0,
        _integer(0, 100_000),
        "days of snapshots kept before the run's snapshot date: after a successful commit, "
        "older partitions of every dataset and older _runs/ records are deleted (never the "
        "newest complete snapshot; tables: the dates' rows, by a delete in the table's own "
        "commit); 0 = keep all",
    )
    storage_options: Mapping[str, str | int | float | bool] = key(
        {},
        _table,
        "passed to the store. s3://: endpoint_url, region, profile, access_key_id, secret_access_key, session_token, path_style, anonymous; oci://, gs://, abfs://: the keyword arguments of ocifs, gcsfs, adlfs. {} = the store's usual environment variables and files",
    )
    catalog: Mapping[str, str | int | float | bool] = key(
        {},
        _table,
        'Iceberg catalog: type = "sql" (default: SQLite at {uri}/iceberg_catalog.db; uri = "sqlite:////path/catalog.db", an absolute path, for an object store), "rest" (uri = its URL) or "glue"; namespace (default "oci_images"); other keys are the catalog\'s own properties',
    )

    @property
    def effective_compression(self) -> str:
        """The compression used: the configured one, or the format's default."""
        return self.compression or formats.get(self.format).default_compression

    @property
    def effective_snapshot_date(self) -> str:
        """The snapshot date used: the configured one, or today in UTC."""
        return self.snapshot_date or datetime.now(UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """[metrics]: Prometheus metrics written at the end of every run (extra `prometheus`); OpenTelemetry (extra `otel`) is configured by the standard OTEL_* variables alone."""

    textfile: str = key(
        "",
        _textfile,
        'file the Prometheus text format is written to, atomically, at the end of every run, failed or not (node_exporter\'s textfile collector reads *.prom files, e.g. /var/lib/node_exporter/textfile/oci_images.prom); its folder must exist; "" = none',
    )
    pushgateway: str = key(
        "",
        _http_url,
        'URL of a Prometheus Pushgateway the same metrics are pushed to at the end of every run (job oci_images, grouped by output and stage); a failed push is a warning; "" = none',
    )

    @property
    def enabled(self) -> bool:
        """Whether any Prometheus output is configured."""
        return bool(self.textfile or self.pushgateway)


SECTIONS: dict[str, type[Any]] = {
    "oci": OciSettings,
    "scope": ScopeSettings,
    "filters": FilterSettings,
    "fetch": FetchSettings,
    "output": OutputSettings,
    "metrics": MetricsSettings,
}
"""Each section's name in the TOML file and its dataclass (a field of ``Settings`` too)."""

KEYS: dict[str, dict[str, Key]] = {
    name: {f.name: f.metadata["key"] for f in dataclasses.fields(section)}
    for name, section in SECTIONS.items()
}
"""Every key, by section: derived from the dataclasses, never written by hand."""


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True, slots=True)
class Settings:
    """A validated configuration, one typed, frozen dataclass per section."""

    oci: OciSettings = field(default_factory=OciSettings)
    scope: ScopeSettings = field(default_factory=ScopeSettings)
    filters: FilterSettings = field(default_factory=FilterSettings)
    fetch: FetchSettings = field(default_factory=FetchSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    source: Path | None = None
    """The file the settings were read from, if any."""
    explicit: frozenset[str] = frozenset()
    """The keys (``section.key``) that were set rather than defaulted."""

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``section.key`` values changed, each validated as if it had been set::

        settings.replace(**{"output.snapshot_date": "2026-11-27"})

        The checks that need the other layers (``connector.validation``) run when the copy is
        used: ``connector.run``, ``plan`` and ``api.export`` apply them before any request.
        """
        sections: dict[str, Any] = {name: getattr(self, name) for name in SECTIONS}
        for dotted, value in changes.items():
            section, name = _split(dotted)
            checked = KEYS[section][name].check(dotted, value)
            sections[section] = dataclasses.replace(sections[section], **{name: checked})
        settings = Settings(
            **sections, source=self.source, explicit=self.explicit | frozenset(changes)
        )
        _cross_checks(settings)
        return settings

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Every key's value, by section (TOML- and JSON-safe: lists for tuples)."""
        return {
            name: {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(getattr(self, name)).items()
            }
            for name in SECTIONS
        }


def _split(dotted: str) -> tuple[str, str]:
    section, _, name = dotted.partition(".")
    if section not in KEYS:
        raise ConfigError(section, f"unknown section{_suggest(section, list(KEYS))}")
    if name not in KEYS[section]:
        raise ConfigError(dotted, f"unknown key{_suggest(name, list(KEYS[section]))}")
    return section, name


def worker_processes(settings: Settings) -> int:
    """``fetch.workers`` as a number (see ``FetchSettings.worker_processes``)."""
    return settings.fetch.worker_processes()


_OVERRIDE_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+")
"""``section.key`` or ``section.table.entry`` of a ``--set``."""


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value``: the value is TOML when it parses as TOML, else a plain string.

    A malformed one is refused without repeating it: ``--set`` carries secrets
    (``output.storage_options.secret_access_key=…``), and a mistyped one (``:`` for ``=``) holds
    its value where the key should be. Only the part before ``=`` is named, and only when there
    is one.
    """
    dotted, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(
            "--set", "expected section.key=value, got no '=' (the argument is not repeated)"
        )
    if not _OVERRIDE_KEY.fullmatch(dotted.strip()):
        # Not a key: perhaps ``key:secret=…`` (a base64 secret may hold an "=").
        raise ConfigError(
            "--set",
            "expected section.key=value, where the key is letters, digits, '_' and '-' "
            "joined by '.' (the argument is not repeated)",
        )
    section, key = (part.strip() for part in dotted.split(".", 1))
    return section, key, _toml_or_text(raw)


def _toml_or_text(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


ENV_PREFIX = "OCI_IMAGES__"
"""Every environment variable under this prefix names a key: ``OCI_IMAGES__SECTION__KEY``, or
``OCI_IMAGES__SECTION__KEY__ENTRY`` for one entry of a table-valued key."""

TEXT_KEYS = frozenset(
    f"{name}.{f.name}"
    for name, section in SECTIONS.items()
    for f in dataclasses.fields(section)
    if f.type == "str"
)
"""The keys whose value is a string: the environment gives them as they are (``"true"`` stays a
word, ``"007"`` keeps its zeros); other keys' values are read as TOML."""


def env_name(dotted: str) -> str:
    """The environment variable of ``section.key`` (or ``section.key.entry``)."""
    return ENV_PREFIX + "__".join(dotted.split(".")).upper()


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The keys ``environ`` sets (``OCI_IMAGES__SECTION__KEY``), by dotted name
    (``output.storage_options.region`` for an entry of a table), each value checked as the
    key's own check does, so that a bad one names its variable.

    A string key takes the text as it is; any other key reads it as TOML (``8``, ``true``,
    ``["us-ashburn-1"]``), a bare word being a string, as ``--set`` does. An entry of a table
    (``OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__REGION``) is named in lower case. A variable under
    the prefix that names no key is an error, not ignored: a misspelt one would otherwise leave
    its key at the default without a word.
    """
    found: dict[str, Any] = {}
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        section, name, *entry = [*variable[len(ENV_PREFIX) :].lower().split("__"), ""]
        entry = entry[:-1]  # the "" added so that a variable naming only a section unpacks
        spec = KEYS.get(section, {}).get(name)
        if spec is None:
            raise ConfigError(variable, f"names no configuration key{_suggest_variable(variable)}")
        dotted = f"{section}.{name}"
        if entry and not isinstance(spec.default, dict):
            raise ConfigError(variable, f"{dotted} has no entries: {env_name(dotted)} sets it")
        if len(entry) > 1 or "" in entry:
            raise ConfigError(variable, f"names no entry: the rule is {env_name(dotted)}__ENTRY")
        text = environ[variable]
        if entry:
            value = _toml_or_text(text)
            if not isinstance(value, str | int | float | bool):
                kind = type(value).__name__
                raise ConfigError(variable, f"must be a string, number or boolean, got {kind}")
            found[f"{section}.{name}.{entry[0]}"] = value
            continue
        value = text if dotted in TEXT_KEYS else _toml_or_text(text)
        spec.check(variable, value)
        found[dotted] = value
    return found


def _suggest_variable(variable: str) -> str:
    known = [env_name(f"{section}.{name}") for section, keys in KEYS.items() for name in keys]
    close = difflib.get_close_matches(variable.upper(), known, n=1, cutoff=0.8)
    if close:
        return f" (did you mean {close[0]}?)"
    return f"; the rule is {ENV_PREFIX}SECTION__KEY, e.g. {env_name('fetch.concurrency')}"


CONFIG_MAX_BYTES = 1 << 20
"""A configuration file is a few KB; anything near this is not one."""


def _config_text(source: Path) -> str:
    """The text of a configuration file: a regular file of at most ``CONFIG_MAX_BYTES``.

    A device (``/dev/zero``) would be read forever and fill memory, and a FIFO would wait for
    a writer forever: both are refused from their ``stat``, before anything is read.
    """
    mode = source.stat().st_mode
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a device or a FIFO)"
        raise ConfigError("--config", f"{source} is {kind}")
    with source.open("rb") as handle:
        data = handle.read(CONFIG_MAX_BYTES + 1)
    if len(data) > CONFIG_MAX_BYTES:
        raise ConfigError("--config", f"{source} is larger than {CONFIG_MAX_BYTES} bytes")
    return data.decode("utf-8")


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    values: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read ``path`` (TOML), merge ``values`` (sections of keys) over it, then the environment
    (``OCI_IMAGES__SECTION__KEY``; ``environ``, by default ``os.environ``; ``{}`` for none),
    then ``overrides`` (``section.key=value``), and validate; raises ``ConfigError`` for the
    first problem found.

    ``--set section.table.name=value`` sets one entry of a table-valued key, and so does
    ``OCI_IMAGES__SECTION__TABLE__NAME``; a whole table set later replaces the entries before.
    """
    raw: dict[str, Any] = {}
    source = None
    if path is not None:
        source = Path(path).expanduser()
        try:
            raw = tomllib.loads(_config_text(source))
        except FileNotFoundError:
            raise ConfigError("--config", f"{source} does not exist") from None
        except OSError as exc:
            raise ConfigError("--config", f"{source} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{source} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError("--config", f"{source} is not UTF-8 text") from None
    for section, given in (values or {}).items():
        if not isinstance(given, Mapping):
            raise ConfigError(section, "must be a table of keys")
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table")
        table.update(given)
    for dotted, value in environment_values(os.environ if environ is None else environ).items():
        section, name, *table_entry = dotted.split(".")
        if table_entry:
            _merge(raw, section, name, {table_entry[0]: value}, entry=True)
        else:
            _merge(raw, section, name, value)
    for text in overrides:
        section, key, value = parse_override(text)
        name, _, entry = key.partition(".")
        spec = KEYS.get(section, {}).get(name)
        if entry and spec is not None and isinstance(spec.default, dict):
            _merge(raw, section, name, {entry: value}, entry=True)
            continue
        _merge(raw, section, key, value)
    return validate(raw, source)


def _merge(
    raw: dict[str, Any], section: str, name: str, value: Any, *, entry: bool = False
) -> None:
    """Set ``section.name`` in ``raw``; with ``entry``, ``value``'s entries join the table's."""
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(section, "must be a table")
    if not entry:
        table[name] = value
        return
    nested = table.setdefault(name, {})
    if not isinstance(nested, dict):
        raise ConfigError(f"{section}.{name}", "must be a table")
    nested.update(value)


def validate(raw: Mapping[str, Any], source: Path | None = None) -> Settings:
    """Check every section and key; fill in defaults."""
    explicit = set()
    for section, table in raw.items():
        if section not in KEYS:
            raise ConfigError(section, f"unknown section{_suggest(section, list(KEYS))}")
        if not isinstance(table, Mapping):
            raise ConfigError(section, "must be a table of keys")
        for key in table:
            if key not in KEYS[section]:
                hint = _suggest(key, list(KEYS[section]))
                raise ConfigError(f"{section}.{key}", f"unknown key{hint}")
            explicit.add(f"{section}.{key}")
    sections = {}
    for section, keys in KEYS.items():
        table = raw.get(section, {})
        sections[section] = SECTIONS[section](
            **{
                key: spec.check(f"{section}.{key}", table[key])
                for key, spec in keys.items()
                if key in table
            }
        )
    settings = Settings(**sections, source=source, explicit=frozenset(explicit))
    _cross_checks(settings)
    return settings


def _cross_checks(settings: Settings) -> None:
    """How keys go together. What needs more than the configuration (the realm tables, the
    stores, the authentication modes) is checked by ``connector.validation``."""
    output, scope, oci = settings.output, settings.scope, settings.oci
    written_as = formats.get(output.format)
    if output.compression and output.compression not in written_as.compressions:
        raise ConfigError(
            "output.compression",
            f"{output.compression!r} does not apply to {output.format}; "
            f"use {_alternatives(written_as.compressions)}",
        )
    if scope.compartments and "scope.discover" in settings.explicit and scope.discover:
        raise ConfigError(
            "scope.discover", "cannot be true when scope.compartments lists compartments"
        )
    if not scope.compartments and not scope.discover:
        raise ConfigError(
            "scope.compartments", "is empty and scope.discover is false: nothing to export"
        )
    _check_regions(settings)
    if scope.tenancy and scope.tenancy in scope.exclude:
        raise ConfigError("scope.exclude", EXCLUDES_ROOT)
    if output.table_format and output.format != formats.PARQUET.name:
        raise ConfigError(
            "output.format",
            f"{output.table_format} tables store Parquet; leave output.format = parquet",
        )
    if output.catalog and output.table_format != "iceberg":
        raise ConfigError("output.catalog", 'applies to output.table_format = "iceberg" only')
    _check_strategy(settings)
    for name, url in (
        ("oci.endpoint", oci.endpoint),
        ("oci.identity_endpoint", oci.identity_endpoint),
        ("oci.search_endpoint", oci.search_endpoint),
    ):
        if url.startswith("http://") and not oci.allow_insecure_http:
            host = urlsplit(url.replace("{region}", "region")).hostname or ""
            if not is_loopback(host):
                raise ConfigError(
                    name,
                    "plain http:// is allowed only to loopback hosts; set oci.allow_insecure_http = true to override",
                )


EXCLUDES_ROOT = (
    "lists the tenancy, which would leave out every compartment; to skip only the images in "
    "the root compartment itself, set scope.include_root = false"
)


def _check_strategy(settings: Settings) -> None:
    """What ``fetch.strategy = "search"`` cannot work with: platform images in every listing
    (it lists only the compartments holding custom images), and an appliance without Resource
    Search (unless an endpoint for it is given)."""
    fetch, oci = settings.fetch, settings.oci
    if fetch.strategy != "search":
        return
    if fetch.platform_images == "every":
        raise ConfigError(
            "fetch.strategy",
            '"search" lists only the compartments holding custom images, so it cannot put '
            'platform images in every listing: set fetch.platform_images = "once" (or "skip"), '
            'or fetch.strategy = "list"',
        )
    if not flavors.named(oci.flavor).resource_search and not oci.search_endpoint:
        raise ConfigError(
            "fetch.strategy",
            f'"search" needs Resource Search, which a {oci.flavor} appliance does not serve: '
            'set oci.search_endpoint to a Search service that covers it, or fetch.strategy = "list"',
        )


def _check_regions(settings: Settings) -> None:
    """Endpoints that cannot be right: fail before any request rather than mislabel data."""
    oci = settings.oci
    several = oci.regions == ("subscribed",) or len(oci.regions) > 1
    if oci.endpoint and "{region}" not in oci.endpoint and several:
        listed = (
            "every subscribed region"
            if oci.regions == ("subscribed",)
            else (f"{len(oci.regions)} regions")
        )
        raise ConfigError(
            "oci.endpoint",
            f"has no {{region}} but oci.regions asks for {listed}: all would be fetched from one "
            "host and labelled as different regions; put {region} in the URL, or list exactly "
            "one region in oci.regions",
        )


# -- documentation: the README's table and configs/example.toml, from the declarations ---------

EXAMPLE_HEADER = """\
# oci-images-connector: configuration for a real tenancy. Every key is shown with its default
# unless noted; any key can be set by an environment variable, OCI_IMAGES__SECTION__KEY, and
# overridden on the command line: --set section.key=value.
# Validate it without sending a request: a bad value exits 2 and names the key.
# Generated from connector/config.py (`make readme`): edit the help text there.
"""
_COMMENT_COLUMN = 33


def toml_value(value: Any) -> str:
    """``value`` as TOML source."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def markdown_table() -> str:
    """The README's configuration table: every key, its default and its help."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for section, keys in KEYS.items():
        for name, spec in keys.items():
            lines.append(f"| `{section}.{name}` | `{toml_value(spec.default)}` | {spec.help} |")
    return "\n".join(lines)


def example_toml() -> str:
    """``configs/example.toml``: every key, with its help as a comment."""
    out = [EXAMPLE_HEADER]
    for section, keys in KEYS.items():
        about = (SECTIONS[section].__doc__ or "").split(":", 1)[-1].strip().rstrip(".")
        out.append(_commented(f"[{section}]", about))
        for name, spec in keys.items():
            value = spec.default if spec.example is None else spec.example
            note = spec.help
            if spec.example is not None:
                note += f" (default {toml_value(spec.default)})"
            out.append(_commented(f"{name} = {toml_value(value)}", note))
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _commented(code: str, comment: str) -> str:
    parts = textwrap.wrap(comment, 100 - _COMMENT_COLUMN - 2)
    first = code.ljust(_COMMENT_COLUMN - 1) + " " if len(code) < _COMMENT_COLUMN else code + "  "
    lines = [first + "# " + parts[0]]
    lines += [" " * _COMMENT_COLUMN + "# " + part for part in parts[1:]]
    return "\n".join(lines)
