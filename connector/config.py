"""Configuration: TOML plus ``--set section.key=value`` overrides, validated before any request.

Every key is declared once in ``KEYS`` with its default and its check. Validation is complete
and happens before the first network call: a bad value raises ``ConfigError`` naming the key
and the reason, and the command exits 2.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connector.errors import ConfigError

OCID = re.compile(
    r"^ocid1\.([a-z0-9]+)\.([a-z0-9-]+)\.([a-z0-9-]*)(\.[a-z0-9-]+)?\.([a-z0-9]{1,255})$"
)
REGION = re.compile(r"^[a-z]{2,}-[a-z]+-\d+$")
IMAGE_LIFECYCLE = ("PROVISIONING", "IMPORTING", "AVAILABLE", "EXPORTING", "DISABLED", "DELETED")
SORT_BY = ("TIMECREATED", "NAME", "DISPLAYNAME")

Check = Callable[[str, Any], Any]


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its default and the check that returns its validated value."""

    default: Any
    check: Check
    help: str


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


def _integer(low: int, high: int) -> Check:
    def check(key: str, value: Any) -> int:
        number = _type(int, "an integer")(key, value)
        if not low <= number <= high:
            raise ConfigError(key, f"must be from {low} to {high}, got {number}")
        return int(number)

    return check


def worker_processes(settings: Settings) -> int:
    """``fetch.workers`` as a number: ``auto`` is one per core, at most 4, none on one core."""
    value = settings["fetch.workers"]
    if value != "auto":
        return int(value)
    if not hasattr(os, "fork"):  # workers are forked (see connector.spawn)
        return 0
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return min(4, cores) if cores > 1 else 0


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
    items = _type(list, "a list of region names")(key, value)
    if items == ["subscribed"]:
        return ("subscribed",)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not REGION.match(item):
            raise ConfigError(
                f"{key}[{i}]",
                f'{item!r} is not a region name like us-ashburn-1 (or use ["subscribed"])',
            )
    if len(set(items)) != len(items):
        raise ConfigError(key, "lists the same region twice")
    return tuple(items)


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
    from connector.safety import check_output_uri

    return check_output_uri(_type(str, "a path or URI")(key, value), key)


def _existing_file(key: str, value: Any) -> str:
    text = _type(str, "a file path")(key, value)
    if text and not Path(text).expanduser().is_file():
        raise ConfigError(key, f"{text} does not exist or is not a file")
    return str(text)


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


def _suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(
            word.upper(), [o.upper() for o in options], n=1, cutoff=0.6
        )
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- the keys ---------------------------------------------------------------------------------

KEYS: dict[str, dict[str, Key]] = {
    "oci": {
        "config_file": Key("", _string(), "OCI CLI config file; default OCI_CONFIG_FILE or ~/.oci/config"),
        "profile": Key("", _string(), "profile in it; default OCI_CLI_PROFILE or DEFAULT"),
        "auth": Key("api_key", _choice("api_key", "security_token", "instance_principal", "resource_principal"), "how requests are signed"),
        "regions": Key((), _regions, '[] = the profile\'s region; ["subscribed"] = every READY subscription'),
        "endpoint": Key("", _endpoint, "Compute endpoint override; {region} is substituted"),
        "identity_endpoint": Key("", _endpoint, "Identity endpoint override; defaults to endpoint"),
        "ca_bundle": Key("", _existing_file, "PEM bundle for appliances with their own CA"),
        "allow_insecure_http": Key(False, _boolean, "allow plain http:// to non-loopback hosts"),
    },
    "scope": {
        "tenancy": Key("", _ocid_or_empty("tenancy"), "tenancy OCID; default the profile's"),
        "compartments": Key((), _ocid_list("compartment", "tenancy"), "explicit compartments; if set, no discovery"),
        "discover": Key(True, _boolean, "list the tenancy's ACTIVE accessible compartments and the root"),
        "exclude": Key((), _ocid_list("compartment", "tenancy"), "compartments to leave out (with their subtrees)"),
    },
    "filters": {
        "display_name": Key("", _string(1, 255), "exact display name"),
        "lifecycle_state": Key("", _choice(*IMAGE_LIFECYCLE, case_insensitive=True, allow_empty=True), "lifecycle state"),
        "operating_system": Key("", _string(1, 255), "operating system, e.g. Oracle Linux"),
        "operating_system_version": Key("", _string(1, 255), "operating system version, e.g. 9"),
        "shape": Key("", _string(1, 255), "images compatible with this shape"),
        "sort_by": Key("", _choice(*SORT_BY, case_insensitive=True, allow_empty=True), "TIMECREATED or NAME"),
        "sort_order": Key("", _choice("ASC", "DESC", case_insensitive=True, allow_empty=True), "ASC or DESC"),
    },
    "fetch": {
        "concurrency": Key(16, _integer(1, 256), "requests in flight"),
        "page_size": Key(1000, _integer(1, 1000), "ListImages limit"),
        "max_attempts": Key(8, _integer(1, 50), "attempts per request"),
        "request_timeout_s": Key(60.0, _number(0.0, 3600.0, low_open=True), "per request"),
        "max_requests_per_second": Key(0.0, _number(0.0, 10000.0), "client-side cap; 0 = none (still adapts to 429)"),
        "platform_images": Key("once", _choice("once", "every", "skip"), "once per region, every listing, or skip"),
        "workers": Key("auto", _workers, "processes converting and writing pages; 0 = a thread in this process; auto = one per core, at most 4"),
        "max_pages_per_listing": Key(10_000, _integer(1, 10_000_000), "a listing with more pages fails (endless pagination)"),
        "max_response_bytes": Key(64 * 1024 * 1024, _integer(1024, 1 << 40), "a response larger on the wire fails its listing"),
        "max_decompressed_bytes": Key(128 * 1024 * 1024, _integer(1024, 1 << 40), "a response larger once decoded (gzip) fails its listing"),
        "run_deadline_s": Key(6 * 3600.0, _number(0.0, 30 * 86400.0), "the run fails past this many seconds; 0 = no deadline"),
        "worker_heartbeat_s": Key(60.0, _number(1.0, 86400.0), "a worker process silent this long while it has work fails the run"),
    },
    "output": {
        "uri": Key("out", _output_uri, "local directory or fsspec URI"),
        "format": Key("parquet", _choice("parquet", "ndjson"), "parquet or ndjson"),
        "compression": Key("", _choice("zstd", "snappy", "gzip", "none", allow_empty=True), "parquet: zstd|snappy|gzip|none; ndjson: gzip|none"),
        "snapshot_date": Key("", _snapshot_date, "YYYY-MM-DD; default today (UTC)"),
        "allow_partial": Key(False, _boolean, "publish even if some compartments failed"),
        "min_complete_ratio": Key(0.9, _number(0.0, 1.0), "a partial run with fewer listings complete than this fails (nothing published)"),
    },
}  # fmt: skip

