"""Resource Search's structured query language, the subset the emulator serves for images.

OCI's Search service (``POST /20180409/resources``) takes a query such as::

    query image resources return allAdditionalFields
        where compartmentId = 'ocid1.compartment...' && lifecycleState = 'AVAILABLE'
        sorted by timeCreated desc

Keywords, resource types and attribute names are case-insensitive, values are quoted with
single or double quotes, ``&&`` binds tighter than ``||`` and parentheses group. The emulator
serves images only: ``query all resources`` and ``query image resources`` return them, a query
for other types returns none (the tenancy holds none the emulator knows). What it does not
understand (an attribute images do not have, an operator it lacks, a free-text search) is a
400 ``InvalidParameter``, as the service answers a query it cannot parse, never a silent
empty result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from connector.emulator.data import Image

FIELDS: dict[str, str] = {
    name.lower(): name
    for name in ("compartmentId", "displayName", "lifecycleState", "timeCreated", "identifier")
}
"""The summary attributes a condition or a sort may name, by their lower-case spelling."""
SORTABLE = ("displayName", "timeCreated")
OPERATORS = ("=", "!=", "=~", "!=~", ">", ">=", "<", "<=")

_TOKEN = re.compile(
    r"""\s*(?:(?P<string>'[^']*'|"[^"]*")"""
    r"""|(?P<op>&&|\|\||!=~|=~|!=|>=|<=|=|>|<|\(|\)|,)"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"""
)

Predicate = Callable[[Mapping[str, Any]], bool]


class QueryError(ValueError):
    """A query the language does not allow: the service's 400 InvalidParameter."""


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed structured query."""

    images: bool
    """Whether the query asks for image resources (``image`` or ``all``)."""
    all_fields: bool
    """``return allAdditionalFields``: summaries carry ``additionalDetails``."""
    where: Predicate | None
    sort: tuple[str, bool] | None
    """(attribute, descending), or None for the service's own order."""
    window: Window | None = None
    """When ``where`` is a range of ``timeCreated`` and (``rest``) other conditions: that
    range, so that an index can select by time without reading each summary."""
    rest: Predicate | None = None


Window = tuple[int | None, int | None]
"""Times from (inclusive) and until (exclusive), in microseconds since the epoch (None: open);
a summary's time is read at its precision, milliseconds (``summary_micros``)."""


@dataclass(frozen=True, slots=True)
class _Clause:
    """A parsed condition: its predicate and, when it is a range of ``timeCreated`` and
    (``rest``) other conditions, that range."""

    predicate: Predicate
    window: Window | None = None
    rest: Predicate | None = None


