"""Checks for configuration values: each takes the key's name and its raw value (from TOML,
``values`` or ``--set``) and returns the value to keep, or raises ``ConfigError`` naming the key
and saying what would be accepted. ``connector.config`` declares which key gets which check.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connector.errors import ConfigError

OCID = re.compile(
    r"^ocid1\.([a-z0-9]+)\.([a-z0-9-]+)\.([a-z0-9-]*)(\.[a-z0-9-]+)?\.([a-z0-9]{1,255})$"
)
REGION = re.compile(r"^[a-z]{2,}-[a-z]+-\d+$")

Check = Callable[[str, Any], Any]
"""Validates one key's raw value and returns the value to keep."""


def of_type(expected: type | tuple[type, ...], name: str) -> Check:
    def check(key: str, value: Any) -> Any:
        if isinstance(value, bool) and bool not in (
            expected if isinstance(expected, tuple) else (expected,)
        ):
            raise ConfigError(key, f"must be {name}, not a boolean")
        if not isinstance(value, expected):
            raise ConfigError(key, f"must be {name}, got {type(value).__name__} {value!r}")
        return value

    return check


def string(min_length: int = 0, max_length: int = 4096) -> Check:
    def check(key: str, value: Any) -> str:
        text = of_type(str, "a string")(key, value)
        if text and not min_length <= len(text) <= max_length:
            raise ConfigError(key, f"must be {min_length} to {max_length} characters long")
        return str(text)

    return check


def choice(*allowed: str, case_insensitive: bool = False, allow_empty: bool = False) -> Check:
    def check(key: str, value: Any) -> str:
        text = of_type(str, "a string")(key, value)
        if allow_empty and text == "":
            return ""
        candidate = text.upper() if case_insensitive else text
        if candidate not in allowed:
            hint = suggest(text, allowed)
            raise ConfigError(key, f"must be one of {', '.join(allowed)}; got {text!r}{hint}")
        return str(candidate)

    return check


def integer(low: int, high: int) -> Check:
    def check(key: str, value: Any) -> int:
        number = of_type(int, "an integer")(key, value)
        if not low <= number <= high:
            raise ConfigError(key, f"must be from {low} to {high}, got {number}")
        return int(number)

    return check


def workers(key: str, value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        raise ConfigError(key, f"must be auto or an integer from 0 to 64, got {value!r}")
    count: int = integer(0, 64)(key, value)
    return count


def number(low: float, high: float, *, low_open: bool = False) -> Check:
    def check(key: str, value: Any) -> float:
        number = of_type((int, float), "a number")(key, value)
        if number < low or number > high or (low_open and number == low):
            bound = f"more than {low:g}" if low_open else f"at least {low:g}"
            raise ConfigError(key, f"must be {bound} and at most {high:g}, got {number}")
        return float(number)

    return check


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _ocid(key: str, value: Any, kinds: Sequence[str]) -> str:
    text = of_type(str, "an OCID string")(key, value)
    match = OCID.match(text)
    if match is None or match.group(1) not in kinds:
        raise ConfigError(key, f"{text!r} is not an OCID of a {' or '.join(kinds)}")
    return str(text)


def ocid_or_empty(*kinds: str) -> Check:
    def check(key: str, value: Any) -> str:
        return "" if value == "" else _ocid(key, value, kinds)

    return check


def ocid_list(*kinds: str) -> Check:
    def check(key: str, value: Any) -> tuple[str, ...]:
        items = of_type(list, "a list")(key, value)
        result = tuple(_ocid(f"{key}[{i}]", item, kinds) for i, item in enumerate(items))
        if len(set(result)) != len(result):
            raise ConfigError(key, "lists the same OCID twice")
        return result

    return check


def regions(key: str, value: Any) -> tuple[str, ...]:
    items = of_type(list, "a list of region names")(key, value)
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


def endpoint(key: str, value: Any) -> str:
    text = of_type(str, "a URL")(key, value)
    if text == "":
        return ""
    parts = urlsplit(text.replace("{region}", "region"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"must be an http(s) URL, optionally with {{region}}; got {text!r}")
    if parts.query or parts.fragment:
        raise ConfigError(key, "must not have a query or fragment")
    return str(text).rstrip("/")


def existing_file(key: str, value: Any) -> str:
    text = of_type(str, "a file path")(key, value)
    if text and not Path(text).expanduser().is_file():
        raise ConfigError(key, f"{text} does not exist or is not a file")
    return str(text)


def snapshot_date(key: str, value: Any) -> str:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    text = of_type(str, "a date YYYY-MM-DD")(key, value)
    if text == "":
        return ""
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise ConfigError(key, f"must be a date YYYY-MM-DD, got {text!r}") from None


def suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(
            word.upper(), [o.upper() for o in options], n=1, cutoff=0.6
        )
    return f" (did you mean {close[0]!r}?)" if close else ""


def table(key: str, value: Any) -> dict[str, str | int | float | bool]:
    """A TOML table of scalars (options handed to a library as they are, e.g. storage options)."""
    table = of_type(dict, "a table of keys and values")(key, value)
    for name, item in table.items():
        if not isinstance(item, str | int | float | bool):
            raise ConfigError(
                f"{key}.{name}", f"must be a string, number or boolean, got {type(item).__name__}"
            )
    return dict(table)
