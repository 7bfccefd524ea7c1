"""Change capture between two snapshots: pure, record batches in, change rows out."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest

from connector import schema
from connector.lake import changes
from connector.pages import Page, RunInfo
from connector.workers.normalize import normalize_records

REGION = "us-ashburn-1"
CUSTOM = "ocid1.compartment.oc1..custom"
FROM, TO = date(2026, 11, 26), date(2026, 11, 27)
CONTEXT = changes.DiffContext(FROM, TO, "run-2", "ocid1.tenancy.oc1..t")


def record(number: int, **overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": f"ocid1.image.oc1.iad.image{number:04d}",
        "compartmentId": CUSTOM,
        "displayName": f"image-{number}",
        "operatingSystem": "Oracle Linux",
        "operatingSystemVersion": "9",
        "lifecycleState": "AVAILABLE",
        "createImageAllowed": True,
        "sizeInMBs": 47694,
        "billableSizeInGBs": 3,
        "timeCreated": "2026-10-01T10:00:00.000Z",
        "launchMode": "NATIVE",
        "freeformTags": {"team": "web", "env": "prod"},
        "definedTags": {"Ops": {"CostCenter": "42", "Owner": "ana"}},
        "imageVolumeDetails": {"dataVolumes": [{"displayName": "d", "index": 1, "sizeInMBs": 10}]},
    }
    value.update(overrides)
    return value


def batches(records: list[dict[str, Any]], day: date, source: str = CUSTOM) -> list[pa.RecordBatch]:
    page = Page(orjson.dumps(records), REGION, source, 1, datetime.now(UTC), None)
    normalized = normalize_records(records, page, RunInfo(f"run-{day}", day))
    assert [] == normalized.rejects
    return [normalized.batch]


def run_diff(
    old: Iterable[pa.RecordBatch], new: Iterable[pa.RecordBatch], expected_rows: int = 0
) -> tuple[list[dict[str, Any]], changes.ChangeCounts]:
    counts = changes.ChangeCounts()
    out = list(
        changes.diff(lambda: old, lambda: new, CONTEXT, expected_rows=expected_rows, counts=counts)
    )
    for batch in out:
        assert schema.CHANGES_SCHEMA == batch.schema
    rows = [row for batch in out for row in batch.to_pylist()]
    return sorted(rows, key=lambda r: (r["id"], r["change"])), counts


def base() -> list[dict[str, Any]]:
    return [record(n) for n in range(8)]


def edited() -> list[dict[str, Any]]:
    """Base with one image removed (0), renamed (1), re-tagged (2), state changed (3),
    tag keys reordered only (4), moved to another compartment (5), and one added (100)."""
    rows = copy.deepcopy(base())[1:]
    rows[0]["displayName"] = "image-1-renamed"
    rows[1]["freeformTags"] = {"team": "web", "env": "staging"}
    rows[2]["lifecycleState"] = "DISABLED"
    rows[3]["definedTags"] = {"Ops": {"Owner": "ana", "CostCenter": "42"}}
    rows[3]["freeformTags"] = {"env": "prod", "team": "web"}
    rows[4]["compartmentId"] = "ocid1.compartment.oc1..other"
    rows.append(record(100))
    return rows


@pytest.mark.parametrize("expected_rows", [0, 10**6], ids=["one-bucket", "five-buckets"])
def test_reports_exactly_the_known_changes(expected_rows: int) -> None:
    """Added, removed, renamed, re-tagged, state-changed and moved images are reported; entry
    order in tag maps is not a change."""
    rows, counts = run_diff(batches(base(), FROM), batches(edited(), TO), expected_rows)
    summary = [(r["change"], r["id"][-4:], r["compartment_id"], r["changed_fields"]) for r in rows]
    other = "ocid1.compartment.oc1..other"
    assert [
        ("removed", "0000", CUSTOM, []),
        ("changed", "0001", CUSTOM, ["display_name"]),
        ("changed", "0002", CUSTOM, ["freeform_tags"]),
        ("changed", "0003", CUSTOM, ["lifecycle_state"]),
        ("added", "0005", other, []),
        ("removed", "0005", CUSTOM, []),
        ("added", "0100", CUSTOM, []),
    ] == summary
    assert (2, 2, 3) == (counts.added, counts.removed, counts.changed)


def test_changed_rows_carry_before_and_after() -> None:
    """A changed row names the fields, with their old and new values as JSON objects."""
    rows, _ = run_diff(batches(base(), FROM), batches(edited(), TO))
    retagged = next(r for r in rows if r["id"].endswith("0002"))
    assert {"freeform_tags": {"env": "prod", "team": "web"}} == orjson.loads(retagged["before"])
    assert {"freeform_tags": {"env": "staging", "team": "web"}} == orjson.loads(retagged["after"])
    assert (FROM, "run-2") == (retagged["_from_snapshot_date"], retagged["_run_id"])
    # The date the changes lead to is the partition's folder name, not a column of the file.
    assert "snapshot_date" not in retagged


def test_identical_snapshots_have_no_changes() -> None:
    """The same rows fetched on another day (other run, other fetch time) are no change."""
    rows, counts = run_diff(batches(base(), FROM), batches(base(), TO))
    assert ([], 0) == (rows, counts.total)


def test_platform_images_match_whichever_listing_donated_them() -> None:
    """Platform images (null compartment) are keyed by region and id: a different donor
    listing, or the repeats of ``platform_images = every``, are no change."""
    platform = [record(n, compartmentId=None) for n in range(3)]
    old = batches(platform, FROM, source="ocid1.compartment.oc1..donor1")
    new = [
        *batches(platform, TO, source="ocid1.compartment.oc1..donor2"),
        *batches(platform, TO, source="ocid1.compartment.oc1..donor3"),
    ]
    rows, _ = run_diff(old, new)
    assert [] == rows


@pytest.mark.parametrize("expected_rows", [0, 10**6], ids=["one-bucket", "five-buckets"])
def test_a_platform_image_that_left_is_retired(expected_rows: int) -> None:
    """ListImages stops listing a platform image's oldest build when a new one is published:
    a platform image that left is ``retired``; a custom image that left stays ``removed``."""
    old = [
        record(1, compartmentId=None, displayName="Oracle-Linux-9.6-2026.09.30-0"),
        record(2, compartmentId=None, displayName="Oracle-Linux-9.6-2026.10.30-0"),
        record(3),
    ]
    new = [old[1], record(4, compartmentId=None, displayName="Oracle-Linux-9.6-2026.11.29-0")]
    rows, counts = run_diff(batches(old, FROM), batches(new, TO), expected_rows)
    summary = [(r["change"], r["id"][-4:], r["compartment_id"], r["_is_platform"]) for r in rows]
    assert [
        ("retired", "0001", None, True),
        ("removed", "0003", CUSTOM, False),
        ("added", "0004", None, True),
    ] == summary
    assert (1, 1, 1, 0, 3) == (
        counts.added,
        counts.removed,
        counts.retired,
        counts.changed,
        counts.total,
    )


@pytest.mark.parametrize(
    ("field", "old", "new"),
    [
        ("sizeInMBs", 1, None),
        ("launchOptions", None, {"firmware": "UEFI_64"}),
        ("launchOptions", {"firmware": "BIOS"}, {"firmware": "UEFI_64"}),
        ("imageVolumeDetails", {"dataVolumes": []}, {"dataVolumes": [{"index": 1}]}),
        ("imageVolumeDetails", {"dataVolumes": [{"index": 1}]}, {"dataVolumes": [{"index": 2}]}),
        ("definedTags", {"Ops": {"a": "1"}}, {"Ops": {"a": "1"}, "Fin": {}}),
        ("definedTags", {"Ops": {"a": "1"}}, {"Ops": {"a": "2"}}),
        ("freeformTags", {}, None),
        ("brandNewField", "x", "y"),
    ],
    ids=[
        "value-to-null",
        "null-struct-to-struct",
        "struct-field",
        "list-grows",
        "list-element",
        "map-gains-key",
        "nested-map-value",
        "empty-map-to-null",
        "unknown-field",
    ],
)
def test_every_kind_of_value_change_is_seen(field: str, old: Any, new: Any) -> None:
    """Null against value, structs, lists, maps and maps of maps, and unknown fields compare
    by value."""
    rows, _ = run_diff(
        batches([record(1, **{field: old})], FROM), batches([record(1, **{field: new})], TO)
    )
    assert ["changed"] == [r["change"] for r in rows]


def test_no_previous_snapshot_reports_everything_added() -> None:
    """Against nothing (the first run), every image is added."""
    rows, counts = run_diff([], batches(base(), TO))
    assert (8, 8) == (len(rows), counts.added)
