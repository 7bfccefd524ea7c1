"""End to end, in process: the export against the emulator, output read back and compared.

Each test runs ``oci-images run`` through ``connector.cli.main`` (the subprocess form is in
test_cli.py) and reads what it published with DuckDB and pyarrow.dataset.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from connector import cli
from connector.emulator import EmulatorServer, build_world
from connector.lake import housekeeping, snapshots, storage
from connector.oci.fetch import long_listings_early
from connector.pages import WorkItem
from tests.helpers import DATE, WORLD, arrow_rows, manifest_of, partition, run, write_config
from tests.reference import expected_rows, multiset, normalise_actual


def duckdb_rows(tmp_path: Path) -> list[dict[str, Any]]:
    glob = tmp_path / "lake" / "images" / "*" / "*" / "*.parquet"
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
    assert relation is not None  # None only for statements that return no rows
    columns = relation.columns
    return [dict(zip(columns, values, strict=True)) for values in relation.fetchall()]


@pytest.fixture
def lake_emulator(make_emulator: Callable[..., EmulatorServer]) -> EmulatorServer:
    return make_emulator(build_world(**WORLD))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("platform", "workers"),
    [("once", 0), ("once", 2), ("once", 3), ("every", 2), ("skip", 2), ("every", 0)],
)
def test_published_rows_equal_ground_truth(
    lake_emulator: EmulatorServer, tmp_path: Path, platform: str, workers: int
) -> None:
    """2 regions × 40 compartments, discovered: every row equals the ground truth, field by
    field, whether pages are converted in this process or in worker processes."""
    config = write_config(
        tmp_path,
        lake_emulator,
        fetch={"platform_images": platform, "workers": workers, "page_size": 300},
    )
    assert 0 == run(config)
    expected = multiset(expected_rows(lake_emulator.world, platform))
    assert expected == multiset([normalise_actual(r, platform) for r in arrow_rows(tmp_path)])
    manifest = manifest_of(tmp_path)
    assert ("succeeded", sum(expected.values()), 0) == (
        manifest["status"],
        manifest["rows"],
        manifest["rejects"],
    )
    assert 82 == len(manifest["compartments"])
    assert (partition(tmp_path) / "_SUCCESS").exists()


def test_duckdb_reads_the_same_rows(lake_emulator: EmulatorServer, tmp_path: Path) -> None:
    """DuckDB with hive partitioning reads exactly what pyarrow reads, maps, lists and times too."""
    assert 0 == run(write_config(tmp_path, lake_emulator))
    via_duckdb = duckdb_rows(tmp_path)
    via_arrow = arrow_rows(tmp_path)
    assert len(via_arrow) == len(via_duckdb)
    assert {(DATE, r) for r in lake_emulator.world.regions} == {
        (str(r["snapshot_date"]), r["region"]) for r in via_duckdb
    }
    by_id = {r["id"]: r for r in via_arrow}
    for row in via_duckdb:
        twin = by_id[row["id"]]
        for key in (
            "defined_tags",
            "freeform_tags",
            "image_volume_details__data_volumes",
            "size_in_mbs",
            "display_name",
            "_extra",
            "launch_options__firmware",
        ):
            assert twin[key] == row[key], key
        assert twin["time_created"] == row["time_created"]


def test_ndjson_gzip_equals_ground_truth(lake_emulator: EmulatorServer, tmp_path: Path) -> None:
    """NDJSON(.gz) carries the same names and nesting; times are RFC 3339 with Z."""
    config = write_config(
        tmp_path, lake_emulator, output={"format": "ndjson", "compression": "gzip"}
    )
    assert 0 == run(config)
    files = sorted(partition(tmp_path).glob("region=*/part-*.ndjson.gz"))
    assert 2 == len({f.parent for f in files})  # both regions, a file per worker
    rows = [
        {**orjson.loads(line), "region": f.parent.name.removeprefix("region=")}
        for f in files
        for line in gzip.decompress(f.read_bytes()).splitlines()
    ]
    assert all(r["time_created"].endswith("Z") and r["_fetched_at"].endswith("Z") for r in rows)
    expected = multiset(expected_rows(lake_emulator.world, "once"))
    from datetime import datetime

    for row in rows:
        row["time_created"] = datetime.fromisoformat(row["time_created"])
    assert expected == multiset([normalise_actual(r, "once") for r in rows])
    relation = duckdb.sql(
        f"SELECT count(*) FROM read_ndjson('{partition(tmp_path)}/region=*/*.ndjson.gz')"
    )
    assert relation is not None
    counted = relation.fetchall()
    assert [(len(rows),)] == counted


def test_unknown_compartment_is_partial(lake_emulator: EmulatorServer, tmp_path: Path) -> None:
    """A 404 compartment: exit 3, nothing published; below the floor, exit 1 with or without
    allow_partial; with allow_partial above the floor, published without it."""
    world = lake_emulator.world
    good = [c.id for c in world.listable_compartments()[:3]]
    missing = "ocid1.compartment.oc1..aaaaaaaamissingmissingmissingmissingmissingmissingmissing"
    scope = {"compartments": [*good, missing]}
    regions = {"regions": ["us-ashburn-1"]}
    floor = {"min_complete_ratio": 0.5}
    config = write_config(tmp_path, lake_emulator, scope=scope, oci=regions, output=floor)
    assert 3 == run(config)
    assert not partition(tmp_path).exists()
    assert not list((tmp_path / "lake").glob("_staging/*"))
    # 3 of 4 listings complete is below the default floor (0.9): exit 1, as with allow_partial.
    assert 1 == run(write_config(tmp_path, lake_emulator, scope=scope, oci=regions))
    assert not partition(tmp_path).exists()
    config = write_config(
        tmp_path,
        lake_emulator,
        scope=scope,
        oci={"regions": ["us-ashburn-1"]},
        output={"allow_partial": True},
    )
    # 3 of 4 listings complete is below the default floor (0.9): a failure, nothing published.
    assert 1 == run(config)
    assert not partition(tmp_path).exists()
    # Every run leaves a record; this run's is the newest.
    records = sorted(
        (tmp_path / "lake" / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns
    )
    record = orjson.loads(records[-1].read_bytes())
    assert ("failed", False) == (record["status"], record["published"])
    assert "min_complete_ratio" in record["message"]
    config = write_config(
        tmp_path,
        lake_emulator,
        scope=scope,
        oci={"regions": ["us-ashburn-1"]},
        output={"allow_partial": True, "min_complete_ratio": 0.75},
    )
    assert 3 == run(config)
    assert (partition(tmp_path) / "_PARTIAL").exists()
    assert not (partition(tmp_path) / "_SUCCESS").exists()
    manifest = manifest_of(tmp_path)
    assert "partial" == manifest["status"]
    [failed] = [c for c in manifest["compartments"] if c["status"] == "failed"]
    assert (missing, 404, "NotAuthorizedOrNotFound") == (
        failed["compartment_id"],
        failed["error"]["status"],
        failed["error"]["code"],
    )
    assert failed["error"]["opc_request_id"]
    expected = multiset(
        [r for r in expected_rows(world, "once", good) if r["region"] == "us-ashburn-1"]
    )
    assert expected == multiset([normalise_actual(r, "once") for r in arrow_rows(tmp_path)])


def test_failed_listings_leave_no_rows(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Listings that fail part-way (after pages were written) publish none of their rows."""
    server = make_emulator(build_world(**WORLD), fault_rate=0.15)  # type: ignore[arg-type]
    config = write_config(
        tmp_path,
        server,
        fetch={"max_attempts": 1, "page_size": 50, "platform_images": "every"},
        output={"allow_partial": True, "min_complete_ratio": 0.0},
    )
    assert 3 == run(config)
    manifest = manifest_of(tmp_path)
    ok = {
        (c["region"], c["compartment_id"]) for c in manifest["compartments"] if c["status"] == "ok"
    }
    failed = [c for c in manifest["compartments"] if c["status"] == "failed"]
    assert failed
    assert any(c["pages"] > 0 for c in failed), "some listing failed after its first page"
    expected = [
        r
        for r in expected_rows(server.world, "every")
        if (r["region"], r["_source_compartment_id"]) in ok
    ]
    actual = arrow_rows(tmp_path)
    assert multiset(expected) == multiset([normalise_actual(r, "every") for r in actual])
    assert manifest["rows"] == len(actual) == sum(f["rows"] for f in manifest["files"])


