"""Discovery's pure parts: excluding subtrees, dividing listings among shards."""

from __future__ import annotations

import pytest

from connector.errors import ConfigError
from connector.oci.discovery import donor_regions, shard_items, without_subtrees
from connector.pages import WorkItem

ROOT = "ocid1.tenancy.oc1..root"
# root ─┬─ a ─── a1 ─── a1x
#       └─ b
PARENTS = {"a": ROOT, "a1": "a", "a1x": "a1", "b": ROOT}
ALL = [ROOT, "a", "a1", "a1x", "b"]


class TestWithoutSubtrees:
    @pytest.mark.parametrize(
        ("exclude", "kept"),
        [
            pytest.param([], ALL, id="nothing"),
            pytest.param(["a"], [ROOT, "b"], id="a-and-descendants"),
            pytest.param(["a1"], [ROOT, "a", "b"], id="a-leaf-subtree"),
            pytest.param(["a1x", "b"], [ROOT, "a", "a1"], id="two"),
            pytest.param([ROOT], [], id="the-root-takes-all"),
            pytest.param(["elsewhere"], ALL, id="unknown-is-harmless"),
        ],
    )
    def test_excludes_the_subtree(self, exclude: list[str], kept: list[str]) -> None:
        """An excluded compartment goes with everything below it, nothing else."""
        assert kept == without_subtrees(ALL, PARENTS, exclude)

    def test_a_cycle_does_not_hang(self) -> None:
        """Parents that loop (a service bug) end the walk instead of spinning forever."""
        assert ["x", "y"] == without_subtrees(["x", "y"], {"x": "y", "y": "x"}, ["z"])


ITEMS = [WorkItem(r, c) for r in ("eu-frankfurt-1", "us-ashburn-1") for c in "abcde"]


class TestShards:
    def test_every_listing_in_exactly_one_shard(self) -> None:
        """Shards partition the sorted listings, balanced to within one."""
        shards = [shard_items(ITEMS, i, 3) for i in range(3)]
        assert sorted(ITEMS) == sorted(i for s in shards for i in s)
        assert {3, 4} == {len(s) for s in shards}

    def test_order_of_input_does_not_matter(self) -> None:
        """plan and each run --shard agree whatever order discovery returned."""
        assert shard_items(ITEMS, 1, 3) == shard_items(list(reversed(ITEMS)), 1, 3)

    def test_out_of_range(self) -> None:
        """A shard index outside 0..count-1 is a ConfigError naming --shard."""
        with pytest.raises(ConfigError) as info:
            shard_items(ITEMS, 3, 3)
        assert "--shard" == info.value.key

    @pytest.mark.parametrize("count", [1, 2, 3, 7, 20])
    def test_each_region_has_one_donor(self, count: int) -> None:
        """Under platform_images = once, exactly one shard contributes each region's platform
        images: the one holding the region's first listing."""
        donors = [donor_regions(ITEMS, i, count) for i in range(count)]
        for region in ("eu-frankfurt-1", "us-ashburn-1"):
            holders = [i for i, d in enumerate(donors) if region in d]
            assert 1 == len(holders)
            first = min(i for i in ITEMS if i.region == region)
            assert first in shard_items(ITEMS, holders[0], count)
