"""`oci-images diff` as a user runs it: two exports a day apart, then the changes between them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from connector.emulator import EmulatorServer, World, build_world
from connector.emulator.data import Image
from tests import helpers
from tests.helpers import WORLD, write_config

oci_images = partial(helpers.oci_images, "--log-level", "error", timeout=300)

DAY1, DAY2 = "2026-11-26", "2026-11-27"


def edit(image: Image, **fields: Any) -> Image:
    record = {**image.record(), **fields}
    return image._replace(
        json=orjson.dumps(record),
        id=record["id"],
        display_name=record.get("displayName"),
        lifecycle_state=record["lifecycleState"],
    )


def evolve(world: World) -> set[tuple[str, str, tuple[str, ...]]]:
    """A day of changes in one custom listing; the (change, id, fields) they must produce."""
    region, compartment = next(
        key for key in world.custom if len(world.custom[key]) >= 5 and key[0] == world.regions[-1]
    )
    images = world.custom[(region, compartment)]  # the served list itself
    removed = images.pop(0)
    images[0] = edit(images[0], displayName="renamed-by-a-human")
    images[1] = edit(images[1], freeformTags={"Owner": "someone-new"})
    images[2] = edit(images[2], lifecycleState="DISABLED")
    added = edit(images[3], id=images[3].id[:-6] + "zzzzzz", displayName="fresh")
    images.append(added)
    return {
        ("removed", removed.id, ()),
        ("changed", images[0].id, ("display_name",)),
        ("changed", images[1].id, ("freeform_tags",)),
        ("changed", images[2].id, ("lifecycle_state",)),
        ("added", added.id, ()),
    }


@pytest.mark.parametrize(
    "output",
    [
        {"format": "parquet"},
        {"format": "ndjson"},
        {"format": "ndjson", "compression": "gzip"},
        {"table_format": "delta"},
        {"table_format": "iceberg"},
    ],
    ids=["parquet", "ndjson", "ndjson-gzip", "delta", "iceberg"],
)
def test_diff_reports_a_days_changes(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, output: dict[str, str]
) -> None:
    """Removed, renamed, re-tagged, state-changed and added images, and nothing else."""
    world = build_world(**WORLD)  # type: ignore[arg-type]
    server = make_emulator(world)
    for day in (DAY1, DAY2):
        config = write_config(tmp_path, server, output={**output, "snapshot_date": day})
        result = oci_images("run", "--config", str(config))
        assert 0 == result.returncode, result.stderr
        if day == DAY1:
            expected = evolve(world)
    result = oci_images("diff", "--config", str(config), "--from", DAY1, "--to", DAY2)
    assert 0 == result.returncode, result.stderr
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert expected == {(r["change"], r["id"], tuple(r["changed_fields"])) for r in rows}
    assert f"diff {DAY1} → {DAY2}: added=1 removed=1 changed=3" in result.stderr
    renamed = next(r for r in rows if r["changed_fields"] == ["display_name"])
    assert {"display_name": "renamed-by-a-human"} == orjson.loads(renamed["after"])


def test_diff_of_an_unpublished_date_fails_with_the_reason(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Asking for a date that was never published exits 1 and names it."""
    config = write_config(tmp_path, emulator)
    result = oci_images("diff", "--config", str(config), "--from", "2020-01-01", "--to", DAY2)
    assert 1 == result.returncode
    assert "no published snapshot of images for 2020-01-01" in result.stderr


def test_diff_with_a_bad_date_is_a_usage_error(emulator: EmulatorServer, tmp_path: Path) -> None:
    """A date that is not YYYY-MM-DD exits 2 naming the option."""
    config = write_config(tmp_path, emulator)
    result = oci_images("diff", "--config", str(config), "--from", "yesterday", "--to", DAY2)
    assert 2 == result.returncode
    assert "--from: must be a date YYYY-MM-DD" in result.stderr


@pytest.mark.parametrize(
    "output",
    [
        {"format": "parquet"},
        {"format": "ndjson", "compression": "gzip"},
        {"table_format": "delta"},
        {"table_format": "iceberg"},
    ],
    ids=["parquet", "ndjson-gzip", "delta", "iceberg"],
)
def test_runs_publish_the_changes_dataset(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, output: dict[str, str]
) -> None:
    """With output.changes, each run publishes what changed since the previous snapshot (the
    first run: everything added), beside images and compartments, on every format."""
    world = build_world(**WORLD)  # type: ignore[arg-type]
    server = make_emulator(world)
    for day in (DAY1, DAY2):
        config = write_config(
            tmp_path, server, output={**output, "snapshot_date": day, "changes": True}
        )
        result = oci_images("run", "--config", str(config))
        assert 0 == result.returncode, result.stderr
        if day == DAY1:
            expected = evolve(world)
    lake = tmp_path / "lake"
    manifests = {
        name: orjson.loads((lake / name / f"snapshot_date={DAY2}" / "_manifest.json").read_bytes())
        for name in ("images", "changes", "compartments")
    }
    run_ids = {m["run_id"] for m in manifests.values()}
    assert 1 == len(run_ids), "the three datasets were published by one run"
    # The date is the folder's name: each date's changes are in their own folder.
    changes = read_dataset(lake / "changes" / f"snapshot_date={DAY2}", manifests["changes"])
    assert expected == {(r["change"], r["id"], tuple(r["changed_fields"])) for r in changes}
    first = orjson.loads(
        (lake / "changes" / f"snapshot_date={DAY1}" / "_manifest.json").read_bytes()
    )
    images_day1 = orjson.loads(
        (lake / "images" / f"snapshot_date={DAY1}" / "_manifest.json").read_bytes()
    )
    assert images_day1["rows"] == first["rows"], "the first snapshot is all added"
    assert {"changes", "compartments"} == set(manifests["images"]["datasets"])


