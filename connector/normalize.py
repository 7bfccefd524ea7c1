"""JSON pages to Arrow record batches: a pure function, run in a worker thread.

The fast path converts a whole page with pyarrow's C++ converters (``pa.array`` of dicts into
the nested wire type, then flattening by column path); Python touches each record only to find
fields the schema does not know. When a page holds a record that cannot be converted, the page
is converted record by record to find it; that record is rejected with its reason, the rest go
on. Nothing is dropped silently and nothing crashes the run.
"""

from __future__ import annotations

import gc
import json
import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from connector.errors import ConnectorError
from connector.schema import (
    API_COLUMNS,
    COLUMNS,
    IMAGE_WIRE_TYPE,
    KNOWN_FIELDS,
    KNOWN_NESTED,
    SCHEMA,
    UTC_MICROS,
    Column,
)

_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)


class PageError(ConnectorError):
    """A page's body is not a JSON array; the listing it belongs to cannot be trusted."""

    retryable = True


@dataclass(frozen=True, slots=True)
class Page:
    """One ListImages response as fetched: the interface between fetcher and normalizer."""

    body: bytes
    region: str
    compartment_id: str
    number: int
    fetched_at: datetime
    opc_request_id: str | None


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What every row of a run carries."""

    run_id: str
    snapshot_date: date


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
        return orjson.dumps(
            {
                "reason": self.reason,
                "region": self.region,
                "compartment_id": self.compartment_id,
                "page": self.page,
                "opc_request_id": self.opc_request_id,
                "record": self.record,
            },
            default=repr,
        )


@dataclass(frozen=True, slots=True)
class Normalized:
    """A page's rows and its rejects."""

    batch: pa.RecordBatch
    rejects: list[Reject]


def parse(body: bytes) -> list[Any]:
    """The records of a page; raises ``PageError`` if the body is not a JSON array."""
    try:
        records = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson stops at 64-bit integers; the standard library does not. Such a record is
        # then rejected on its own rather than failing the whole listing.
        try:
            records = json.loads(body)
        except ValueError:
            raise PageError(f"the page is not valid JSON: {exc}") from None
    if not isinstance(records, list):
        raise PageError(f"the page is a JSON {type(records).__name__}, not an array")
    return records


def normalize_page(page: Page, run: RunInfo) -> Normalized:
    """Parse and convert one page."""
    return normalize_records(parse(page.body), page, run)


def normalize_records(records: Sequence[Any], page: Page, run: RunInfo) -> Normalized:
    """Convert parsed records of ``page``; those that cannot be converted become rejects."""
    rejects: list[Reject] = []

    def reject(record: Any, reason: str) -> None:
        rejects.append(
            Reject(
                reason, record, page.region, page.compartment_id, page.number, page.opc_request_id
            )
        )

    dicts: list[dict[str, Any]] = []
    for record in records:
        if isinstance(record, dict):
            dicts.append(record)
        else:
            reject(record, f"the record is a JSON {type(record).__name__}, not an object")
    wire, dicts = _to_wire(dicts, reject)
    times = _times(wire, dicts, reject)
    if times is None:  # some timeCreated did not parse: those records were rejected, redo
        wire, dicts = _to_wire(dicts, reject)
        times = _times(wire, dicts, reject)
        assert times is not None
    ids = pc.struct_field(wire, "id")
    if ids.null_count:
        keep = pc.is_valid(ids)
        for record, ok in zip(dicts, keep.to_pylist(), strict=True):
            if not ok:
                reject(record, "the record has no id")
        wire = wire.filter(keep)
        times = times.filter(keep)
        dicts = [r for r, ok in zip(dicts, keep.to_pylist(), strict=True) if ok]
    batch = _flatten(wire, times, dicts, page, run)
    return Normalized(batch, rejects)


def _to_wire(
    dicts: list[dict[str, Any]], reject: Any
) -> tuple[pa.StructArray, list[dict[str, Any]]]:
    """Convert to the nested wire type; on failure, find and reject the offending records."""
    try:
        return cast(pa.StructArray, pa.array(dicts, type=IMAGE_WIRE_TYPE)), dicts
    except _CONVERSION_ERRORS:
        pass
    good = []
    for record in dicts:
        try:
            pa.array([record], type=IMAGE_WIRE_TYPE)
        except _CONVERSION_ERRORS as exc:
            reject(record, f"cannot convert: {exc}")
        else:
            good.append(record)
    return cast(pa.StructArray, pa.array(good, type=IMAGE_WIRE_TYPE)), good