FILTER_PARAMS = {
    "display_name": "displayName",
    "lifecycle_state": "lifecycleState",
    "operating_system": "operatingSystem",
    "operating_system_version": "operatingSystemVersion",
    "shape": "shape",
    "sort_by": "sortBy",
    "sort_order": "sortOrder",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """A validated configuration: ``values[section][key]``."""

    values: dict[str, dict[str, Any]]
    source: Path | None = None
    explicit: frozenset[str] = field(default_factory=frozenset)

    def __getitem__(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return self.values[section][key]

    def filters(self) -> dict[str, str]:
        """Non-empty filters as ListImages query parameters (camelCase)."""
        return {FILTER_PARAMS[k]: v for k, v in self.values["filters"].items() if v != ""}

    @property
    def compression(self) -> str:
        """The effective compression: the format's default when none was set."""
        chosen: str = self["output.compression"]
        if chosen:
            return chosen
        return "zstd" if self["output.format"] == "parquet" else "none"

    @property
    def snapshot_date(self) -> str:
        """The effective snapshot date: the configured one or today in UTC."""
        chosen: str = self["output.snapshot_date"]
        return chosen or datetime.now(UTC).date().isoformat()


def parse_override(text: str) -> tuple[str, str, Any]:
    """``section.key=value``: the value is TOML when it parses as TOML, else a plain string."""
    dotted, sep, raw = text.partition("=")
    if not sep or "." not in dotted:
        raise ConfigError("--set", f"expected section.key=value, got {text!r}")
    section, key = (part.strip() for part in dotted.split(".", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def load(path: str | Path | None, overrides: Sequence[str] = ()) -> Settings:
    """Read, merge and validate; raises ``ConfigError`` for the first problem found."""
    raw: dict[str, Any] = {}
    source = None
    if path is not None:
        source = Path(path).expanduser()
        try:
            raw = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"{source} does not exist") from None
        except OSError as exc:
            raise ConfigError("--config", f"{source} cannot be read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{source} is not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError("--config", f"{source} is not UTF-8 text") from None
    for text in overrides:
        section, key, value = parse_override(text)
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table")
        table[key] = value
    return validate(raw, source)


def validate(raw: dict[str, Any], source: Path | None = None) -> Settings:
    """Check every section and key; fill in defaults."""
    values: dict[str, dict[str, Any]] = {}
    explicit = set()
    for section, table in raw.items():
        if section not in KEYS:
            raise ConfigError(section, f"unknown section{_suggest(section, list(KEYS))}")
        if not isinstance(table, dict):
            raise ConfigError(section, "must be a table of keys")
        for key in table:
            if key not in KEYS[section]:
                hint = _suggest(key, list(KEYS[section]))
                raise ConfigError(f"{section}.{key}", f"unknown key{hint}")
            explicit.add(f"{section}.{key}")
    for section, keys in KEYS.items():
        table = raw.get(section, {})
        values[section] = {
            key: spec.check(f"{section}.{key}", table[key]) if key in table else spec.default
            for key, spec in keys.items()
        }
    settings = Settings(values, source, frozenset(explicit))
    _cross_checks(settings)
    return settings


def _cross_checks(settings: Settings) -> None:
    fmt, compression = settings["output.format"], settings["output.compression"]
    if compression and compression not in (
        ("zstd", "snappy", "gzip", "none") if fmt == "parquet" else ("gzip", "none")
    ):
        raise ConfigError(
            "output.compression", f"{compression!r} does not apply to {fmt}; use gzip or none"
        )
    if (
        settings["scope.compartments"]
        and "scope.discover" in settings.explicit
        and settings["scope.discover"]
    ):
        raise ConfigError(
            "scope.discover", "cannot be true when scope.compartments lists compartments"
        )
    if not settings["scope.compartments"] and not settings["scope.discover"]:
        raise ConfigError(
            "scope.compartments", "is empty and scope.discover is false: nothing to export"
        )
    for key in ("oci.endpoint", "oci.identity_endpoint"):
        url = settings[key]
        if url.startswith("http://") and not settings["oci.allow_insecure_http"]:
            from connector.client import is_loopback

            host = urlsplit(url.replace("{region}", "region")).hostname or ""
            if not is_loopback(host):
                raise ConfigError(
                    key,
                    "plain http:// is allowed only to loopback hosts; set oci.allow_insecure_http = true to override",
                )
