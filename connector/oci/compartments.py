"""The ``compartments`` dataset: the tenancy's tree as discovery saw it, with readable paths.

Images carry compartment OCIDs; analysts ask by name ("custom images per team"). This dataset,
published beside ``images`` in the same commit, maps every compartment to its name and its
path from the root (``root/Finance/Prod``), and says whether the run exported it and, if not,
why. It is built from the Identity records that discovery lists anyway, so it costs no request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from connector import schema

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
ROOT_NAME = "root"
_MAX_DEPTH = 64  # OCI nests compartments at most six levels; a cycle must not loop forever

EXCLUDED = "scope.exclude"
EXCLUDED_ANCESTOR = "an excluded ancestor"
ROOT_LEFT_OUT = "scope.include_root = false"
NOT_LISTED = "not listed"


_TEXT_FIELDS = ("name", "description")
"""Kept as their JSON text when the service sends another type (the dataset keeps the value)."""
_ID_FIELDS = ("compartmentId", "lifecycleState")
"""Null when not a string: a parent or a state of another type cannot be used as one."""


def usable(record: Any) -> dict[str, Any] | None:
    """A compartment record from Identity with its fields of the types the code relies on, or
    None when it has no usable id (missing, not a string, empty): such a record can be neither
    exported nor placed in the tree, and the run skips it (with a warning, counted in the
    manifest) instead of failing on it.

    Text fields of another type are kept as their JSON text, a parent or state of another type
    as null (a compartment without a parent hangs from the root), ``isAccessible`` only as a
    boolean; tags and times are checked where the rows are
    made. One record with a number for a description must not sink a run whose every image has
    been fetched.
    """
    if not isinstance(record, Mapping):
        return None
    compartment_id = record.get("id")
    if not isinstance(compartment_id, str) or not compartment_id.strip():
        return None
    clean = dict(record)
    for name in _TEXT_FIELDS:
        value = clean.get(name)
        if value is not None and not isinstance(value, str):
            clean[name] = _json_text(value)
    for name in _ID_FIELDS:
        if not isinstance(clean.get(name), str):
            clean[name] = None
    if not isinstance(clean.get("isAccessible", True), bool):
        clean.pop("isAccessible")
    return clean


def describe_unusable(record: Any) -> str:
    """Why ``usable`` refused ``record``, for the warning (never the record itself: it may be
    huge)."""
    if not isinstance(record, Mapping):
        return f"the record is a JSON {type(record).__name__}, not an object"
    value = record.get("id")
    if value is None:
        return "the record has no id"
    if not isinstance(value, str):
        return f"its id is a {type(value).__name__}, not a string"
    return "its id is empty"


@dataclass(frozen=True, slots=True)
class Tree:
    """Compartment records by id (the root too), as the Identity API returns them."""

    tenancy_id: str
    records: Mapping[str, Mapping[str, Any]]

    @classmethod
    def of(cls, tenancy_id: str, records: Iterable[Any]) -> Tree:
        """The tree from ListCompartments records; the root is added when they lack it. A record
        ``usable`` refuses is not in it (discovery has skipped it already)."""
        cleaned = (usable(r) for r in records)
        by_id = {r["id"]: r for r in cleaned if r is not None}
        by_id.setdefault(tenancy_id, {"id": tenancy_id, "name": ROOT_NAME})
        return cls(tenancy_id, by_id)

    def parent(self, compartment_id: str) -> str | None:
        """The parent's id; None for the root, and for an ancestor the principal cannot see.
        A listed compartment without a usable parent hangs from the root, as discovery
        places it."""
        if compartment_id == self.tenancy_id:
            return None
        record = self.records.get(compartment_id)
        if record is None:
            return None
        parent = record.get("compartmentId")
        return str(parent) if parent else self.tenancy_id

    def ancestry(self, compartment_id: str) -> list[str]:
        """Ids from the root (or the highest known ancestor) down to ``compartment_id``."""
        chain = [compartment_id]
        while len(chain) < _MAX_DEPTH:
            parent = self.parent(chain[-1])
            if parent is None or parent in chain:
                break
            chain.append(parent)
        return chain[::-1]

    def name(self, compartment_id: str) -> str:
        """Its name; the root is ``root``, and an ancestor the principal cannot see is named
        by its OCID."""
        if compartment_id == self.tenancy_id:
            return ROOT_NAME
        record = self.records.get(compartment_id)
        return str(record.get("name") or compartment_id) if record else compartment_id

    def path(self, compartment_id: str) -> str:
        """Names from the root down, joined by ``/``."""
        return "/".join(self.name(c) for c in self.ancestry(compartment_id))


def exclusion_reason(
    tree: Tree, compartment_id: str, excluded: frozenset[str], include_root: bool
) -> str | None:
    """Why discovery left ``compartment_id`` out, or None when it is exported."""
    if compartment_id in excluded:
        return EXCLUDED
    if any(a in excluded for a in tree.ancestry(compartment_id)[:-1]):
        return EXCLUDED_ANCESTOR
    if compartment_id == tree.tenancy_id and not include_root:
        return ROOT_LEFT_OUT
    return None


def table(
    tree: Tree,
    exported: frozenset[str],
    reasons: Mapping[str, str],
    *,
    run_id: str,
) -> pa.Table:
    """The dataset's rows: every compartment of ``tree``, exported or not (and why)."""
    ids = sorted(tree.records)
    rows = []
    for compartment_id in ids:
        record = tree.records[compartment_id]
        is_exported = compartment_id in exported
        rows.append(
            {
                "id": compartment_id,
                "name": tree.name(compartment_id),
                "description": record.get("description"),
                "parent_id": tree.parent(compartment_id),
                "path": tree.path(compartment_id),
                "depth": len(tree.ancestry(compartment_id)) - 1,
                "lifecycle_state": record.get("lifecycleState"),
                "time_created": _timestamp(record.get("timeCreated")),
                "defined_tags": _tags(record.get("definedTags")),
                "freeform_tags": _strings(record.get("freeformTags")),
                "_exported": is_exported,
                "_excluded_reason": None
                if is_exported
                else reasons.get(compartment_id, NOT_LISTED),
                "_tenancy_id": tree.tenancy_id,
                "_run_id": run_id,
            }
        )
    return pa.Table.from_pylist(rows, schema=schema.COMPARTMENTS_SCHEMA)


def _timestamp(text: Any) -> datetime | None:
    """An RFC 3339 time in UTC, fractions beyond six digits cut as for images, lower-case
    ``t``/``z`` accepted; a text that is no such time becomes null (a compartment's age is not
    worth a failed run). Parsed by the standard library: pyarrow's cast would load
    ``pyarrow.compute`` into the fetching process for it, about 0.1 s at the end of a run."""
    if not isinstance(text, str) or not _RFC3339.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text.upper()).astimezone(UTC)
    except (ValueError, OverflowError):  # no such day; before year 1 once in UTC
        return None


def _strings(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): v if isinstance(v, str) else _json_text(v) for k, v in value.items()}


def _tags(value: Any) -> dict[str, dict[str, str] | None] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): _strings(v) for k, v in value.items()}


def _json_text(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()
