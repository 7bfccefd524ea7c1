"""JSON pages to Arrow record batches: a pure function, run by the workers.

The fast path converts a whole page with pyarrow's C++ converters: the records as one struct of
the wire type, split into its columns. Python gathers only the values pyarrow would reinterpret
rather than refuse (integers, objects) and looks at a record only to find fields the schema
does not know. When a page holds a record that cannot be converted, the page is converted
record by record to find it; that record is rejected with its reason, the rest go on. Nothing is
dropped silently and nothing crashes the run.

Values the API may legitimately send are never a reason to reject (see ``schema``):

- ``compartmentId`` null or ``""`` (the Private Cloud Appliance's spelling) marks a platform
  image; ``compartment_id`` is null for both;
- ``timeCreated`` with any number of fractional digits (OCI sends 3, other services 9) is
  truncated to microseconds; lower-case ``t``/``z`` (RFC 3339 allows them) are accepted;
- a defined-tag value of any JSON type (the SDK types them as ``object``) is kept: a string as
  is, null as null, anything else as its compact JSON text in ``defined_tags`` and verbatim
  under ``definedTags`` in ``_extra``; ``decode_defined_tags`` restores the original.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from connector.pages import Page, PageError, Reject, RunInfo, dump_json
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
from connector.workers.records import array_elements, raw_text

_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)


@dataclass(frozen=True, slots=True)
class Normalized:
    """A page's rows, their ids (as Python strings, for de-duplication) and its rejects."""

    batch: pa.RecordBatch
    rejects: list[Reject]
    ids: list[str]


def parse_split(body: bytes) -> tuple[list[Any], list[tuple[str, str]]]:
    """The records of a page, and (text, reason) of each element that cannot be parsed alone.

    The whole page is parsed at once; only when that fails is it split into its elements
    (``records.array_elements``) and each parsed on its own, so that one record nested 5,000 deep,
    with invalid UTF-8 or a lone surrogate costs only itself. ``PageError`` when the page's own
    structure is broken (cut short, not an array): that is retried, not rejected.
    """
    try:
        records = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        elements = array_elements(body)
        if elements is None:
            raise PageError(f"the page is not valid JSON (cut short?): {exc}") from None
        records = []
        unparsed: list[tuple[str, str]] = []
        for element in elements:
            try:
                records.append(orjson.loads(element))
            except orjson.JSONDecodeError as error:
                unparsed.append((raw_text(element), f"cannot parse: {error}"))
        return records, unparsed
    if not isinstance(records, list):
        raise PageError(f"the page is a JSON {type(records).__name__}, not an array")
    return records, []


def normalize_page(page: Page, run: RunInfo, *, platform: bool = True) -> Normalized:
    """Parse and convert one page; without ``platform``, its platform images are left out.

    Leaving them out happens before conversion, where it costs little: under
    ``platform_images = once`` most listings carry a region's 100–200 platform images only to
    drop them, and converting them would be most of the run's CPU. An element that cannot be
    parsed on its own is a reject.
    """
    records, unparsed = parse_split(page.body)
    normalized = normalize_records(records if platform else custom_records(records), page, run)
    if unparsed:
        normalized.rejects[:0] = [
            Reject(reason, text, page.region, page.compartment_id, page.number, page.opc_request_id)
            for text, reason in unparsed
        ]
    return normalized


_PLATFORM_COMPARTMENT = frozenset({None, ""})


def custom_records(records: list[Any]) -> list[Any]:
    """``records`` without the platform images: those whose ``compartmentId`` is null, ``""``
    (a Private Cloud Appliance's spelling) or absent.

    The scan runs in C (``map`` over ``dict.get`` and a set's membership test). Anything that
    is not a platform image, malformed records included, is kept, so that conversion rejects
    it as it would have.
    """
    try:
        compartments = list(map(dict.get, records, itertools.repeat("compartmentId")))
        platform = list(map(_PLATFORM_COMPARTMENT.__contains__, compartments))
    except TypeError:  # a record that is not an object, or an unhashable compartmentId
        return [r for r in records if not _is_platform_record(r)]
    if not any(platform):
        return records
    return list(itertools.compress(records, map(operator.not_, platform)))


def _is_platform_record(record: Any) -> bool:
    if type(record) is not dict:
        return False
    compartment = record.get("compartmentId")
    return compartment is None or compartment == ""