def parse(text: str) -> Query:
    """The query ``text`` stands for; ``QueryError`` naming what is wrong otherwise."""
    tokens = _tokens(text)
    reader = _Reader(tokens)
    reader.keyword("query")
    types = [reader.word("a resource type").lower()]
    while reader.accept_op(","):
        types.append(reader.word("a resource type").lower())
    reader.keyword("resources")
    all_fields = False
    if reader.accept_keyword("return"):
        returned = [reader.word("a field to return")]
        while reader.accept_op(","):
            returned.append(reader.word("a field to return"))
        all_fields = any(name.lower() == "alladditionalfields" for name in returned)
    clause = _or(reader) if reader.accept_keyword("where") else None
    sort = None
    if reader.accept_keyword("sorted"):
        reader.keyword("by")
        field = _field(reader.word("an attribute to sort by"))
        if field not in SORTABLE:
            raise QueryError(f"cannot sort by {field}; sort by {' or '.join(SORTABLE)}")
        descending = False
        if reader.accept_keyword("desc"):
            descending = True
        else:
            reader.accept_keyword("asc")
        sort = (field, descending)
    if not reader.done:
        raise QueryError(f"unexpected {reader.peek_text()!r}")
    if clause is None:
        return Query("image" in types or "all" in types, all_fields, None, sort)
    return Query(
        "image" in types or "all" in types,
        all_fields,
        clause.predicate,
        sort,
        clause.window,
        clause.rest,
    )


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise QueryError(f"cannot read the query at {text[position:][:20]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Reader:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self._tokens = tokens
        self._at = 0

    @property
    def done(self) -> bool:
        return self._at >= len(self._tokens)

    def peek(self) -> tuple[str, str] | None:
        return self._tokens[self._at] if not self.done else None

    def peek_text(self) -> str:
        token = self.peek()
        return token[1] if token else "the end"

    def take(self, wanted: str) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise QueryError(f"expected {wanted}, found the end of the query")
        self._at += 1
        return token

    def word(self, wanted: str) -> str:
        kind, value = self.take(wanted)
        if kind != "word":
            raise QueryError(f"expected {wanted}, found {value!r}")
        return value

    def keyword(self, name: str) -> None:
        if not self.accept_keyword(name):
            raise QueryError(f"expected {name!r}, found {self.peek_text()!r}")

    def accept_keyword(self, name: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].lower() == name:
            self._at += 1
            return True
        return False

    def accept_op(self, op: str) -> bool:
        token = self.peek()
        if token == ("op", op):
            self._at += 1
            return True
        return False


def _or(reader: _Reader) -> _Clause:
    parts = [_and(reader)]
    while reader.accept_op("||"):
        parts.append(_and(reader))
    if len(parts) == 1:
        return parts[0]
    predicates = [part.predicate for part in parts]
    return _Clause(lambda summary: any(part(summary) for part in predicates))


def _and(reader: _Reader) -> _Clause:
    parts = [_atom(reader)]
    while reader.accept_op("&&"):
        parts.append(_atom(reader))
    if len(parts) == 1:
        return parts[0]
    predicates = [part.predicate for part in parts]
    predicate: Predicate = lambda summary: all(part(summary) for part in predicates)  # noqa: E731
    windows = [part.window for part in parts if part.window is not None]
    if not windows:
        return _Clause(predicate)
    starts = [start for start, _ in windows if start is not None]
    ends = [end for _, end in windows if end is not None]
    window = (max(starts) if starts else None, min(ends) if ends else None)
    others = [part.predicate for part in parts if part.window is None]
    others += [part.rest for part in parts if part.window is not None and part.rest is not None]
    if not others:
        return _Clause(predicate, window)
    rest = others[0] if len(others) == 1 else lambda s: all(part(s) for part in others)
    return _Clause(predicate, window, rest)


def _atom(reader: _Reader) -> _Clause:
    if reader.accept_op("("):
        inner = _or(reader)
        if not reader.accept_op(")"):
            raise QueryError(f"expected ')', found {reader.peek_text()!r}")
        return inner
    field = _field(reader.word("an attribute"))
    kind, op = reader.take("an operator")
    if kind != "op" or op not in OPERATORS:
        raise QueryError(f"expected an operator ({' '.join(OPERATORS)}), found {op!r}")
    kind, quoted = reader.take("a quoted value")
    if kind != "string":
        raise QueryError(f"expected a quoted value after {field} {op}, found {quoted!r}")
    predicate = _condition(field, op, quoted[1:-1])
    if field != "timeCreated" or op not in _WINDOWS:
        return _Clause(predicate)
    return _Clause(predicate, _WINDOWS[op](_micros(_instant(quoted[1:-1]))))


_WINDOWS: dict[str, Callable[[int], Window]] = {
    ">=": lambda bound: (bound, None),
    ">": lambda bound: (bound + 1, None),
    "<": lambda bound: (None, bound),
    "<=": lambda bound: (None, bound + 1),
}
"""Each time comparison as the window of times it selects (``Window``)."""


def _field(name: str) -> str:
    field = FIELDS.get(name.lower())
    if field is None:
        raise QueryError(
            f"unknown attribute {name!r} for image resources; use {', '.join(FIELDS.values())}"
        )
    return field


def _condition(field: str, op: str, value: str) -> Predicate:
    wanted = value.lower()

    def text(summary: Mapping[str, Any]) -> str:
        found = summary.get(field)
        return found.lower() if isinstance(found, str) else ""

    if op == "=":
        return lambda summary: text(summary) == wanted
    if op == "!=":
        return lambda summary: text(summary) != wanted
    if op == "=~":
        return lambda summary: wanted in text(summary)
    if op == "!=~":
        return lambda summary: wanted not in text(summary)
    if field != "timeCreated":
        raise QueryError(f"{op} compares times: it applies to timeCreated, not {field}")
    bound = _instant(value)
    compare: dict[str, Callable[[str, str], bool]] = {
        ">": str.__gt__,
        ">=": str.__ge__,
        "<": str.__lt__,
        "<=": str.__le__,
    }
    return lambda summary: compare[op](_instant(str(summary.get(field) or "")), bound)


_SUMMARY_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
"""How a summary's ``timeCreated`` reads (the service's: UTC, milliseconds)."""


def _instant(value: str) -> str:
    """A time, comparable as text: ``YYYY-MM-DDTHH:MM:SS.ffffff`` (a date alone is midnight).

    A summary's own time is read by a shorter path: a search split in ranges of
    ``timeCreated`` compares every image of a region once per range."""
    if len(value) == 24 and _SUMMARY_TIME.fullmatch(value):
        return value[:23] + "000"
    match = re.fullmatch(
        r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d{1,9}))?)?(Z|[+-]00:00)?",
        value.strip(),
    )
    if match is None:
        raise QueryError(f"{value!r} is not a time (YYYY-MM-DDTHH:MM:SSZ, in UTC)")
    day, clock, fraction, _ = match.groups()
    clock = clock or "00:00:00"
    if len(clock) == 5:
        clock += ":00"
    return f"{day}T{clock}.{(fraction or '')[:6].ljust(6, '0')}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(instant: str) -> int:
    """Microseconds since the epoch of an ``_instant``."""
    moment = datetime.fromisoformat(instant).replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def summary_micros(image: Image) -> int:
    """The image's time as its summary gives it (milliseconds), in microseconds: what a
    ``Window`` compares."""
    return image.created_us // 1000 * 1000


