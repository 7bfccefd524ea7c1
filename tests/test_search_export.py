"""``fetch.strategy = "search"`` end to end: Resource Search guides the listings; the output is
list mode's, row for row, against the reference; the index's lag is reported, never fatal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from connector import cli
from connector.emulator import EmulatorServer, World, build_world
from connector.lake.manifest import SearchLag, merge_lags
from connector.oci import search
from tests.helpers import WORLD, arrow_rows, manifest_of, run, write_config
from tests.reference import expected_row, expected_rows, multiset, normalise_actual

SEARCH = {"strategy": "search"}


def world(**changes: Any) -> World:
    """The export tests' world, with most compartments holding no custom image."""
    return build_world(**{**WORLD, "empty_share": 0.7, **changes})


def listings(folder: Path) -> list[tuple[str, str]]:
    return [(c["region"], c["compartment_id"]) for c in manifest_of(folder)["compartments"]]


def listed_rows(server: EmulatorServer, listed: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The reference's rows for the listings a run made (platform images once per region)."""
    found = server.emulator.world
    rows = [
        expected_row(image.record(), region, compartment, found.tenancy_id)
        for region, compartment in listed
        for image in found.custom.get((region, compartment), [])
    ]
    rows += [
        expected_row(image.record(), region, None, found.tenancy_id)
        for region in found.regions
        for image in found.platform[region]
    ]
    return rows


@pytest.mark.parametrize(
    ("workers", "platform"),
    [(0, "once"), (2, "once"), (0, "skip")],
    ids=["thread", "processes", "skip-platform"],
)
def test_search_equals_list_and_the_reference(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, workers: int, platform: str
) -> None:
    """The same rows as list mode and as the reference, from far fewer ListImages requests;
    Search's index agrees with every listing."""
    server = make_emulator(world())
    fetch = {"workers": workers, "page_size": 300, "platform_images": platform}
    list_config = write_config(tmp_path / "list", server, fetch=fetch)
    assert 0 == run(list_config)
    listed_by_list = server.stats()["listed_compartments"]
    server.call(server.emulator.reset_stats)
    search_config = write_config(tmp_path / "search", server, fetch={**fetch, **SEARCH})
    assert 0 == run(search_config)
    stats = server.stats()
    expected = multiset(expected_rows(server.emulator.world, platform))
    assert expected == multiset(
        [normalise_actual(r, platform) for r in arrow_rows(tmp_path / "list")]
    )
    assert expected == multiset(
        [normalise_actual(r, platform) for r in arrow_rows(tmp_path / "search")]
    )
    assert len(stats["listed_compartments"]) < 0.5 * len(listed_by_list)
    assert set(server.emulator.world.regions) == set(stats["searches_by_region"])
    manifest = manifest_of(tmp_path / "search")
    lags = {lag["region"]: lag for lag in manifest["search"]}
    assert set(server.emulator.world.regions) == set(lags)
    assert all(0 == lag["unknown_to_search"] == lag["gone_since_indexed"] for lag in lags.values())
    assert all(lag["searched"] for lag in lags.values())
    assert "search" not in manifest_of(tmp_path / "list")


def test_index_lag_is_reported_and_the_run_succeeds(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With images missing from the index and deleted ones still in it, the run exits 0,
    publishes every image its listings returned, and its manifest and summary name the lag."""
    server = make_emulator(world(), search_lag=0.3, search_ghosts=2)
    config = write_config(tmp_path, server, fetch=SEARCH)
    assert 0 == run(config)
    listed = listings(tmp_path)
    assert multiset(listed_rows(server, listed)) == multiset(
        [normalise_actual(r, "once") for r in arrow_rows(tmp_path)]
    )
    manifest = manifest_of(tmp_path)
    lags = {lag["region"]: lag for lag in manifest["search"]}
    assert all(2 == lag["gone_since_indexed"] for lag in lags.values())
    assert all(2 == len(lag["gone_ids"]) for lag in lags.values())
    unknown = sum(lag["unknown_to_search"] for lag in lags.values())
    assert unknown > 0
    found = server.emulator.world
    listed_ids = {
        image.id for region, comp in listed for image in found.custom.get((region, comp), [])
    }
    assert all(set(lag["unknown_ids"]) <= listed_ids for lag in lags.values())
    summary = capsys.readouterr().out
    assert f"search_unknown={unknown} search_gone=4" in summary


def test_a_region_search_cannot_serve_is_listed_in_full(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """A PCA flavor given a search endpoint that has no Search (404): every compartment of the
    region is listed, the manifest says the region was not searched, and the rows are whole."""
    server = make_emulator(world(flavor="pca"))
    config = write_config(
        tmp_path,
        server,
        fetch=SEARCH,
        oci={"flavor": "pca", "search_endpoint": server.endpoint_template},
    )
    assert 0 == run(config)
    assert multiset(expected_rows(server.emulator.world, "once")) == multiset(
        [normalise_actual(r, "once") for r in arrow_rows(tmp_path)]
    )
    assert all(not lag["searched"] for lag in manifest_of(tmp_path)["search"])


def test_shards_divide_the_searched_listings(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """plan counts the listings Search calls for; three shards and a commit publish the
    reference's rows, with one lag record per region."""
    server = make_emulator(world())
    config = write_config(tmp_path, server, fetch=SEARCH)
    assert 0 == cli.main(["plan", "--config", str(config), "--shards", "3", "--run-id", "r-s"])
    specs = orjson.loads(capsys.readouterr().out)
    found = server.emulator.world
    searched = {
        (r, c.id)
        for r in found.regions
        for c in found.listable_compartments()
        if found.custom.count(r, c.id)
    }
    assert len(searched) <= sum(s["listings"] for s in specs) <= len(searched) + 2
    for spec in specs:
        assert 0 == run(config, *spec["args"])
    assert 0 == cli.main(["commit", "--config", str(config), "--run-id", "r-s"])
    assert multiset(expected_rows(found, "once")) == multiset(
        [normalise_actual(r, "once") for r in arrow_rows(tmp_path)]
    )
    manifest = manifest_of(tmp_path)
    assert sorted(found.regions) == [lag["region"] for lag in manifest["search"]]
    assert sum(s["listings"] for s in specs) == len(manifest["compartments"])


@pytest.mark.parametrize(
    ("fetch", "oci", "named"),
    [
        ({**SEARCH, "platform_images": "every"}, {}, "fetch.platform_images"),
        (SEARCH, {"flavor": "pca"}, "oci.search_endpoint"),
        ({"strategy": "grep"}, {}, "fetch.strategy"),
    ],
    ids=["every", "pca", "unknown"],
)
def test_config_errors_exit_2_before_any_request(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fetch: dict[str, Any],
    oci: dict[str, Any],
    named: str,
) -> None:
    """Search with platform images in every listing, on a PCA without a Search endpoint, or an
    unknown strategy: exit 2 naming the keys, and no request sent."""
    server = make_emulator(world())
    config = write_config(tmp_path, server, fetch=fetch, oci=oci)
    assert 2 == run(config)
    error = capsys.readouterr().err
    assert "fetch.strategy" in error
    assert named in error
    assert 0 == server.stats()["requests"]


class TestQuery:
    @pytest.mark.parametrize(
        ("filters", "query", "exact"),
        [
            ({}, "query image resources", True),
            ({"sortBy": "TIMECREATED"}, "query image resources", True),
            (
                {"lifecycleState": "AVAILABLE", "displayName": "it's"},
                "query image resources where displayName = \"it's\" && lifecycleState = 'AVAILABLE'",
                True,
            ),
            ({"operatingSystem": "Oracle Linux"}, "query image resources", False),
            ({"displayName": "a'b\"c"}, "query image resources", False),
        ],
        ids=["none", "sort-only", "expressed", "os", "both-quotes"],
    )
    def test_filters_go_into_the_query_where_they_can(
        self, filters: dict[str, str], query: str, exact: bool
    ) -> None:
        """Search's language says displayName and lifecycleState; what it cannot say leaves its
        answer a superset, which makes 'deleted since' unknowable."""
        assert (query, exact) == search.query_for(filters)


class TestManifestRecord:
    def test_round_trip_and_merge(self) -> None:
        """A region's record survives the manifest, and shards' records sum per region."""
        one = SearchLag("r1", True, 2, 10, 1, 0, ("b",), ())
        two = SearchLag("r1", True, 3, 5, 2, None, ("a", "c"), ())
        other = SearchLag("r0", False, 0, 0, 0, 0)
        assert one == SearchLag.from_dict(orjson.loads(orjson.dumps(one.as_dict())))
        merged = merge_lags([one, other, two])
        assert ["r0", "r1"] == [lag.region for lag in merged]
        assert SearchLag("r1", True, 5, 15, 3, None, ("a", "b", "c"), ()) == merged[1]


def test_listings_start_while_the_search_still_pages(
    make_emulator: Callable[..., EmulatorServer],
) -> None:
    """A compartment's listing starts as soon as a page of results names it: pages of searched
    listings arrive while the region's search is still paging (which takes several pages)."""
    from connector.oci.client import OciClient
    from connector.oci.endpoints import Endpoints
    from connector.oci.fetch import Fetcher
    from connector.pages import Message, Page, WorkItem
    from tests.helpers import signer_for

    # About 4,000 custom images: a search of several pages.
    server = make_emulator(world(regions=("us-ashburn-1",), custom_scale=15.0), latency_ms=40)
    found = server.emulator.world
    region = found.home_region
    items = [WorkItem(region, c.id) for c in found.listable_compartments()]
    early: list[WorkItem] = []
    pages: set[WorkItem] = set()

    async def main() -> None:
        async with OciClient(signer_for(server)) as client:
            endpoints = Endpoints(server.endpoint_template, "", region, server.endpoint_template)
            searching = search.Searching(client, endpoints, items, {}, "once")
            fetcher = Fetcher(client, endpoints, 1000, {}, per_region=4)
            fetcher.search = (searching, frozenset(items))
            send, receive = anyio.create_memory_object_stream[Message](4)
            with anyio.fail_after(30):
                async with anyio.create_task_group() as group:
                    group.start_soon(fetcher.fetch_all, sorted(searching.platform), send)
                    async with receive:
                        async for message in receive:
                            if isinstance(message, Page):
                                pages.add(message.item)
                                if region not in searching.done:
                                    early.append(message.item)

    anyio.run(main)
    platform = min(items)
    holding = {i for i in items if found.custom.count(i.region, i.compartment_id)}
    assert holding | {platform} == pages
    assert [i for i in early if i != platform]


def test_a_listing_done_before_its_search_is_compared_once_the_search_is_over() -> None:
    """A listing that ends while its region's search still pages is compared with everything
    Search named in the end: an id named on a later page is no lag, one never listed is gone."""
    from connector.oci.discovery import Discovery
    from connector.pages import WorkItem
    from connector.tally import Tally
    from connector.workers.page import ListingResult

    item = WorkItem("r1", "c1")
    guide = search.Searching(None, None, [item], {}, "once")  # type: ignore[arg-type]
    guide.known[item] = bytearray(b"a\nb\n")
    tally = Tally(discovery=Discovery([item], None, {}, 0, guide))
    tally.listing_done(ListingResult(item, 1, 3, 0, 0, None, 0, frozenset({"b", "c", "e"})))
    assert tally.waiting
    guide.known[item] += b"c\nd\n"  # a later page of results
    guide.done.add("r1")
    (lag,) = tally.search_lag() or ()
    assert ("e",) == lag.unknown_ids
    assert ("a", "d") == lag.gone_ids
    assert (1, 4) == (lag.listings, lag.indexed)


def test_a_search_signed_by_the_sdks_signer_is_accepted(emulator: EmulatorServer) -> None:
    """Principals sign through the official SDK's signer (``SdkSigner``): a Search POST signed
    so, body headers included, is accepted and paged like one the connector signs itself."""
    from connector.oci.auth import SdkSigner
    from connector.oci.client import OciClient
    from tests.conftest import sdk_signer

    found = emulator.emulator.world
    region = found.home_region
    body = orjson.dumps({"type": "Structured", "query": search.QUERY})
    ids: set[str] = set()

    async def main() -> None:
        async with OciClient(SdkSigner(sdk_signer(emulator), "sdk")) as client:
            url = f"{emulator.region_url(region)}/20180409/resources"
            async for page in client.paginate(url, {"limit": 7}, body=body):
                ids.update(s["identifier"] for s in orjson.loads(page.response.body)["items"])

    anyio.run(main)
    truth = {
        img.id
        for c in found.listable_compartments()
        for img in found.custom.get((region, c.id), [])
    }
    assert truth == ids