def normalize_records(records: Sequence[Any], page: Page, run: RunInfo) -> Normalized:
    """Convert parsed records of ``page``; those that cannot be converted become rejects."""
    if not records:  # most listings once their platform images are left out: skip the setup
        return Normalized(_EMPTY_BATCH, [], [])
    rejects: list[Reject] = []

    def reject(record: Any, reason: str) -> None:
        rejects.append(
            Reject(
                reason, record, page.region, page.compartment_id, page.number, page.opc_request_id
            )
        )

    dicts: list[dict[str, Any]] = []
    for record in records:
        if type(record) is dict:
            dicts.append(record)
        else:
            reject(record, f"the record is a JSON {type(record).__name__}, not an object")
    try:
        converted = _convert(dicts)
    except _CONVERSION_ERRORS:
        converted, dicts = _convert_one_by_one(dicts, reject)
    ids = converted.ids
    if None in ids or "" in ids:
        # An empty id is no id: as a row it would be a key that matches nothing (and every
        # other empty one), so it is rejected with its reason, like a missing one.
        keep = [bool(image_id) for image_id in ids]
        for record, image_id in zip(dicts, ids, strict=True):
            if image_id is None:
                reject(record, "the record has no id")
            elif image_id == "":
                reject(record, 'the record\'s id is empty ("")')
        converted = converted.filter(keep)
    return Normalized(_batch(converted, page, run), rejects, converted.ids)


@dataclass(frozen=True, slots=True)
class _Converted:
    """The API columns of some records, their ids as Python strings, and their ``_extra``."""

    columns: dict[str, pa.Array[Any]]
    ids: list[str]
    extra: pa.Array[Any]

    def filter(self, keep: list[bool]) -> _Converted:
        mask = pa.array(keep, pa.bool_())
        return _Converted(
            {name: array.filter(mask) for name, array in self.columns.items()},
            list(itertools.compress(self.ids, keep)),
            self.extra.filter(mask),
        )


def _convert_one_by_one(
    dicts: list[dict[str, Any]], reject: Any
) -> tuple[_Converted, list[dict[str, Any]]]:
    """The slow path: find the records that cannot be converted, reject them, keep the rest."""
    good = []
    parts = []
    for record in dicts:
        try:
            parts.append(_convert([record]))
        except _CONVERSION_ERRORS as exc:
            reject(record, f"cannot convert: {exc}")
        else:
            good.append(record)
    if not parts:
        return _convert([]), good
    columns = {
        name: pa.concat_arrays([part.columns[name] for part in parts]) for name in parts[0].columns
    }
    ids = [image_id for part in parts for image_id in part.ids]
    extra = pa.concat_arrays([part.extra for part in parts])
    return _Converted(columns, ids, extra), good


# The conversion plan, derived from the schema once: a page's records convert as one struct of
# the wire type in one pass of pyarrow's converters, which then splits into the columns. Before
# that, Python gathers only the values whose types pyarrow would reinterpret rather than refuse:
# integers (a float is truncated), objects (a list of pairs passes for one) and the ids.
_TOP = tuple(c for c in API_COLUMNS if len(c.path) == 1)
_NESTED: dict[str, tuple[pa.StructType, tuple[Column, ...]]] = {
    field.name: (
        field.type,
        tuple(c for c in API_COLUMNS if c.path[0] == field.name and len(c.path) == 2),
    )
    for field in IMAGE_WIRE_TYPE
    if pa.types.is_struct(field.type)
}
_INTEGERS = tuple(c.source for c in _TOP if pa.types.is_integer(c.type))
_MAPS = tuple(c.source for c in _TOP if pa.types.is_map(c.type) and c.source != "definedTags")
_OBJECT: frozenset[type] = frozenset({dict})
_OBJECT_OR_NULL: frozenset[type] = frozenset({dict, type(None)})
_LIST_OR_NULL: frozenset[type] = frozenset({list, type(None)})
_INTEGER_OR_NULL: frozenset[type] = frozenset({int, type(None)})
_STRING_OR_NULL: frozenset[type] = frozenset({str, type(None)})
_EXTRA_DIGITS = r"(\.[0-9]{6})[0-9]+"