def summary(image: Image, all_fields: bool = False) -> dict[str, Any] | None:
    """The ``ResourceSummary`` Search returns for a custom image (None for a record without a
    usable id, which the index would not hold). Times are the service's: UTC, milliseconds."""
    record = image.record()
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return None
    created = _EPOCH + timedelta(microseconds=image.created_us)
    tags = record.get("definedTags")
    found: dict[str, Any] = {
        "resourceType": "Image",
        "identifier": record["id"],
        "compartmentId": record.get("compartmentId"),
        "timeCreated": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "displayName": record.get("displayName"),
        "availabilityDomain": None,
        "lifecycleState": record.get("lifecycleState"),
        "freeformTags": record.get("freeformTags") or {},
        "definedTags": tags if isinstance(tags, dict) else {},
        "systemTags": {},
        "searchContext": None,
        "identityContext": {},
        "additionalDetails": {},
    }
    if all_fields:
        found["additionalDetails"] = {
            key: record.get(key)
            for key in ("operatingSystem", "operatingSystemVersion", "sizeInMBs", "baseImageId")
        }
    return found


def ghost(image_id: str, compartment_id: str) -> dict[str, Any]:
    """An image deleted since the index last saw it: still listed by Search, AVAILABLE."""
    return {
        "resourceType": "Image",
        "identifier": image_id,
        "compartmentId": compartment_id,
        "timeCreated": "2026-01-01T00:00:00.000Z",
        "displayName": "deleted-since-indexed",
        "availabilityDomain": None,
        "lifecycleState": "AVAILABLE",
        "freeformTags": {},
        "definedTags": {},
        "systemTags": {},
        "searchContext": None,
        "identityContext": {},
        "additionalDetails": {},
    }


def encode(summaries: list[dict[str, Any]]) -> bytes:
    """A ``ResourceSummaryCollection``."""
    return orjson.dumps({"items": summaries})


def encode_parts(summaries: list[bytes]) -> bytes:
    """A ``ResourceSummaryCollection`` of summaries encoded one by one: the same bytes as
    ``encode`` of them decoded."""
    return b'{"items":[' + b",".join(summaries) + b"]}"
