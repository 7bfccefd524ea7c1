"""Three questions an OCI cost or security analyst asks every morning, answered with DuckDB.

Everything runs on this machine: the embedded emulator serves a realistic tenancy on loopback,
the connector exports it for yesterday, a day of changes is applied (an image renamed, one
re-tagged, one disabled, one deleted, two new builds), the connector exports it again for today
with ``output.changes = true``, and DuckDB answers:

  (a) how many custom images each compartment holds, by path;
  (b) which images older than 90 days are still AVAILABLE (and billed);
  (c) what changed since yesterday.

Each query and its result are printed (as Markdown tables). ``make worked-questions`` runs it::

    python scripts/worked_questions.py [--output DIR] [--today YYYY-MM-DD]

The lake stays in ``--output`` when given, else in a temporary directory removed at the end.
The same ``--today`` (and the other options) gives the same answers.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson

import connector
from connector import logs
from connector.emulator import EmulatorServer, World, build_world
from connector.emulator.data import Image, ocid, region_code

REGIONS = ("us-ashburn-1", "eu-frankfurt-1")

QUESTIONS: dict[str, str] = {
    "(a) Custom images per compartment path, today (top 10)": """
SELECT c.path,
       count(*) AS custom_images,
       sum(i.billable_size_in_gbs) AS billable_gb
FROM read_parquet('images/*/*/*.parquet', hive_partitioning = true) AS i
JOIN read_parquet('compartments/*/*.parquet', hive_partitioning = true) AS c
  ON c.id = i.compartment_id AND c.snapshot_date = i.snapshot_date
WHERE i.snapshot_date = DATE '{today}' AND NOT i._is_platform
GROUP BY c.path
ORDER BY custom_images DESC, c.path
LIMIT 10""",
    "(b) Custom images older than 90 days, still AVAILABLE (top 10 by billable GB)": """
SELECT c.path,
       count(*) AS images,
       sum(i.billable_size_in_gbs) AS billable_gb,
       min(i.time_created)::DATE AS oldest
FROM read_parquet('images/*/*/*.parquet', hive_partitioning = true) AS i
JOIN read_parquet('compartments/*/*.parquet', hive_partitioning = true) AS c
  ON c.id = i.compartment_id AND c.snapshot_date = i.snapshot_date
WHERE i.snapshot_date = DATE '{today}' AND NOT i._is_platform
  AND i.lifecycle_state = 'AVAILABLE'
  AND i.time_created < DATE '{today}' - INTERVAL 90 DAY
GROUP BY c.path
ORDER BY billable_gb DESC, c.path
LIMIT 10""",
    "(c) What changed since yesterday": """
SELECT ch.change, ch.region, c.path, ch.display_name,
       ch.changed_fields, ch.before, ch.after
FROM read_parquet('changes/*/*.parquet', hive_partitioning = true) AS ch
LEFT JOIN read_parquet('compartments/*/*.parquet', hive_partitioning = true) AS c
  ON c.id = ch.compartment_id AND c.snapshot_date = ch.snapshot_date
WHERE ch.snapshot_date = DATE '{today}'
ORDER BY ch.change, region, c.path, ch.display_name""",
}


@dataclass(frozen=True, slots=True)
class Change:
    """One change applied to the emulated tenancy, as the changes dataset must report it."""

    change: str
    region: str
    id: str
    changed_fields: tuple[str, ...] = ()


@dataclass(slots=True)
class Answers:
    """What a run did and found: the world, the changes applied, each question's result."""

    world: World
    lake: Path
    applied: list[Change]
    results: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = field(default_factory=dict)


# -- a day in the life of the tenancy ------------------------------------------------------------


def edited(image: Image, **fields: Any) -> Image:
    """``image`` with some API fields replaced, its served keys kept in step."""
    record = {**image.record(), **fields}
    created = datetime.fromisoformat(record["timeCreated"].replace("Z", "+00:00"))
    return image._replace(
        json=orjson.dumps(record),
        id=record["id"],
        display_name=record["displayName"],
        lifecycle_state=record["lifecycleState"],
        created_us=(created - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1),
    )


def a_new_build(previous: Image, region: str, built: datetime, seed: str) -> Image:
    """A new image built from the same pipeline as ``previous``, at ``built``."""
    record = previous.record()
    stamp = built.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    defined = dict(record.get("definedTags") or {})
    if "Oracle-Tags" in defined:
        defined["Oracle-Tags"] = {**defined["Oracle-Tags"], "CreatedOn": stamp}
    return edited(
        previous,
        id=ocid("image", random.Random(seed), region_code(region)),
        displayName=re.sub(
            r"\d{4}-\d{2}-\d{2}.*$", built.date().isoformat(), record["displayName"]
        ),
        timeCreated=stamp,
        lifecycleState="AVAILABLE",
        definedTags=defined,
    )


