"""The emulator's data sets: the realistic one stays within a real tenancy's ranges, the
platform catalogue has the real shape, and generation is lazy and bounded at any scale."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connector.emulator import World, build_world
from connector.emulator.data import Image

TODAY = datetime.now(UTC).date()
REGIONS = ("us-ashburn-1", "eu-frankfurt-1")
NAME = re.compile(
    r"^(prod|dev|test|staging|dr|sandbox)-[a-z-]+-[a-z]+-[a-z]+[0-9]+-\d{4}-\d{2}-\d{2}(-v\d)?$"
)
FREEFORM_KEYS = {"Environment", "Project", "Owner", "CostCenter", "CreatedWith"}
LAUNCH_MODES = {"NATIVE", "EMULATED", "PARAVIRTUALIZED", "CUSTOM", "ACCELERATEDPV"}


@pytest.fixture(scope="module")
def realistic() -> World:
    # TODAY is taken once: a run that crosses midnight must not build the world on another day.
    return build_world(
        seed=8,
        compartments=120,
        regions=REGIONS,
        platform_images=150,
        dataset="realistic",
        reference_date=TODAY,
    )


def custom_records(world: World) -> list[dict[str, Any]]:
    return [
        image.record()
        for region in world.regions
        for comp in world.listable_compartments()
        for image in world.custom.get((region, comp.id), [])
    ]


def parse(stamp: str) -> datetime:
    head, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "." + fraction[:6] + "+00:00")


class TestRealistic:
    def test_sizes_are_a_few_gb_to_a_few_hundred(self, realistic: World) -> None:
        """sizeInMBs spans about 8 GB to 500 GB; the billable size never exceeds it."""
        records = custom_records(realistic)
        assert len(records) > 1000
        sizes = [r["sizeInMBs"] for r in records]
        assert 4 * 1024 <= min(sizes)
        assert max(sizes) <= 600 * 1024
        assert len(set(sizes)) >= 8
        for r in records:
            assert 1 <= r["billableSizeInGBs"] <= -(-r["sizeInMBs"] // 1024)
        total_tb = sum(r["billableSizeInGBs"] for r in records) / 1024
        assert total_tb < len(records)  # on average well under a TB per image

    def test_dates_up_to_today_with_a_recent_bulk(self, realistic: World) -> None:
        """Every time lies before today's midnight; most images are recent, some years old."""
        midnight = datetime(TODAY.year, TODAY.month, TODAY.day, tzinfo=UTC)
        records = custom_records(realistic)
        times = [parse(r["timeCreated"]) for r in records]
        platform = [
            parse(i.record()["timeCreated"]) for r in REGIONS for i in realistic.platform[r]
        ]
        assert max(times + platform) < midnight
        ages = sorted((midnight - t).days for t in times)
        assert ages[len(ages) // 2] < 120
        assert ages[-1] > 365
        old = sum(age > 90 for age in ages) / len(ages)
        assert 0.1 < old < 0.7
        created_on = [
            r["definedTags"]["Oracle-Tags"]["CreatedOn"]
            for r in records
            if "Oracle-Tags" in r["definedTags"]
        ]
        assert created_on
        by_id = {r["id"]: r for r in records}
        assert all(
            r["definedTags"]["Oracle-Tags"]["CreatedOn"][:23] == r["timeCreated"][:23]
            for r in by_id.values()
            if "Oracle-Tags" in r["definedTags"]
        )

    def test_reference_date_makes_it_deterministic(self) -> None:
        """Seed and reference date fix the data; another date moves the times with it."""
        args = {"seed": 3, "compartments": 6, "dataset": "realistic"}
        first = build_world(**args, reference_date=date(2026, 3, 1))  # type: ignore[arg-type]
        again = build_world(**args, reference_date=date(2026, 3, 1))  # type: ignore[arg-type]
        later = build_world(**args, reference_date=date(2026, 4, 1))  # type: ignore[arg-type]
        assert list(first.truth()) == list(again.truth())
        stamps = [r["timeCreated"] for r in custom_records(first)]
        assert max(stamps) < "2026-03-01"
        assert max(r["timeCreated"] for r in custom_records(later)) > "2026-03-01"

    def test_today_is_the_default_reference(self) -> None:
        """Without a reference date, the realistic data set ends at today's midnight (UTC)."""
        before = datetime.now(UTC).date()
        world = build_world(seed=3, compartments=2, dataset="realistic")
        after = datetime.now(UTC).date()
        assert world.reference.date() in {before, after}
        assert (world.reference.hour, world.reference.minute, world.reference.second) == (0, 0, 0)

    def test_names_tags_and_enums_look_real(self, realistic: World) -> None:
        """Names such as prod-payments-web-ol9-2026-10-14, the tags teams set, known enums."""
        records = custom_records(realistic)
        for r in records:
            assert NAME.match(r["displayName"]), r["displayName"]
            assert set(r["freeformTags"]) <= FREEFORM_KEYS
            assert set(r["definedTags"]) <= {"Oracle-Tags", "Operations", "Security"}
            assert r["launchMode"] in LAUNCH_MODES
            assert r["listingType"] == "NONE"
        assert sum("Oracle-Tags" in r["definedTags"] for r in records) > len(records) / 2
        assert sum("CostCenter" in str(r["definedTags"]) for r in records) > len(records) / 10
        assert {"Environment", "Project", "Owner"} <= {
            k for r in records for k in r["freeformTags"]
        }

    def test_compartments_form_a_named_tree(self, realistic: World) -> None:
        """Departments, then environments, then applications; names unique among siblings."""
        comps = realistic.compartments
        depth_one = {c.name for c in comps if c.depth == 1}
        assert {"Finance", "Engineering"} <= depth_one
        assert {c.name for c in comps if c.depth == 2} <= {
            "Prod", "Dev", "Test", "Staging", "DR", "Sandbox",
        }  # fmt: skip
        siblings = Counter((c.parent_id, c.name) for c in comps[1:])
        assert max(siblings.values()) == 1
        paths = {realistic.path(c.id) for c in comps}
        assert "root/Finance/Prod" in paths
        assert all(p == "root" or p.startswith("root/") for p in paths)
        parents = {c.parent_id for c in comps}
        gone = [c for c in comps if c.lifecycle_state == "DELETED" or not c.accessible]
        assert gone
        assert all(c.id not in parents for c in gone)


class TestPlatformCatalogue:
    def test_three_newest_builds_of_each_line(self, realistic: World) -> None:
        """150 platform images per region: 50 lines (distribution, version, variant) x 3."""
        for region in REGIONS:
            names = [i.display_name or "" for i in realistic.platform[region]]
            assert len(names) == 150
            lines = Counter(re.sub(r"-\d{4}\.\d{2}\.\d{2}-\d$", "", n) for n in names)
            assert set(lines.values()) == {3}
            assert len(lines) == 50
            systems = {i.operating_system for i in realistic.platform[region]}
            assert {"Oracle Linux", "Canonical Ubuntu", "Windows", "Rocky Linux", "CentOS",
                    "Oracle Autonomous Linux"} <= systems  # fmt: skip
            assert any("aarch64" in n for n in names)
            assert any("GPU" in n for n in names)
            assert any("Minimal" in n for n in names)

    def test_the_same_in_every_listing_of_a_region(self, realistic: World) -> None:
        """Each listing of a region opens with the region's catalogue, newest first."""
        for region in REGIONS:
            platform = realistic.platform[region]
            for comp in realistic.listable_compartments()[:10]:
                assert realistic.listing(region, comp.id)[: len(platform)] == platform
            stamps = [i.created_us for i in platform]
            assert stamps == sorted(stamps, reverse=True)
        assert {i.id for i in realistic.platform[REGIONS[0]]}.isdisjoint(
            {i.id for i in realistic.platform[REGIONS[1]]}
        )

    @pytest.mark.parametrize("count", [15, 60, 200])
    def test_any_count(self, count: int) -> None:
        """A short catalogue still spans distributions; a long one reaches older builds."""
        world = build_world(seed=1, compartments=1, platform_images=count, dataset="realistic")
        images = world.platform[world.home_region]
        assert count == len(images)
        assert len({i.operating_system for i in images}) >= 2
        assert len({i.id for i in images}) == count


class TestPlatformRotation:
    """Oracle publishes a new build of each line about monthly; ListImages then lists the new
    one and no longer the oldest. The emulator's catalogue follows its date."""

    DAY = date(2026, 11, 26)

    @staticmethod
    def catalogue(world: World) -> dict[str, dict[str, bytes]]:
        return {r: {i.id: i.json for i in world.platform[r]} for r in world.regions}

    @pytest.mark.parametrize("dataset", ["awkward", "realistic"])
    def test_a_date_fixes_the_catalogue(self, dataset: str) -> None:
        """The same seed and date give the same catalogue, whether the world was built on that
        date or moved to it."""
        args: dict[str, Any] = {"seed": 5, "compartments": 2, "regions": REGIONS}
        built = build_world(**args, dataset=dataset, reference_date=self.DAY)
        moved = build_world(**args, dataset=dataset, reference_date=self.DAY - timedelta(days=40))
        assert self.catalogue(built) != self.catalogue(moved)
        moved.publish_platform(self.DAY)
        assert self.catalogue(built) == self.catalogue(moved)
        assert moved.platform_date == self.DAY

    def test_a_month_later_each_line_has_one_new_build_and_one_retired(self) -> None:
        """30 days on, every line published one build: it is listed, the line's oldest is
        not, and the builds listed on both days are the same records."""
        world = build_world(seed=5, compartments=4, regions=REGIONS, reference_date=self.DAY)
        before = self.catalogue(world)
        world.publish_platform(self.DAY + timedelta(days=30))
        after = self.catalogue(world)
        for region in REGIONS:
            lines = {re.sub(r"-\d{4}\.\d{2}\.\d{2}-\d$", "", i.display_name or "")
                     for i in world.platform[region]}  # fmt: skip
            gone = before[region].keys() - after[region].keys()
            new = after[region].keys() - before[region].keys()
            assert len(gone) == len(new) == len(lines) == 20
            kept = before[region].keys() & after[region].keys()
            assert all(before[region][i] == after[region][i] for i in kept)
            month_end = datetime(2026, 12, 26, tzinfo=UTC).timestamp() * 1_000_000
            assert all(i.created_us < month_end for i in world.platform[region])

    def test_custom_images_do_not_change_when_platform_images_rotate(self) -> None:
        """Custom images are built from the catalogue of the world's creation, however late
        they are first generated."""
        args: dict[str, Any] = {"seed": 5, "compartments": 6, "regions": REGIONS}
        still = build_world(**args, reference_date=self.DAY)
        rotated = build_world(**args, reference_date=self.DAY)
        rotated.publish_platform(self.DAY + timedelta(days=45))
        for region in REGIONS:
            for compartment in still.listable_compartments():
                assert still.generate_custom(region, compartment.id) == rotated.generate_custom(
                    region, compartment.id
                )
        assert sum(len(still.generate_custom(r, c.id)) for r in REGIONS for c in still.compartments)

    def test_lines_rotate_on_their_own_days(self) -> None:
        """Day by day, only the lines whose build day it is rotate: over 30 days, each line
        once, and never all on one day."""
        world = build_world(seed=5, compartments=1, regions=REGIONS, reference_date=self.DAY)
        per_day = []
        before = self.catalogue(world)
        for days in range(1, 31):
            world.publish_platform(self.DAY + timedelta(days=days))
            after = self.catalogue(world)
            per_day.append(sum(len(before[r].keys() - after[r].keys()) for r in REGIONS))
            before = after
        assert 2 * 20 == sum(per_day)
        assert max(per_day) < 2 * 20 // 2


class TestScale:
    def test_generation_is_lazy_and_bounded(self) -> None:
        """A 5,000 x 4 world generates nothing up front, and its cache stays within bounds."""
        world = build_world(
            seed=5,
            compartments=5000,
            regions=("us-ashburn-1", "eu-frankfurt-1", "uk-london-1", "us-phoenix-1"),
            platform_images=150,
            dataset="realistic",
            cache_mb=2,
        )
        counts = world.counts()
        assert counts["compartments"] == 5001
        assert counts["custom_images"] > 1_000_000
        assert world.custom.cached_bytes == 0
        first = world.listable_compartments()[1].id
        listing = [i.id for i in world.listing("uk-london-1", first)]
        largest = 0
        for comp in world.listable_compartments()[:300]:
            images = world.custom.get(("us-phoenix-1", comp.id), [])
            # JSON plus the Python objects around it, which take less than the JSON.
            largest = max(largest, 2 * sum(len(i.json) for i in images))
            assert world.custom.cached_bytes <= 2 * 2**20 + largest
        assert listing == [i.id for i in world.listing("uk-london-1", first)]

    def test_listings_served_whole_are_evicted_first(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Listings still being paged stay cached; those whose last page went out leave first."""
        probe = build_world(seed=5, compartments=60, dataset="realistic")
        region = probe.home_region
        first, second, third = [
            c.id for c in probe.listable_compartments() if probe.custom.count(region, c.id)
        ][:3]
        for cid in (first, second, third):
            probe.custom[(region, cid)]
        # Room for all three but one byte: inserting the third evicts exactly one listing.
        room = probe.custom.cached_bytes - 1
        world = build_world(seed=5, compartments=60, dataset="realistic", cache_mb=room / 2**20)
        generated: list[str] = []
        generate = World.generate_custom

        def counting(self: World, region: str, compartment_id: str) -> list[Image]:
            generated.append(compartment_id)
            return generate(self, region, compartment_id)

        monkeypatch.setattr(World, "generate_custom", counting)
        world.custom[(region, first)]
        world.custom[(region, second)]
        world.custom.served((region, second))  # its last page went out
        world.custom[(region, third)]
        assert generated == [first, second, third]
        world.custom[(region, first)]  # used before second, but still being paged: kept
        assert generated == [first, second, third]
        world.custom[(region, second)]
        assert generated == [first, second, third, second]

    def test_truth_streams_what_is_served(self) -> None:
        """The ground truth regenerates each listing exactly as the emulator serves it."""
        world = build_world(seed=9, compartments=20, dataset="realistic", cache_mb=0)
        truth = {(t["region"], t["compartment_id"]): t["images"] for t in world.truth()}
        for comp in world.listable_compartments():
            served = [i.record() for i in world.custom.get((world.home_region, comp.id), [])]
            assert served == truth[(world.home_region, comp.id)]


def test_awkward_stays_the_default_for_tests() -> None:
    """build_world without dataset gives the awkward data set (control characters, 2^33)."""
    world = build_world(seed=11, compartments=40)
    assert world.dataset == "awkward"
    records = [r for listing in world.truth() for r in listing["images"]]
    assert any(any(ord(ch) < 32 for ch in r.get("displayName") or "") for r in records)
    assert any((r.get("billableSizeInGBs") or 0) > 2**31 for r in records)
    assert timedelta(0) < datetime.now(UTC) - world.reference


def test_demo_publishes_realistic_data(tmp_path: Path) -> None:
    """`oci-images demo` runs on the realistic data set: its published rows stay in range."""
    import pyarrow.dataset as ds

    result = subprocess.run(
        [sys.executable, "-m", "connector", "demo", "--output", str(tmp_path / "out"),
         "--compartments", "6", "--latency-ms", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "out" / "images").rglob("*.parquet"))
    assert files
    rows = (
        ds.dataset(tmp_path / "out" / "images", format="parquet", partitioning="hive")
        .to_table()
        .to_pylist()
    )
    custom = [r for r in rows if not r["_is_platform"]]
    platform = [r for r in rows if r["_is_platform"]]
    assert custom
    assert len(platform) == 2 * 150  # once per region, the real catalogue's shape
    now = datetime.now(UTC)
    assert all(r["time_created"] <= now for r in rows)
    assert all(8 * 1024 <= r["size_in_mbs"] <= 600 * 1024 for r in custom)
    assert all(NAME.match(r["display_name"]) for r in custom)
    assert "QUANTUM" not in {r["launch_mode"] for r in rows}
    # The first result: the DuckDB query the demo suggests, answered from the lake it wrote.
    lines = result.stdout.splitlines()
    first = lines.index("images per region, read back with DuckDB:")
    answered = {
        line.split()[0]: int(line.split()[1].replace(",", "")) for line in lines[first + 1 :]
    }
    per_region: dict[str, int] = {}
    for r in rows:
        per_region[r["region"]] = per_region.get(r["region"], 0) + 1
    assert per_region == answered


def _demo_world(shape: str) -> World:
    """The world `oci-images demo` builds (its defaults), with custom images spread by
    ``shape``."""
    from connector.emulator.cli import DEMO_REGIONS

    return build_world(
        compartments=180,
        regions=DEMO_REGIONS,
        dataset="realistic",
        platform_images=150,
        oci_extras=True,
        shape=shape,
    )


def test_the_demo_tenancy_looks_like_a_real_one() -> None:
    """The demo's tenancy: a few shared-image compartments hold most custom images, most
    compartments hold none (their listings return the platform images only), and counts and
    sizes are in proportion: a few thousand custom images of tens to hundreds of GB."""
    world = _demo_world("tenancy")
    per_compartment: Counter[str] = Counter()
    sizes_gb: list[float] = []
    for listing in world.truth():
        if listing["compartment_id"] is not None:
            per_compartment[listing["compartment_id"]] += len(listing["images"])
            sizes_gb += [image["sizeInMBs"] / 1024 for image in listing["images"]]
    custom = sum(per_compartment.values())
    assert custom == world.counts()["custom_images"]
    assert 500 <= custom <= 5_000
    assert sum(1 for n in per_compartment.values() if n == 0) / len(per_compartment) >= 0.5
    largest = [n for _, n in per_compartment.most_common(5)]
    assert sum(largest) / custom >= 0.7, "a few shared-image compartments hold most"
    sizes_gb.sort()
    assert 10 <= sizes_gb[len(sizes_gb) // 10]
    assert sizes_gb[9 * len(sizes_gb) // 10] <= 500
    total_tb = sum(sizes_gb) / 1024
    assert total_tb < 1024, f"{total_tb:.0f} TB: not a petabyte of images"


def test_the_skewed_shape_is_unchanged() -> None:
    """The default shape (tests' and benchmarks' worlds) still serves what it served: the
    demo's old volumes, every compartment holding custom images."""
    counts = _demo_world("skewed").counts()
    assert (181, 151_282) == (counts["compartments"], counts["custom_images"])