@pytest.mark.parametrize(
    "output",
    [
        {"format": "parquet"},
        {"format": "ndjson"},
        {"table_format": "delta"},
        {"table_format": "iceberg"},
    ],
    ids=["parquet", "ndjson", "delta", "iceberg"],
)
def test_rotated_platform_images_are_retired(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, output: dict[str, str]
) -> None:
    """A month on, every platform line published a new build and its oldest left the
    listings: in the changes dataset and in `diff`, each that left is `retired` (not
    `removed`), each new one `added`, on every format."""
    world = build_world(**WORLD, reference_date=date.fromisoformat(DAY1))  # type: ignore[arg-type]
    server = make_emulator(world)
    listed = {}
    for day in (DAY1, DAY2):
        listed[day] = {(r, i.id) for r in world.regions for i in world.platform[r]}
        config = write_config(
            tmp_path, server, output={**output, "snapshot_date": day, "changes": True}
        )
        result = oci_images("run", "--config", str(config))
        assert 0 == result.returncode, result.stderr
        if day == DAY1:
            world.publish_platform(date.fromisoformat(DAY1) + timedelta(days=30))
    retired = {("retired", i) for _, i in listed[DAY1] - listed[DAY2]}
    added = {("added", i) for _, i in listed[DAY2] - listed[DAY1]}
    assert retired
    assert len(retired) == len(added)
    partition = tmp_path / "lake" / "changes" / f"snapshot_date={DAY2}"
    rows = read_dataset(partition, {})
    assert retired | added == {(r["change"], r["id"]) for r in rows}
    assert all(r["_is_platform"] and r["compartment_id"] is None for r in rows)
    result = oci_images("diff", "--config", str(config), "--from", DAY1, "--to", DAY2)
    assert 0 == result.returncode, result.stderr
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert retired | added == {(r["change"], r["id"]) for r in lines}
    assert f"removed=0 changed=0 retired={len(retired)}" in result.stderr


def read_dataset(partition: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a companion dataset's partition, following its manifest."""
    import pyarrow.fs as pafs

    from connector import schema
    from connector.lake import snapshots

    document = orjson.loads((partition / "_manifest.json").read_bytes())
    batches = snapshots.read_batches(
        pafs.LocalFileSystem(), str(partition), document["files"], schema.CHANGES_SCHEMA
    )
    return [row for batch in batches for row in batch.to_pylist()]


@pytest.mark.parametrize("output", [{"format": "parquet"}, {"table_format": "delta"}])
def test_snapshots_lists_what_is_published(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, output: dict[str, str]
) -> None:
    """`snapshots` lists each published date with its status, rows, files and run, as the
    manifests say (a partition without a marker is not published); `diff` of a missing date
    names the dates that exist."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    for day in (DAY1, DAY2):
        config = write_config(tmp_path, server, output={**output, "snapshot_date": day})
        assert 0 == oci_images("run", "--config", str(config)).returncode
    images = tmp_path / "lake" / "images"
    (images / f"snapshot_date={DAY1}" / "_SUCCESS").rename(
        images / f"snapshot_date={DAY1}" / "_PARTIAL"
    )
    (images / "snapshot_date=2026-11-28").mkdir()  # a commit killed before its commit point
    manifests = {
        day: orjson.loads((images / f"snapshot_date={day}" / "_manifest.json").read_bytes())
        for day in (DAY1, DAY2)
    }
    result = oci_images("snapshots", "--config", str(config), "--format", "json")
    assert 0 == result.returncode, result.stderr
    listed = orjson.loads(result.stdout)
    assert [(DAY1, "partial"), (DAY2, "complete")] == [
        (s["snapshot_date"], s["status"]) for s in listed
    ]
    for entry in listed:
        manifest = manifests[entry["snapshot_date"]]
        assert manifest["rows"] > 0
        assert (manifest["rows"], manifest["run_id"]) == (entry["rows"], entry["run_id"])
        assert entry["files"] >= 1
    text = oci_images("snapshots", "--config", str(config)).stdout.splitlines()
    assert text[0].split() == ["snapshot_date", "status", "rows", "files", "run_id"]
    assert text[2].split() == [
        DAY2, "complete", str(listed[1]["rows"]), str(listed[1]["files"]), listed[1]["run_id"]
    ]  # fmt: skip
    result = oci_images("diff", "--config", str(config), "--from", "2026-11-20", "--to", DAY2)
    assert 1 == result.returncode
    assert f"published: {DAY1}, {DAY2}" in result.stderr


def test_snapshots_of_an_empty_lake(emulator: EmulatorServer, tmp_path: Path) -> None:
    """Nothing published: an empty JSON array, and a sentence rather than an empty table."""
    config = write_config(tmp_path, emulator)
    result = oci_images("snapshots", "--config", str(config), "--format", "json")
    assert (0, "[]\n") == (result.returncode, result.stdout)
    result = oci_images("snapshots", "--config", str(config))
    assert ("", 0) == (result.stdout, result.returncode)
    assert "no snapshot is published" in result.stderr
    diff = oci_images("diff", "--config", str(config), "--from", DAY1, "--to", DAY2)
    assert "none is published yet" in diff.stderr
