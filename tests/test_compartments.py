"""The compartments dataset: names, paths and exclusions from Identity's records."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connector import schema
from connector.emulator import World, build_world
from connector.oci import compartments
from connector.oci.compartments import Tree

TENANCY = "ocid1.tenancy.oc1..root"


def record(ocid: str, name: str, parent: str, **extra: object) -> dict[str, object]:
    return {"id": ocid, "name": name, "compartmentId": parent, "lifecycleState": "ACTIVE", **extra}


FINANCE = record("ocid1.compartment.oc1..fin", "Finance", TENANCY)
PROD = record("ocid1.compartment.oc1..prod", "Prod", "ocid1.compartment.oc1..fin")
DEV = record("ocid1.compartment.oc1..dev", "Dev", "ocid1.compartment.oc1..fin")
TREE = Tree.of(TENANCY, [FINANCE, PROD, DEV])


class TestTree:
    def test_paths_join_names_from_the_root(self) -> None:
        """A compartment's path is its ancestors' names from ``root`` down."""
        assert "root/Finance/Prod" == TREE.path("ocid1.compartment.oc1..prod")
        assert "root" == TREE.path(TENANCY)

    def test_an_unseen_ancestor_is_named_by_its_ocid(self) -> None:
        """A parent the principal cannot see still gives a path: its OCID stands in."""
        hidden = "ocid1.compartment.oc1..hidden"
        tree = Tree.of(TENANCY, [record("ocid1.compartment.oc1..x", "X", hidden)])
        assert f"{hidden}/X" == tree.path("ocid1.compartment.oc1..x")

    def test_a_cycle_does_not_loop(self) -> None:
        """Records that point at each other (a broken service) end the walk."""
        a = record("ocid1.compartment.oc1..a", "A", "ocid1.compartment.oc1..b")
        b = record("ocid1.compartment.oc1..b", "B", "ocid1.compartment.oc1..a")
        assert "B/A" == Tree.of(TENANCY, [a, b]).path("ocid1.compartment.oc1..a")

    @pytest.mark.parametrize(
        ("compartment", "excluded", "include_root", "reason"),
        [
            ("ocid1.compartment.oc1..fin", {"ocid1.compartment.oc1..fin"}, True, "scope.exclude"),
            (
                "ocid1.compartment.oc1..prod",
                {"ocid1.compartment.oc1..fin"},
                True,
                "an excluded ancestor",
            ),
            (TENANCY, set(), False, "scope.include_root = false"),
            (TENANCY, set(), True, None),
            ("ocid1.compartment.oc1..dev", {"ocid1.compartment.oc1..prod"}, True, None),
        ],
        ids=["excluded", "under-excluded", "root-left-out", "root", "sibling-of-excluded"],
    )
    def test_exclusion_reasons(
        self, compartment: str, excluded: set[str], include_root: bool, reason: str | None
    ) -> None:
        """Each way discovery leaves a compartment out has its own reason."""
        assert reason == compartments.exclusion_reason(
            TREE, compartment, frozenset(excluded), include_root
        )


def test_table_rows_match_the_emulated_tree(small_world: World) -> None:
    """Every compartment Identity lists becomes a row with the right path, depth and flags."""
    listed = [c.to_api() for c in small_world.compartments if c.id != small_world.tenancy_id]
    tree = Tree.of(small_world.tenancy_id, listed)
    exported = frozenset(c.id for c in small_world.listable_compartments())
    table = compartments.table(tree, exported, {}, run_id="r1")
    assert schema.COMPARTMENTS_SCHEMA == table.schema
    rows = {r["id"]: r for r in table.to_pylist()}
    by_id = {c.id: c for c in small_world.compartments}
    for compartment in small_world.compartments:
        names, current = [], compartment
        while current.id != small_world.tenancy_id:
            names.append(current.name)
            current = by_id[current.parent_id]
        row = rows[compartment.id]
        assert "/".join(["root", *reversed(names)]) == row["path"]
        assert compartment.depth == row["depth"]
        assert (compartment.id in exported) == row["_exported"]
        assert (None if row["_exported"] else "not listed") == row["_excluded_reason"]
    assert len(small_world.compartments) == table.num_rows


def test_times_and_tags_convert() -> None:
    """Times with nine fractional digits are cut to microseconds; non-string tag values are
    kept as JSON text."""
    prod = {
        **PROD,
        "timeCreated": "2024-02-03T04:05:06.123456789Z",
        "definedTags": {"Ops": {"Owner": "ana", "Budget": 12}},
        "freeformTags": {"env": "prod"},
    }
    tree = Tree.of(TENANCY, [FINANCE, prod])
    table = compartments.table(tree, frozenset({prod["id"]}), {}, run_id="r")  # type: ignore[arg-type]
    row = next(r for r in table.to_pylist() if r["id"] == prod["id"])
    assert datetime(2024, 2, 3, 4, 5, 6, 123456, tzinfo=UTC) == row["time_created"]
    assert [("Ops", [("Owner", "ana"), ("Budget", "12")])] == row["defined_tags"]
    assert [("env", "prod")] == row["freeform_tags"]


def test_a_bad_time_is_null_not_a_failure() -> None:
    """A compartment whose time is not RFC 3339 still gets its row."""
    tree = Tree.of(TENANCY, [{**FINANCE, "timeCreated": "yesterday"}])
    table = compartments.table(tree, frozenset(), {}, run_id="r")
    assert [None, None] == table.column("time_created").to_pylist()


def test_builds_from_a_bigger_world() -> None:
    """A deeper tree (nesting up to five levels) keeps every path rooted."""
    world = build_world(seed=3, compartments=60)
    listed = [c.to_api() for c in world.compartments if c.id != world.tenancy_id]
    tree = Tree.of(world.tenancy_id, listed)
    paths = [tree.path(c.id) for c in world.compartments]
    assert all(p == "root" or p.startswith("root/") for p in paths)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-02-03T04:05:06Z", datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)),
        ("2024-02-03t04:05:06.5z", datetime(2024, 2, 3, 4, 5, 6, 500000, tzinfo=UTC)),
        ("2024-02-03 06:05:06+02:00", datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)),
        ("2024-02-03T04:05:06", None),  # no offset: no moment
        ("2024-02-03T04:05Z", None),  # RFC 3339 has seconds
        ("2024-02-30T04:05:06Z", None),
        ("0001-01-01T00:00:00+01:00", None),  # before year 1 in UTC
        (20240203, None),
    ],
)
def test_times_are_rfc_3339_in_utc(text: object, expected: datetime | None) -> None:
    tree = Tree.of(TENANCY, [{**FINANCE, "timeCreated": text}])
    table = compartments.table(tree, frozenset(), {}, run_id="r")
    row = next(r for r in table.to_pylist() if r["id"] == FINANCE["id"])
    assert expected == row["time_created"]