def a_day_of_changes(world: World, today: date) -> list[Change]:
    """Change the served listings as a day of work would, and return what was changed."""

    used: set[str] = set()

    def listing(region: str, environment: str) -> list[Image]:
        # A listing of the region with a few images, under that environment if one has them;
        # it is the list the emulator serves, so editing it changes what the next run sees.
        listable = world.listable_compartments()
        candidates = [c for c in listable if world.custom.count(region, c.id) >= 2]
        candidates.sort(key=lambda c: f"/{environment}" not in world.path(c.id))
        chosen = next(c for c in candidates if c.id not in used)
        used.add(chosen.id)
        return world.custom[(region, chosen.id)]

    first, second = world.regions[0], world.regions[-1]
    yesterday = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(days=1)
    applied = []

    prod = listing(first, "Prod")  # oldest first: the newest build is last
    newest = prod[-1]
    prod[-1] = edited(newest, displayName=f"{newest.display_name}-golden")
    applied.append(Change("changed", first, newest.id, ("display_name",)))
    prod.append(a_new_build(newest, first, yesterday + timedelta(hours=14, minutes=7), "new/1"))
    applied.append(Change("added", first, prod[-1].id))

    staging = listing(first, "Staging")
    tags = staging[-1].record()["freeformTags"]
    cost_center = "CC-7301" if tags.get("CostCenter") == "CC-7300" else "CC-7300"
    staging[-1] = edited(staging[-1], freeformTags={**tags, "CostCenter": cost_center})
    applied.append(Change("changed", first, staging[-1].id, ("freeform_tags",)))

    dev = listing(second, "Dev")
    old = next(i for i, image in enumerate(dev) if image.lifecycle_state == "AVAILABLE")
    dev[old] = edited(dev[old], lifecycleState="DISABLED")
    applied.append(Change("changed", second, dev[old].id, ("lifecycle_state",)))

    sandbox = listing(second, "Sandbox")
    applied.append(Change("removed", second, sandbox.pop(0).id))
    built = yesterday + timedelta(hours=16, minutes=42)
    sandbox.append(a_new_build(sandbox[-1], second, built, "new/2"))
    applied.append(Change("added", second, sandbox[-1].id))
    return applied


# -- export and ask ------------------------------------------------------------------------------


def export(server: EmulatorServer, lake: Path, day: date) -> None:
    """One nightly run against the emulator, as a configuration file would describe it."""
    settings = connector.load_config(
        values={
            "oci": {
                "config_file": str(server.config_file),
                "endpoint": server.endpoint_template,
                "regions": ["subscribed"],
            },
            "output": {"uri": str(lake), "snapshot_date": day.isoformat(), "changes": True},
        }
    )
    outcome = connector.run(settings)
    if not outcome.published or outcome.manifest is None:
        raise SystemExit(f"the export of {day} was not published: {outcome.message}")
    print(f"exported {day}: {outcome.manifest.rows} image rows ({outcome.status})", file=sys.stderr)


def ask(lake: Path, today: date) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
    """Each question's columns and rows."""
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")  # day boundaries in UTC, as the snapshot dates are
    db.execute(f"SET file_search_path = '{lake}'")  # so that the queries read as printed
    results = {}
    for title, query in QUESTIONS.items():
        relation = db.sql(query.format(today=today.isoformat()))
        results[title] = (relation.columns, relation.fetchall())
    return results


def markdown(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> str:
    """A result as an aligned Markdown table."""

    def text(value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(map(str, value))
        return "" if value is None else str(value).replace("|", "\\|")

    cells = [list(columns)] + [[text(v) for v in row] for row in rows]
    widths = [max(len(row[n]) for row in cells) for n in range(len(columns))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def tenancy(today: date, *, compartments: int, seed: int, custom_scale: float) -> World:
    """The emulated tenancy as it stood at yesterday's run (the same arguments, the same world)."""
    return build_world(
        seed=seed,
        compartments=compartments,
        regions=REGIONS,
        platform_images=150,
        custom_scale=custom_scale,
        dataset="realistic",
        reference_date=today - timedelta(days=1),  # every image existed by yesterday's run
        cache_mb=1024,  # the edited listings must stay the ones served
    )


def worked_questions(
    lake: Path, today: date, *, compartments: int, seed: int, custom_scale: float
) -> Answers:
    """Build the tenancy, export yesterday, change it, export today, answer the questions."""
    world = tenancy(today, compartments=compartments, seed=seed, custom_scale=custom_scale)
    with (
        tempfile.TemporaryDirectory(prefix="oci-emulator-") as keys,
        EmulatorServer(world, oci_config_dir=keys) as server,
    ):
        export(server, lake, today - timedelta(days=1))
        applied = a_day_of_changes(world, today)
        export(server, lake, today)
    return Answers(world, lake, applied, ask(lake, today))


def main(argv: Sequence[str] | None = None) -> Answers:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", help="keep the lake here (default: a temporary directory)")
    parser.add_argument("--today", type=date.fromisoformat, help="YYYY-MM-DD (default: today)")
    parser.add_argument("--compartments", type=int, default=60)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--custom-scale", type=float, default=0.25)
    args = parser.parse_args(argv)
    logs.configure("warning")
    today = args.today or datetime.now(UTC).date()
    options = {"compartments": args.compartments, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="oci-images-lake-") as scratch:
        lake = Path(args.output or scratch).resolve()
        answers = worked_questions(lake, today, **options, custom_scale=args.custom_scale)
    counts = answers.world.counts()
    print(
        f"-- {counts['regions']} regions, {counts['compartments']} compartments (root included),"
        f" {counts['custom_images']} custom images yesterday; today is {today}"
    )
    for title, (columns, rows) in answers.results.items():
        query = QUESTIONS[title].format(today=today.isoformat()).strip()
        print(f"\n-- {title}\n{query};\n\n{markdown(columns, rows)}")
    return answers


if __name__ == "__main__":
    main()