def test_never_requests_deleted_or_inaccessible(
    lake_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Discovery lists ACTIVE accessible compartments only; the rest are never requested."""
    assert 0 == run(write_config(tmp_path, lake_emulator))
    world = lake_emulator.world
    listed = {key.split("/", 1)[1] for key in lake_emulator.stats()["listed_compartments"]}
    assert {c.id for c in world.listable_compartments()} == listed
    assert not listed & {
        c.id for c in world.compartments if c.lifecycle_state == "DELETED" or not c.accessible
    }


def test_in_flight_bound_holds(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """With latency, the emulator never sees more requests at once than fetch.concurrency."""
    server = make_emulator(build_world(**WORLD), latency_ms=15)  # type: ignore[arg-type]
    assert 0 == run(write_config(tmp_path, server, fetch={"concurrency": 4, "page_size": 200}))
    assert 4 == server.stats()["max_in_flight"]


def test_shifting_items_and_trailing_empty_pages(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Items repeated across pages are dropped once; a token leading to an empty page is followed."""
    world = build_world(**WORLD)  # type: ignore[arg-type]
    server = make_emulator(world, shift_rate=0.3, trailing_empty_page=True)
    assert 0 == run(write_config(tmp_path, server, fetch={"page_size": 40}))
    assert multiset(expected_rows(world, "once")) == multiset(
        [normalise_actual(r, "once") for r in arrow_rows(tmp_path)]
    )
    manifest = manifest_of(tmp_path)
    assert (
        sum(c["duplicates_dropped"] for c in manifest["compartments"])
        == server.stats()["faults"]["shift"]
        > 0
    )


def test_rejects_are_kept_and_counted(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Malformed records go to _rejects/ with their reason; the rest are published."""
    world = build_world(**WORLD, bad_records=0.03)  # type: ignore[arg-type]
    server = make_emulator(world)
    assert 0 == run(write_config(tmp_path, server))
    manifest = manifest_of(tmp_path)
    lines = [
        orjson.loads(x)
        for f in partition(tmp_path).glob("_rejects/*.jsonl")
        for x in f.read_bytes().splitlines()
    ]
    assert manifest["rejects"] == len(lines) > 0
    assert all(line["reason"] and line["record"] and line["compartment_id"] for line in lines)
    published = {r["id"] for r in arrow_rows(tmp_path)}
    rejected = {line["record"].get("id") for line in lines}
    listed = [i for region in world.regions for i in world.platform[region]]
    listed += [i for images in world.custom.values() for i in images]
    assert len(published) + len(lines) == len(listed)
    assert {i.record().get("id") for i in listed} == published | rejected
    assert manifest["rows"] == len(published)


def test_rerun_replaces_the_partition(lake_emulator: EmulatorServer, tmp_path: Path) -> None:
    """Re-running a date replaces the partition wholesale: same rows, new run id."""
    config = write_config(tmp_path, lake_emulator)
    assert 0 == run(config)
    first = manifest_of(tmp_path)
    assert 0 == run(config)
    second = manifest_of(tmp_path)
    assert first["run_id"] != second["run_id"]
    assert first["rows"] == second["rows"] == len(arrow_rows(tmp_path))
    assert not (tmp_path / "lake" / "_staging").exists()
    assert not (tmp_path / "lake" / "_trash").exists()


def test_sharded_run_then_commit(
    lake_emulator: EmulatorServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """plan → three shards staged → commit publishes one partition equal to the ground truth."""
    config = write_config(tmp_path, lake_emulator)
    assert 0 == cli.main(["plan", "--config", str(config), "--shards", "3", "--run-id", "r-shards"])
    specs = orjson.loads(capsys.readouterr().out)
    assert ["0/3", "1/3", "2/3"] == [s["shard"] for s in specs]
    assert 82 == sum(s["listings"] for s in specs)
    for spec in specs[:2]:
        assert 0 == run(config, *spec["args"])
    assert not partition(tmp_path).exists()
    assert 1 == cli.main(["commit", "--config", str(config), "--run-id", "r-shards"]), (
        "a shard is missing"
    )
    assert 0 == run(config, *specs[2]["args"])
    assert 0 == cli.main(["commit", "--config", str(config), "--run-id", "r-shards"])
    assert multiset(expected_rows(lake_emulator.world, "once")) == multiset(
        [normalise_actual(r, "once") for r in arrow_rows(tmp_path)]
    )
    manifest = manifest_of(tmp_path)
    assert (3, "r-shards") == (manifest["shards"], manifest["run_id"])


def test_shards_that_cross_midnight_publish_the_planned_date(
    lake_emulator: EmulatorServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no configured date, `plan` fixes today's in every spec and its `run` arguments:
    shards started after midnight (UTC) stage under the planned date, and the commit publishes
    it. Without the date in the spec, the shards disagree and the commit fails."""
    import datetime as dt

    from connector import config as config_module

    config = write_config(tmp_path, lake_emulator, snapshot_date=None)
    today = dt.datetime.now(dt.UTC).date()
    assert 0 == cli.main(["plan", "--config", str(config), "--shards", "3", "--run-id", "r-night"])
    specs = orjson.loads(capsys.readouterr().out)
    assert {today.isoformat()} == {s["snapshot_date"] for s in specs}
    assert 0 == run(config, *specs[0]["args"])

    class Tomorrow(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Tomorrow:
            return cls.combine(today + dt.timedelta(days=1), dt.time(0, 5), tzinfo=tz)

    monkeypatch.setattr(config_module, "datetime", Tomorrow)
    for spec in specs[1:]:
        assert 0 == run(config, *spec["args"])
    assert 0 == cli.main(["commit", "--config", str(config), "--run-id", "r-night"])
    published = tmp_path / "lake" / "images" / f"snapshot_date={today.isoformat()}"
    assert (published / "_SUCCESS").exists()
    assert 3 == orjson.loads((published / "_manifest.json").read_bytes())["shards"]


def test_a_spec_and_a_different_configured_date_are_refused(
    lake_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A spec planned for one date, run with settings that name another, is a configuration
    error before any request, not a shard staged under either."""
    import connector

    settings = connector.load_config(write_config(tmp_path, lake_emulator))
    spec = connector.ShardSpec(0, 2, "r-dates", 1, ("us-ashburn-1",), 0.5, "2026-11-28")
    assert spec == connector.ShardSpec.from_dict(orjson.loads(orjson.dumps(spec.as_dict())))
    with pytest.raises(connector.ConfigError, match="planned for 2026-11-28"):
        connector.run(settings, shard=spec)
    assert not (tmp_path / "lake" / "_staging").exists()


def test_interrupted_swap_is_repaired(tmp_path: Path) -> None:
    """A partition left in _trash by a swap cut between its renames is restored by the next run."""
    lake = tmp_path / "lake"
    old = lake / "images" / f"snapshot_date={DATE}"
    old.mkdir(parents=True)
    (old / "_SUCCESS").write_text("")
    trash = lake / "_trash" / "r-1"
    trash.mkdir(parents=True)
    old.rename(trash / old.name)
    store = storage.resolve(str(lake))
    assert [f"images/{old.name}"] == housekeeping.start(store)
    assert (old / "_SUCCESS").exists()
    assert not (lake / "_trash" / "r-1").exists()


def test_each_worker_writes_its_own_files(lake_emulator: EmulatorServer, tmp_path: Path) -> None:
    """With three workers, each writes its own numbered files (part-00000 … part-00002 per
    region), in row groups that share one writer's memory budget; the manifest lists them all."""
    config = write_config(tmp_path, lake_emulator, fetch={"workers": 3, "page_size": 100})
    assert 0 == run(config)
    manifest = manifest_of(tmp_path)
    names = sorted(f["path"] for f in manifest["files"])
    on_disk = sorted(
        str(p.relative_to(partition(tmp_path))) for p in partition(tmp_path).rglob("*.parquet")
    )
    assert names == on_disk
    assert {p.rsplit("/", 1)[1] for p in names} == {
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    }
    assert sum(f["rows"] for f in manifest["files"]) == manifest["rows"]


def test_profile_region_and_filters_pass_through(
    lake_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """regions = [] lists the profile's region only; filters reach the API in camelCase."""
    world = lake_emulator.world
    config = write_config(
        tmp_path,
        lake_emulator,
        oci={"regions": []},
        filters={"operating_system": "Oracle Linux", "lifecycle_state": "available"},
        fetch={"platform_images": "every"},
    )
    assert 0 == run(config)
    expected = [
        r
        for r in expected_rows(world, "every")
        if r["region"] == world.home_region
        and r["operating_system"] == "Oracle Linux"
        and r["lifecycle_state"] == "AVAILABLE"
    ]
    assert expected
    assert multiset(expected) == multiset(
        [normalise_actual(r, "every") for r in arrow_rows(tmp_path)]
    )
    assert {"operatingSystem": "Oracle Linux", "lifecycleState": "AVAILABLE"} == manifest_of(
        tmp_path
    )["filters"]


def test_explicit_compartments_and_exclude(lake_emulator: EmulatorServer, tmp_path: Path) -> None:
    """scope.compartments skips discovery; scope.exclude leaves compartments out; the
    compartments dataset describes them (and their ancestors) from GetCompartment."""
    world = lake_emulator.world
    chosen = [c.id for c in world.listable_compartments()[1:5]]
    config = write_config(
        tmp_path,
        lake_emulator,
        scope={"compartments": chosen, "exclude": [chosen[0]]},
        oci={"regions": ["eu-frankfurt-1"]},
    )
    assert 0 == run(config)
    manifest = manifest_of(tmp_path)
    listed = {(c["region"], c["compartment_id"]) for c in manifest["compartments"]}
    assert {("eu-frankfurt-1", c) for c in chosen[1:]} == listed
    # Besides the ListImages pages, only GetCompartment: each chosen one and its ancestors.
    described = set(chosen)
    for compartment in chosen:
        parent = world.compartment(compartment).parent_id  # type: ignore[union-attr]
        while parent != world.tenancy_id:
            described.add(parent)
            parent = world.compartment(parent).parent_id  # type: ignore[union-attr]
    pages = sum(c["pages"] for c in manifest["compartments"])
    assert pages + len(described) == lake_emulator.stats()["requests"]
    dataset = ds.dataset(tmp_path / "lake" / "compartments", partitioning="hive").to_table()
    rows = {r["id"]: r for r in dataset.to_pylist()}
    assert described | {world.tenancy_id} == set(rows)
    assert "scope.exclude" == rows[chosen[0]]["_excluded_reason"]
    assert all(rows[c]["_exported"] for c in chosen[1:])
    assert all(world.path(c) == rows[c]["path"] for c in described)


def test_a_run_starts_with_the_long_listings_of_the_last_snapshot(
    lake_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """The newest snapshot's manifest says how many pages each listing took; the long ones go
    first, spread over the first half of the region's queue (a long listing taken last would
    run alone at the end of the fetch)."""
    config = write_config(tmp_path, lake_emulator, fetch={"concurrency": 1})
    assert 0 == run(config)  # a lake without a snapshot: discovery's order
    discovered = list(lake_emulator.stats()["listed_compartments"])
    region = lake_emulator.world.home_region
    mine = [key for key in discovered if key.startswith(f"{region}/")]
    longest, long = mine[-1], mine[-2]
    # Another lake, whose snapshot of the day before says those two took many pages.
    lake = tmp_path / "other-lake"
    day = lake / "images" / "snapshot_date=2026-01-01"
    day.mkdir(parents=True)
    hint = [
        {"region": region, "compartment_id": key.split("/", 1)[1], "pages": pages}
        for key, pages in ((long, 200), (longest, 300))
    ]
    (day / "_manifest.json").write_bytes(orjson.dumps({"compartments": hint}))
    config = write_config(
        tmp_path, lake_emulator, fetch={"concurrency": 1}, output={"uri": str(lake)}
    )
    lake_emulator.call(lake_emulator.emulator.reset_stats)
    assert 0 == run(config)
    order = [k for k in lake_emulator.stats()["listed_compartments"] if k.startswith(f"{region}/")]
    rest = mine[:-2]
    step = len(rest) // 2 // 2
    assert [longest, *rest[:step], long, *rest[step:]] == order
    assert step > 1


def test_listing_pages_are_only_a_hint(tmp_path: Path) -> None:
    """What the last snapshot says about its listings orders the next run; a lake without one,
    a manifest that cannot be read, or entries of another shape never fail it."""
    fs, base = pafs.LocalFileSystem(), str(tmp_path / "lake")
    assert {} == snapshots.listing_pages(fs, base)
    older = tmp_path / "lake" / "images" / "snapshot_date=2026-11-25"
    older.mkdir(parents=True)
    listings = [
        {"region": "r1", "compartment_id": "c1", "pages": 3},
        {"region": "r1", "compartment_id": "c2", "pages": 1},
        {"region": "r2", "compartment_id": "c1", "pages": 2},
        {"region": "r2", "compartment_id": "c3", "pages": "2"},
        {"region": None, "compartment_id": "c4", "pages": 5},
        ["r3", "c5", 4],
    ]
    (older / "_manifest.json").write_bytes(orjson.dumps({"compartments": listings}))
    # The newest partition's manifest is cut short (a disk that filled up): the one before serves.
    newer = tmp_path / "lake" / "images" / "snapshot_date=2026-11-26"
    newer.mkdir()
    (newer / "_manifest.json").write_bytes(b'{"compartments": [')
    assert {WorkItem("r1", "c1"): 3, WorkItem("r2", "c1"): 2} == snapshots.listing_pages(fs, base)
    (older / "_manifest.json").write_bytes(b'{"compartments": {"r1": 3}}')
    assert {} == snapshots.listing_pages(fs, base)


def test_long_listings_are_spread_over_the_first_half() -> None:
    """Long: more than a quarter of what each of the region's tasks fetches in all."""
    items = [WorkItem("r", f"c{n:02d}") for n in range(20)]
    assert items == long_listings_early(items, {}, 2)
    hint = {items[15]: 9, items[3]: 5, items[19]: 2, WorkItem("x", "a"): 9}
    # 9 + 5 + 2 + 17 pages on 2 tasks, a quarter of each task's 16.5 is 4.1 pages: c15 and c03
    # are long, c19 is not; the first half of the 18 others is spread between them. A hint for
    # a listing of another region changes nothing.
    rest = [item for item in items if item not in (items[15], items[3])]
    expected = [items[15], *rest[:4], items[3], *rest[4:]]
    assert expected == long_listings_early(items, hint, 2)


def test_long_listings_with_more_tasks_than_pages() -> None:
    """Where each task has less than a page to fetch, every listing counts as long: those the
    hint names first, the others (one page, as far as anyone knows) after, in their order."""
    items = [WorkItem("r", c) for c in ("a", "b", "c", "d")]
    hint = {items[2]: 3}
    ordered = long_listings_early(items, hint, 16)
    assert ["c", "a", "b", "d"] == [i.compartment_id for i in ordered]