def _convert(dicts: list[dict[str, Any]]) -> _Converted:
    """Each API column of ``dicts``, their ids and ``_extra``; raises if a value does not fit.

    The records convert as one struct of the wire type (pyarrow's converters, in C++), which
    then splits into the columns. pyarrow accepts more than JSON objects where it expects a
    struct or a map (a list of pairs, an empty list) and truncates floats it puts into integer
    columns, so those values are checked first (``map(dict.get, ...)`` runs in C): a record
    that only converts by reinterpretation is rejected instead. Every other mismatch (a number
    where a string belongs, a string for a boolean) pyarrow refuses itself.
    """
    ids = _values(dicts, "id")
    for source in _INTEGERS:
        _expect_integers(_values(dicts, source))
    for source in _MAPS:
        _expect(_values(dicts, source), _OBJECT_OR_NULL, source, "an object")
    rebuilt, typed_tags = _defined_tags(_values(dicts, "definedTags"))
    children: dict[str, list[Any]] = {}
    for parent, (_, nested) in _NESTED.items():
        found = children[parent] = _values(dicts, parent)
        _expect(found, _OBJECT_OR_NULL, parent, "an object")
        objects = list(filter(None, found))  # (an empty object has nothing to check)
        for column in nested:
            if pa.types.is_integer(column.type):
                _expect_integers(_values(objects, column.path[1]))
        if parent == "imageVolumeDetails":
            _check_data_volumes(objects)
    records = dicts
    if typed_tags:  # tag values that are not strings convert as their JSON text
        records = list(dicts)
        for i in typed_tags:
            records[i] = {**dicts[i], "definedTags": rebuilt[i]}
    fields = _split(pa.array(records, IMAGE_WIRE_TYPE))
    columns: dict[str, pa.Array[Any]] = {}
    for column in _TOP:
        array = fields[column.source]
        columns[column.name] = (
            _timestamps(array, column.source) if column.type == UTC_MICROS else array
        )
    columns["compartment_id"] = _platform_as_null(columns["compartment_id"])
    for parent, (_, nested) in _NESTED.items():
        split = _split(fields[parent])
        for column in nested:
            array = split[column.path[1]]
            columns[column.name] = (
                array.view(column.type) if column.wire_type is not None else array
            )
    return _Converted(columns, ids, _extras(dicts, children, typed_tags))


def _values(objects: list[dict[str, Any]], key: str) -> list[Any]:
    """Each object's value of ``key`` (None where it has none), gathered in C."""
    return list(map(dict.get, objects, itertools.repeat(key)))


def _split(struct: pa.Array[Any]) -> dict[str, pa.Array[Any]]:
    """A struct array's fields by name; a field of a null struct is null."""
    fields = cast(pa.StructArray, struct).flatten()
    return dict(zip(struct.type.names, fields, strict=True))


def _platform_as_null(compartments: pa.Array[Any]) -> pa.Array[Any]:
    """Platform images have no compartment: null on OCI, ``""`` on a Private Cloud Appliance."""
    empty = pc.equal(compartments, pa.scalar("", pa.string()))
    if not pc.any(empty).as_py():
        return compartments
    return cast("pa.Array[Any]", pc.if_else(empty, pa.scalar(None, pa.string()), compartments))


def _defined_tags(values: list[Any]) -> tuple[list[Any], list[int]]:
    """Defined tags with every value a string or null, and the positions that needed it; raises
    if the tags or a namespace are not objects.

    The check runs over all tag values of the page at C speed; only records holding a value of
    another type are rebuilt.
    """
    _expect(values, _OBJECT_OR_NULL, "definedTags", "an object")
    namespaces = list(itertools.chain.from_iterable(map(dict.values, filter(None, values))))
    _expect(namespaces, _OBJECT_OR_NULL, "a definedTags namespace", "an object")
    tags = itertools.chain.from_iterable(map(dict.values, filter(None, namespaces)))
    if set(map(type, tags)) <= _STRING_OR_NULL:
        return values, []
    typed = [i for i, tags in enumerate(values) if tags and _typed_tags(tags)]
    rebuilt = list(values)
    for i in typed:
        rebuilt[i] = {
            namespace: None if keys is None else {key: tag_text(v) for key, v in keys.items()}
            for namespace, keys in values[i].items()
        }
    return rebuilt, typed