def _times(wire: pa.StructArray, dicts: list[dict[str, Any]], reject: Any) -> pa.Array[Any] | None:
    """``timeCreated`` as timestamp(us, UTC); None after rejecting records it failed for."""
    text = pc.struct_field(wire, "timeCreated")
    try:
        return cast("pa.Array[Any]", pc.cast(text, UTC_MICROS))
    except _CONVERSION_ERRORS:
        pass
    bad = 0
    for i, value in enumerate(text.to_pylist()):
        try:
            pc.cast(pa.array([value], pa.string()), UTC_MICROS)
        except _CONVERSION_ERRORS:
            reject(dicts[i], f"timeCreated is not an RFC 3339 time with an offset: {value!r}")
            dicts[i] = {}
            bad += 1
    if bad:
        dicts[:] = [r for r in dicts if r]
    return None


def _extras(dicts: list[dict[str, Any]]) -> pa.Array[Any]:
    """``_extra`` for each record: unknown fields as a JSON object, nested under their parent.

    Most pages have none; one union of the page's keys (a C-level loop) says so without
    visiting records one by one in Python.
    """
    unknown = set().union(*map(dict.keys, dicts)) - KNOWN_FIELDS
    children = {
        parent: [c for c in map(operator.methodcaller("get", parent), dicts) if type(c) is dict]
        for parent in KNOWN_NESTED
    }
    nested = {
        parent: set().union(*map(dict.keys, values)) - KNOWN_NESTED[parent]
        for parent, values in children.items()
    }
    if not unknown and not any(nested.values()):
        return pa.nulls(len(dicts), pa.string())
    return pa.array([_extra(record) for record in dicts], pa.string())


def _extra(record: dict[str, Any]) -> str | None:
    extra: dict[str, Any] = {key: record[key] for key in record.keys() - KNOWN_FIELDS}
    for parent, known in KNOWN_NESTED.items():
        child = record.get(parent)
        if type(child) is dict and not child.keys() <= known:
            extra[parent] = {key: child[key] for key in child.keys() - known}
    return orjson.dumps(extra, option=orjson.OPT_SORT_KEYS).decode() if extra else None


def _flatten(
    wire: pa.StructArray,
    times: pa.Array[Any],
    dicts: list[dict[str, Any]],
    page: Page,
    run: RunInfo,
) -> pa.RecordBatch:
    count = len(wire)
    arrays: dict[str, pa.Array[Any]] = {}
    for column in API_COLUMNS:
        arrays[column.name] = _column(wire, times, column)
    arrays["_region"] = pa.repeat(page.region, count)
    arrays["_source_compartment_id"] = pa.repeat(page.compartment_id, count)
    arrays["_is_platform"] = pc.is_null(arrays["compartment_id"])
    arrays["_snapshot_date"] = pa.repeat(pa.scalar(run.snapshot_date, pa.date32()), count)
    arrays["_fetched_at"] = pa.repeat(pa.scalar(page.fetched_at, UTC_MICROS), count)
    arrays["_run_id"] = pa.repeat(run.run_id, count)
    arrays["_extra"] = _extras(dicts)
    return pa.RecordBatch.from_arrays([arrays[c.name] for c in COLUMNS], schema=SCHEMA)


def _column(wire: pa.StructArray, times: pa.Array[Any], column: Column) -> pa.Array[Any]:
    if column.name == "time_created":
        return times
    values: pa.Array[Any] = pc.struct_field(wire, list(column.path))
    if column.wire_type is not None and column.wire_type != column.type:
        values = values.view(column.type)  # same layout, snake_case field names
    return values


def empty_batch() -> pa.RecordBatch:
    """A batch with the output schema and no rows."""
    return pa.RecordBatch.from_pylist([], schema=SCHEMA)


@contextmanager
def quiet_gc(threshold: int = 200_000) -> Iterator[None]:
    """Raise the GC's first threshold while millions of short-lived dicts come and go.

    Parsed records are freed by reference counting; the cyclic collector only wastes time on
    them (measured here: 1.5–2× on parsing). Existing objects are frozen so that the rarer
    full collections do not walk them either.
    """
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(threshold, previous[1], previous[2])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
