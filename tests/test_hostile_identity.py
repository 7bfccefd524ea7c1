"""Hostile Identity records are isolated: a compartment record without a usable id is skipped
(one warning each, counted in the manifest), fields of the wrong types are kept as null or as
their text, a record with a lone surrogate is left out alone, not its page, and an answer that
is whole JSON of the wrong kind fails at once instead of being retried as a cut body."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from connector import cli, schema
from connector.emulator import EmulatorServer
from connector.emulator.app import (
    HOSTILE_COMPARTMENT_IDS,
    SURROGATE_COMPARTMENT_ID,
)
from connector.oci import compartments
from connector.pages import PageError, parse_each, parse_one
from tests.helpers import DATE, manifest_of, write_config

TENANCY = "ocid1.tenancy.oc1..root"
GOOD = {"id": "ocid1.compartment.oc1..good", "name": "Good", "compartmentId": TENANCY}
SKIPPED = len(HOSTILE_COMPARTMENT_IDS) + 3  # and: no id, not an object, a lone surrogate


class TestParseEach:
    def test_a_lone_surrogate_costs_only_its_record(self) -> None:
        """orjson refuses the whole body for one record with a lone surrogate; the others are
        kept, in order, and the one is counted."""
        body = b'[{"id": "a"}, {"id": "b", "name": "x \\ud800 y"}, {"id": "c"}]'
        assert ([{"id": "a"}, {"id": "c"}], 1) == parse_each(body)

    def test_bytes_that_are_not_utf8_cost_only_their_record(self) -> None:
        body = b'[{"id": "a"}, {"id": "b", "name": "\xff\xfe"}]'
        assert ([{"id": "a"}], 1) == parse_each(body)

    def test_a_clean_page_is_parsed_once(self) -> None:
        assert ([{"id": "a"}], 0) == parse_each(b'[{"id": "a"}]')

    def test_a_cut_body_is_retried_and_an_object_is_not(self) -> None:
        """Cut short: a ``PageError`` that is not ``whole`` (the client retries it). Whole JSON
        that is not an array: ``whole``, so the same answer is not asked for again."""
        with pytest.raises(PageError) as cut:
            parse_each(b'[{"id": "a"}, {"id": "b"')
        assert not cut.value.whole
        for body in (b'{"items": []}', b'{"name": "x \\ud800"}', b"42"):
            with pytest.raises(PageError) as whole:
                parse_each(body)
            assert whole.value.whole

    def test_one_record_responses(self) -> None:
        assert {"id": "a"} == parse_one(b'{"id": "a"}')
        assert parse_one(b'{"id": "a", "name": "\\udc00"}') is None
        with pytest.raises(PageError):
            parse_one(b'{"id": "a"')


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"name": "no id"}, "has no id"),
        ({"id": 12345}, "is a int"),
        ({"id": ["ocid1.compartment.oc1..x"]}, "is a list"),
        ({"id": ""}, "is empty"),
        ({"id": "  "}, "is empty"),
        ("a string", "not an object"),
        (None, "not an object"),
    ],
)
def test_a_record_without_a_usable_id_is_refused(record: Any, reason: str) -> None:
    """Neither exported nor placed in the tree; the warning says why, not what the record
    holds."""
    assert compartments.usable(record) is None
    assert reason in compartments.describe_unusable(record)


def test_wrong_typed_fields_become_text_or_null() -> None:
    """A number for a description, a list for a name, a number for a parent or a state, a
    string for ``isAccessible``, tags and times of other types: the row keeps what it can and
    the table is built (it raised ``ArrowTypeError`` after every image was fetched)."""
    hostile = {
        "id": "ocid1.compartment.oc1..odd",
        "name": ["Team", 2],
        "description": 42,
        "compartmentId": 7,
        "lifecycleState": {"state": "ACTIVE"},
        "isAccessible": "yes",
        "definedTags": {"Ops": 5, "Cost": {"center": 12}},
        "freeformTags": {"team": 7},
        "timeCreated": 1700000000,
    }
    tree = compartments.Tree.of(TENANCY, [GOOD, hostile, {"id": 5}, "junk"])
    assert {TENANCY, GOOD["id"], hostile["id"]} == set(tree.records)
    table = compartments.table(tree, frozenset(), {}, run_id="r")
    assert schema.COMPARTMENTS_SCHEMA == table.schema
    row = next(r for r in table.to_pylist() if r["id"] == hostile["id"])
    assert ('["Team",2]', "42", TENANCY, None) == (
        row["name"],
        row["description"],
        row["parent_id"],
        row["lifecycle_state"],
    )
    assert "root/" + '["Team",2]' == row["path"]
    assert {"team": "7"} == dict(row["freeform_tags"])
    assert {"Ops": None, "Cost": {"center": "12"}} == {
        k: dict(v) if v is not None else None for k, v in dict(row["defined_tags"]).items()
    }
    assert row["time_created"] is None


def test_a_run_against_hostile_records_publishes_and_counts_them(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Identity's first page of compartments holds records with a numeric id, a list id, an
    empty id, no id, a string for a record and a lone surrogate in a name, and two real records
    with fields of the wrong types: the run exports every real compartment (exit 0), warns
    once per skipped record, counts them in the manifest, and the compartments dataset keeps
    the wrong-typed fields as text or null."""
    clean = make_emulator()
    assert 0 == cli.main(["run", "--config", str(write_config(tmp_path / "clean", clean))])
    server = make_emulator(hostile_compartments=True)
    capsys.readouterr()
    assert 0 == cli.main(
        ["--log-format", "json", "run", "--config", str(write_config(tmp_path, server))]
    )
    events = [orjson.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    skipped = [e for e in events if e.get("event") == "discovery.compartment_skipped"]
    assert SKIPPED == len(skipped)
    assert any("has no id" in e["reason"] for e in skipped)
    manifest, expected = manifest_of(tmp_path), manifest_of(tmp_path / "clean")
    assert SKIPPED == manifest["compartment_records_skipped"]
    assert 0 == expected["compartment_records_skipped"]
    assert all(c["status"] == "ok" for c in manifest["compartments"])
    assert SURROGATE_COMPARTMENT_ID not in {c["compartment_id"] for c in manifest["compartments"]}

    # Which listing carries a region's platform images varies from run to run; the listings
    # and the rows in all do not.
    def listings(document: dict[str, Any]) -> set[tuple[str, str, str]]:
        return {(c["region"], c["compartment_id"], c["status"]) for c in document["compartments"]}

    assert (expected["rows"], listings(expected)) == (manifest["rows"], listings(manifest))

    def rows_of(lake: Path) -> list[dict[str, Any]]:
        folder = lake / "compartments" / f"snapshot_date={DATE}"
        return pq.read_table(next(folder.glob("*.parquet"))).to_pylist()

    rows = rows_of(tmp_path / "lake")
    assert len(rows_of(tmp_path / "clean" / "lake")) == len(rows)
    described = [r for r in rows if r["description"] == "42"]
    assert 1 == len(described)
    assert described[0]["time_created"] is None
    assert 1 == sum(r["name"] == '["Team",2]' for r in rows)


def test_a_region_subscriptions_object_fails_at_once(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """regionSubscriptions answered with a JSON object (whole, so the same each time): the run
    fails on the first answer, in one line, where it was retried 8 times (95 s) as a cut body."""
    server = make_emulator(subscriptions_object=True)
    started = time.monotonic()
    code = cli.main(["run", "--config", str(write_config(tmp_path, server))])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert 1 == code
    assert 1 == server.stats()["requests"]
    assert elapsed < 10
    assert "not an array" in err
    assert "Traceback" not in err