def _typed_tags(tags: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tag values of one record that are neither strings nor null, by namespace."""
    found: dict[str, dict[str, Any]] = {}
    for namespace, keys in tags.items():
        for key, value in (keys or {}).items():
            if value is not None and type(value) is not str:
                found.setdefault(namespace, {})[key] = value
    return found


def tag_text(value: Any) -> str | None:
    """A defined-tag value as the string map holds it: strings as is, others as JSON text."""
    if value is None or type(value) is str:
        return value
    return dump_json(value).decode()


def decode_defined_tags(
    defined_tags: dict[str, dict[str, str | None] | None] | None, extra: str | None
) -> dict[str, dict[str, Any] | None] | None:
    """A row's defined tags as the API sent them, from ``defined_tags`` and ``_extra``."""
    if defined_tags is None:
        return None
    typed = orjson.loads(extra).get("definedTags", {}) if extra else {}
    return {
        namespace: None
        if keys is None
        else {key: typed.get(namespace, {}).get(key, value) for key, value in keys.items()}
        for namespace, keys in defined_tags.items()
    }


def _expect(values: list[Any], kinds: frozenset[type], name: str, what: str) -> None:
    if not set(map(type, values)) <= kinds:
        raise TypeError(f"{name} is not {what}")


def _expect_integers(values: list[Any]) -> None:
    """Integer columns take integers; a JSON number with a fraction would be truncated."""
    if not set(map(type, values)) <= _INTEGER_OR_NULL:
        for value in values:
            if type(value) is float and not value.is_integer():
                raise ValueError(f"{value!r} is not an integer")


def _check_data_volumes(details: list[dict[str, Any]]) -> None:
    volumes = list(map(dict.get, details, itertools.repeat("dataVolumes")))
    _expect(volumes, _LIST_OR_NULL, "imageVolumeDetails.dataVolumes", "an array")
    items = list(itertools.chain.from_iterable(v for v in volumes if v is not None))
    _expect(items, _OBJECT, "a data volume", "an object")
    for key in ("index", "sizeInMBs"):
        _expect_integers(list(map(dict.get, items, itertools.repeat(key))))


def _timestamps(text: pa.Array[Any], source: str) -> pa.Array[Any]:
    """RFC 3339 times to UTC microseconds; more precise fractions are truncated, not refused."""
    try:
        return cast("pa.Array[Any]", pc.cast(text, UTC_MICROS))
    except pa.ArrowInvalid:
        pass
    # Arrow parses at most the unit's digits and only upper-case T and Z.
    fixed = pc.replace_substring_regex(pc.utf8_upper(text), _EXTRA_DIGITS, r"\1")
    try:
        return cast("pa.Array[Any]", pc.cast(fixed, UTC_MICROS))
    except pa.ArrowInvalid:
        raise ValueError(
            f"{source} is not an RFC 3339 time with an offset: "
            f"{text[0].as_py() if len(text) == 1 else '(one of the page)'}"
        ) from None


def _extras(
    dicts: list[dict[str, Any]], children: dict[str, list[Any]], typed_tags: list[int]
) -> pa.Array[Any]:
    """``_extra`` for each record: unknown fields as a JSON object, nested under their parent.

    Most records have none: unions of the page's keys (C-level loops) find the unknown keys,
    and only the records that carry one (or a defined tag that is not a string) are visited in
    Python.
    """
    carriers: set[int] = set(typed_tags)
    for key in set().union(*map(dict.keys, dicts)) - KNOWN_FIELDS:
        carriers.update(_holding(dicts, key))
    for parent, known in KNOWN_NESTED.items():
        found = children[parent]
        unknown = set().union(*map(dict.keys, filter(None, found))) - known
        if unknown:
            objects = [_EMPTY if c is None else c for c in found]
            for key in unknown:
                carriers.update(_holding(objects, key))
    if not carriers:
        return pa.nulls(len(dicts), pa.string())
    extras: list[str | None] = [None] * len(dicts)
    for i in carriers:
        extras[i] = _extra(dicts[i])
    return pa.array(extras, pa.string())


def _holding(objects: list[dict[str, Any]], key: str) -> Iterator[int]:
    """The positions of the objects that have ``key``."""
    flags = map(operator.contains, objects, itertools.repeat(key))
    return itertools.compress(itertools.count(), flags)


_EMPTY: dict[str, Any] = {}


def _extra(record: dict[str, Any]) -> str | None:
    extra: dict[str, Any] = {key: record[key] for key in record.keys() - KNOWN_FIELDS}
    for parent, known in KNOWN_NESTED.items():
        child = record.get(parent)
        if type(child) is dict and not child.keys() <= known:
            extra[parent] = {key: child[key] for key in child.keys() - known}
    tags = record.get("definedTags")
    typed = _typed_tags(tags) if tags else None
    if typed:
        extra["definedTags"] = typed
    return dump_json(extra).decode() if extra else None


_EMPTY_BATCH = pa.RecordBatch.from_pylist([], schema=SCHEMA)


def _batch(converted: _Converted, page: Page, run: RunInfo) -> pa.RecordBatch:
    count = len(converted.ids)
    arrays = dict(converted.columns)
    arrays["region"] = pa.repeat(page.region, count)
    arrays["_source_compartment_id"] = pa.repeat(page.compartment_id, count)
    arrays["_is_platform"] = pc.is_null(arrays["compartment_id"])
    arrays["_tenancy_id"] = pa.repeat(pa.scalar(run.tenancy_id, pa.string()), count)
    arrays["snapshot_date"] = pa.repeat(pa.scalar(run.snapshot_date, pa.date32()), count)
    arrays["_fetched_at"] = pa.repeat(pa.scalar(page.fetched_at, UTC_MICROS), count)
    arrays["_run_id"] = pa.repeat(run.run_id, count)
    arrays["_extra"] = converted.extra
    return pa.RecordBatch.from_arrays([arrays[c.name] for c in COLUMNS], schema=SCHEMA)
