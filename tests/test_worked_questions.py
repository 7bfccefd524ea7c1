"""scripts/worked_questions.py, the README's three questions: its answers are the emulator's
ground truth, computed here from the served listings rather than through the connector."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import orjson
import pytest

from connector import schema
from connector.emulator import World

ROOT = Path(__file__).resolve().parent.parent
TODAY = date(2026, 11, 27)
SMALL = {"compartments": 24, "seed": 7, "custom_scale": 0.2}
COLUMN_OF = {c.source: c.name for c in schema.API_COLUMNS if "." not in c.source}


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "worked_questions", ROOT / "scripts" / "worked_questions.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def served(world: World) -> dict[tuple[str, str], dict[str, Any]]:
    """Every custom image the emulator serves now, by (region, id)."""
    return {
        (region, image.id): image.record()
        for region, compartment_id in world.custom
        for image in world.custom[(region, compartment_id)]
    }


def per_path(world: World, records: list[dict[str, Any]]) -> dict[str, tuple[int, int, datetime]]:
    """(images, billable GB, oldest creation time) per compartment path."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[world.path(record["compartmentId"])].append(record)
    return {
        path: (
            len(group),
            sum(r["billableSizeInGBs"] for r in group),
            min(created(r) for r in group),
        )
        for path, group in groups.items()
    }


def created(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["timeCreated"].replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, ModuleType, str]:
    """The script's main on a small tenancy, once for the module: its answers, the script
    module and what it printed."""
    script = load_script()
    lake = tmp_path_factory.mktemp("worked") / "lake"
    argv = ["--output", str(lake), "--today", TODAY.isoformat()]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.items()]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        answers = script.main(argv)
    return answers, script, printed.getvalue()


def test_custom_images_per_compartment_path(run: tuple[Any, ModuleType, str]) -> None:
    """(a) is the top 10 of the served custom images counted per compartment path, and the
    whole of today's snapshot holds exactly the served custom images."""
    answers, script, _ = run
    today = list(served(answers.world).values())
    truth = per_path(answers.world, today)
    expected = sorted(
        ((path, n, gb) for path, (n, gb, _) in truth.items()), key=lambda t: (-t[1], t[0])
    )[:10]
    columns, rows = answers.results[next(iter(script.QUESTIONS))]
    assert ["path", "custom_images", "billable_gb"] == columns
    assert expected == [tuple(row) for row in rows]
    snapshot = (
        duckdb.connect()
        .execute(
            f"SELECT count(*) FROM read_parquet('{answers.lake}/images/*/*/*.parquet',"
            " hive_partitioning = true)"
            f" WHERE snapshot_date = DATE '{TODAY}' AND NOT _is_platform"
        )
        .fetchall()
    )
    assert [(len(today),)] == snapshot
    assert len(today) == sum(n for n, _, _ in truth.values())


def test_old_images_still_available(run: tuple[Any, ModuleType, str]) -> None:
    """(b) counts the AVAILABLE custom images created more than 90 days before today."""
    answers, script, _ = run
    cutoff = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC) - timedelta(days=90)
    old = [
        r
        for r in served(answers.world).values()
        if r["lifecycleState"] == "AVAILABLE" and created(r) < cutoff
    ]
    truth = per_path(answers.world, old)
    expected = sorted(
        ((path, n, gb, oldest.date()) for path, (n, gb, oldest) in truth.items()),
        key=lambda t: (-t[2], t[0]),
    )[:10]
    assert expected, "the realistic data set has images older than 90 days"
    columns, rows = answers.results[list(script.QUESTIONS)[1]]
    assert ["path", "images", "billable_gb", "oldest"] == columns
    assert expected == [tuple(row) for row in rows]


def test_changes_since_yesterday_are_the_days_changes(run: tuple[Any, ModuleType, str]) -> None:
    """(c) reports exactly what differs between yesterday's tenancy (rebuilt from the same
    arguments) and today's: the rename, re-tag, disabling, deletion and two new builds."""
    answers, script, _ = run
    before = served(script.tenancy(TODAY, **SMALL))
    after = served(answers.world)
    truth: set[tuple[str, str, str, tuple[str, ...]]] = set()
    rows: set[tuple[str, str, str, str, tuple[str, ...]]] = set()
    for key in before.keys() | after.keys():
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        change = "added" if old is None else "removed" if new is None else "changed"
        fields: tuple[str, ...] = ()
        if old is not None and new is not None:
            fields = tuple(
                sorted(COLUMN_OF[k] for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            )
        record = new or old
        assert record is not None
        truth.add((change, key[0], key[1], fields))
        path = answers.world.path(record["compartmentId"])
        rows.add((change, key[0], path, record["displayName"], fields))
    assert truth == {(c.change, c.region, c.id, c.changed_fields) for c in answers.applied}
    assert ["added", "added", "changed", "changed", "changed", "removed"] == sorted(
        change for change, *_ in truth
    )
    assert {("display_name",), ("freeform_tags",), ("lifecycle_state",)} == {
        fields for change, _, _, fields in truth if change == "changed"
    }
    columns, result = answers.results[list(script.QUESTIONS)[2]]
    assert [
        "change",
        "region",
        "path",
        "display_name",
        "changed_fields",
        "before",
        "after",
    ] == columns
    assert rows == {(r[0], r[1], r[2], r[3], tuple(r[4])) for r in result}
    disabled = next(r for r in result if r[4] == ["lifecycle_state"])
    assert {"lifecycle_state": "AVAILABLE"} == orjson.loads(disabled[5])
    assert {"lifecycle_state": "DISABLED"} == orjson.loads(disabled[6])


def test_prints_each_query_and_its_table(run: tuple[Any, ModuleType, str]) -> None:
    """Each question is printed with its query, as run, and its result as a Markdown table."""
    answers, script, printed = run
    for title, query in script.QUESTIONS.items():
        assert f"-- {title}\n{query.format(today=TODAY).strip()};\n\n" in printed
        columns, rows = answers.results[title]
        assert script.markdown(columns, rows) in printed
    assert "| change  | region " in printed
