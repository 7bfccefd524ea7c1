"""What the fetcher hands the normalizer (listings and their pages), and what it rejects.

These types live apart from ``connector.workers.normalize`` so that the process that only fetches
(when workers convert pages) does not import the normalizer's machinery.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson

from connector.errors import ConnectorError, OciApiError


class PageError(ConnectorError):
    """A page's body is not a JSON array; the listing it belongs to cannot be trusted."""

    def __init__(self, message: str, *, whole: bool = False) -> None:
        super().__init__(message)
        self.whole = whole
        """The body is whole JSON, just not what was asked for (an object where an array
        belongs): asking again would bring the same answer, so it is not retried as a body cut
        short would be."""


@dataclass(frozen=True, slots=True, order=True)
class WorkItem:
    """One listing to fetch: a compartment in a region."""

    region: str
    compartment_id: str


@dataclass(frozen=True, slots=True)
class Page:
    """One ListImages response as fetched: the interface between fetcher and normalizer."""

    body: bytes
    region: str
    compartment_id: str
    number: int
    fetched_at: datetime
    opc_request_id: str | None
    release: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    """Gives the body's bytes back to the fetcher's budget of responses in flight
    (``limits.ResponseBudget``) once the page has left the process; the feeder calls it."""

    def released(self) -> None:
        """The page was handed on (or dropped): its bytes back to the budget."""
        if self.release is not None:
            self.release()

    @property
    def item(self) -> WorkItem:
        """The listing this page belongs to."""
        return WorkItem(self.region, self.compartment_id)


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What every row of a run carries."""

    run_id: str
    snapshot_date: date
    tenancy_id: str | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """A record that could not be converted, with why and where it came from."""

    reason: str
    record: Any
    region: str
    compartment_id: str
    page: int
    opc_request_id: str | None

    def to_json(self) -> bytes:
        """One line of ``_rejects/``."""
        line = {
            "reason": self.reason,
            "region": self.region,
            "compartment_id": self.compartment_id,
            "page": self.page,
            "opc_request_id": self.opc_request_id,
            "record": self.record,
        }
        try:
            return dump_json(line)
        except ValueError as exc:
            # The record cannot be written back (nested too deeply): keep why, not the record.
            line["record"] = None
            line["reason"] = f"{self.reason}; the record itself is not kept: {exc}"
            return dump_json(line)


def parse(body: bytes) -> list[Any]:
    """The records of a page; raises ``PageError`` if the body is not a JSON array."""
    try:
        records = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PageError(f"the page is not valid JSON: {exc}") from None
    if not isinstance(records, list):
        raise PageError(f"the page is a JSON {type(records).__name__}, not an array", whole=True)
    return records


def parse_each(body: bytes) -> tuple[list[Any], int]:
    """The records of a page that can be written back, and how many could not: a record
    holding text that is not Unicode (a lone surrogate, bytes that are not UTF-8) is left out
    alone, not its page. ``PageError`` if the body is not a JSON array (cut short: retried;
    whole JSON of another kind: ``whole``).

    orjson refuses the whole body for one such record; the standard library's parser reads it
    (slower, so only then), and each record is then tried on its own.
    """
    try:
        return parse(body), 0
    except PageError as exc:
        if exc.whole:
            raise
        cause = exc
    try:
        records = json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        raise cause from None
    if not isinstance(records, list):
        raise PageError(f"the page is a JSON {type(records).__name__}, not an array", whole=True)
    kept = [record for record in records if _writable(record)]
    return kept, len(records) - len(kept)


def parse_one(body: bytes) -> Any:
    """A response that holds one record (GetCompartment): the record, or None when it holds
    text that is not Unicode (as ``parse_each`` leaves such a record out). ``PageError`` if the
    body is not whole JSON (cut short: retried)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        cause = PageError(f"the response is not valid JSON: {exc}")
    try:
        record = json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        raise cause from None
    return record if _writable(record) else None


def _writable(record: Any) -> bool:
    """Whether ``record`` can be written as JSON (it holds no lone surrogate)."""
    try:
        orjson.dumps(record)
    except TypeError:  # orjson.JSONEncodeError
        return False
    return True


def dump_json(value: Any) -> bytes:
    """Compact JSON with sorted keys, for any parsed value.

    orjson writes no integer beyond 64 bits; records parsed by orjson never hold one (it reads
    them as floats), but records handed to ``normalize_records`` from elsewhere may.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        pass
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        # orjson parses up to 1,024 levels, more than Python's encoder can write back.
        raise ValueError("the value is nested too deeply to be written as JSON") from None
    return text.encode()


@dataclass(frozen=True, slots=True)
class ListingError:
    """Why a listing failed, as the manifest records it (never a secret: the service's code,
    message and request id, or the connector's error)."""

    status: int | None
    code: str
    message: str
    opc_request_id: str | None
    hint: str = ""
    """The next step the client's troubleshooting names for this error ("" when none)."""

    @classmethod
    def from_exception(
        cls, exc: ConnectorError, *, opc_request_id: str | None = None
    ) -> ListingError:
        """The record of ``exc``; ``opc_request_id`` is the request that produced it, if known."""
        if isinstance(exc, OciApiError):
            return cls(exc.status, exc.code, exc.message, exc.opc_request_id, exc.hint)
        code = "InvalidResponse" if isinstance(exc, PageError) else type(exc).__name__
        request_id = getattr(exc, "opc_request_id", None) or opc_request_id
        return cls(None, code, str(exc), request_id)

    def as_dict(self) -> dict[str, Any]:
        """The error as the manifest writes it."""
        document: dict[str, Any] = {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "opc_request_id": self.opc_request_id,
        }
        if self.hint:
            document["hint"] = self.hint
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ListingError:
        """Read back what ``as_dict`` wrote."""
        return cls(
            data["status"],
            data["code"],
            data["message"],
            data["opc_request_id"],
            str(data.get("hint") or ""),
        )


@dataclass(frozen=True, slots=True)
class ListingEnd:
    """Sent by a fetch task after its last page, or when it gave up."""

    item: WorkItem
    pages: int
    error: ListingError | None


@dataclass(frozen=True, slots=True)
class AllStarted:
    """Sent once, when the last listing has started: what follows are its pages and the ends
    of the listings still under way."""


Message = Page | ListingEnd | AllStarted
"""What flows from the fetch tasks to the workers."""
