"""Resource Search in the emulator: the official SDK's ResourceSearchClient, unmodified, pages
it; the query language's subset; errors in OCI's shape; index lag; no Search on PCA."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import oci
import pytest
import requests

from connector.emulator import EmulatorServer, World, build_world
from connector.emulator import search as language
from tests.conftest import sdk_config, sdk_signer

Details = oci.resource_search.models.StructuredSearchDetails


def searcher(server: EmulatorServer, region: str) -> oci.resource_search.ResourceSearchClient:
    return oci.resource_search.ResourceSearchClient(
        sdk_config(server), service_endpoint=server.region_url(region)
    )


def search_all(server: EmulatorServer, region: str, query: str, **kw: Any) -> list[Any]:
    result = oci.pagination.list_call_get_all_results(
        searcher(server, region).search_resources, Details(query=query), **kw
    )
    return list(result.data)


def custom_truth(world: World, region: str) -> dict[str, str]:
    """Every custom image of a region that ListImages serves: id → compartment."""
    return {
        img.id: comp.id
        for comp in world.listable_compartments()
        for img in world.custom.get((region, comp.id), [])
    }


class TestContract:
    @pytest.mark.parametrize("limit", [7, 1000], ids=["limit7", "limit1000"])
    def test_sdk_pages_every_custom_image(
        self, emulator: EmulatorServer, small_world: World, limit: int
    ) -> None:
        """The SDK follows opc-next-page to every custom image of the region, each once, with
        its compartment, as ResourceSummary names the fields."""
        region = small_world.regions[1]
        found = search_all(emulator, region, "query image resources", limit=limit)
        assert custom_truth(small_world, region) == {s.identifier: s.compartment_id for s in found}
        assert len(found) == len({s.identifier for s in found})
        first = found[0]
        assert "Image" == first.resource_type
        assert first.time_created is not None
        assert first.lifecycle_state

    def test_summary_fields_as_the_model_names_them(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """A raw page carries ResourceSummaryCollection's items with every ResourceSummary key."""
        body = {"type": "Structured", "query": "QUERY Image RESOURCES return allAdditionalFields"}
        response = requests.post(
            emulator.url + "/20180409/resources",
            json=body,
            params={"limit": 2},
            auth=sdk_signer(emulator),
            timeout=10,
        )
        assert 200 == response.status_code, response.text
        items = response.json()["items"]
        model = oci.resource_search.models.ResourceSummary().attribute_map.values()
        assert 2 == len(items)
        assert set(model) == set(items[0])
        assert "operatingSystem" in items[0]["additionalDetails"]
        assert response.headers["opc-next-page"]

    def test_where_conditions(self, emulator: EmulatorServer, small_world: World) -> None:
        """compartmentId, lifecycleState, && and || select as the grammar says."""
        region = small_world.home_region
        truth = custom_truth(small_world, region)
        one, other = sorted(set(truth.values()))[:2]
        found = search_all(
            emulator,
            region,
            f"query image resources where compartmentId = '{one}' || compartmentId = \"{other}\"",
        )
        assert {i for i, c in truth.items() if c in (one, other)} == {s.identifier for s in found}
        both = search_all(
            emulator,
            region,
            f"query image resources where (compartmentId = '{one}') && lifecycleState = 'available'",
        )
        assert both
        assert all(s.lifecycle_state == "AVAILABLE" for s in both)
        assert all(s.compartment_id == one for s in both)

    def test_other_types_find_nothing(self, emulator: EmulatorServer, small_world: World) -> None:
        """The tenancy holds no instances the emulator knows: an empty collection."""
        assert [] == search_all(emulator, small_world.home_region, "query instance resources")

    def test_sorted_by_time(self, emulator: EmulatorServer, small_world: World) -> None:
        """sorted by timeCreated desc orders the whole result, across pages."""
        found = search_all(
            emulator,
            small_world.home_region,
            "query image resources sorted by timeCreated desc",
            limit=50,
        )
        times = [s.time_created for s in found]
        assert times == sorted(times, reverse=True)


def region_summaries(world: World, region: str) -> list[dict[str, Any]]:
    """Every summary of a region, in the service's own order (listing after listing)."""
    return [
        found
        for comp in world.listable_compartments()
        for image in world.custom.get((region, comp.id), [])
        if (found := language.summary(image)) is not None
    ]


class TestIndexedAnswers:
    @pytest.mark.parametrize(
        "query",
        [
            "query image resources where timeCreated < '{mid}'",
            "query image resources where timeCreated >= '{low}' && timeCreated < '{high}'",
            "query image resources where timeCreated > '{low}' && timeCreated <= '{high}'",
            "query image resources where timeCreated >= '{mid}' && lifecycleState = 'AVAILABLE'",
            "query image resources where lifecycleState != 'AVAILABLE' || timeCreated > '{mid}'",
            "query image resources where (timeCreated >= '{low}') sorted by timeCreated asc",
            "query image resources where timeCreated < '{high}' sorted by timeCreated desc",
            "query image resources sorted by timeCreated",
        ],
        ids=["before", "range", "open-closed", "and-state", "or", "sorted", "desc", "all-sorted"],
    )
    def test_pages_are_the_whole_filtered_and_sorted(
        self, emulator: EmulatorServer, small_world: World, query: str
    ) -> None:
        """A filtered or time-sorted search, paged at a limit that cuts through listings, is the
        whole result filtered, then sorted stably (ties in the service's order): each image
        once, in order, as the index that answers by time alone must give it."""
        region = small_world.regions[1]
        whole = region_summaries(small_world, region)
        times = sorted(s["timeCreated"] for s in whole)
        text = query.format(
            low=times[len(times) // 4], mid=times[len(times) // 2], high=times[len(times) * 3 // 4]
        )
        parsed = language.parse(text)
        expected = [s for s in whole if parsed.where is None or parsed.where(s)]
        if parsed.sort is not None:
            field, descending = parsed.sort
            expected.sort(key=lambda s: str(s.get(field) or ""), reverse=descending)
        found = search_all(emulator, region, text, limit=7)
        assert 0 < len(expected) < len(whole) or parsed.where is None
        assert [s["identifier"] for s in expected] == [s.identifier for s in found]

    def test_a_page_after_the_index_forgot_where_it_was(
        self, make_emulator: Callable[..., EmulatorServer]
    ) -> None:
        """The page a token names is the same whether or not the emulator still remembers where
        the page before it ended (it then counts from the start)."""
        server = make_emulator(build_world(seed=5, compartments=12))
        region = server.emulator.world.home_region
        times = sorted(s["timeCreated"] for s in region_summaries(server.emulator.world, region))
        body = {
            "type": "Structured",
            "query": f"query image resources where timeCreated >= '{times[len(times) // 3]}'",
        }

        def page(token: str | None = None) -> requests.Response:
            params: dict[str, Any] = {"limit": 5, **({"page": token} if token else {})}
            return requests.post(
                server.url + "/20180409/resources",
                json=body,
                params=params,
                auth=sdk_signer(server),
                timeout=10,
            )

        token = page().headers["opc-next-page"]
        remembered = page(token)
        server.call(server.emulator._cursors.clear)
        forgotten = page(token)
        assert remembered.json() == forgotten.json()
        assert remembered.headers["opc-next-page"] == forgotten.headers["opc-next-page"]
        assert 5 == len(forgotten.json()["items"])


class TestErrors:
    @pytest.mark.parametrize(
        "query",
        [
            "query image resources where operatingSystem = 'x'",
            "query image resources where displayName",
            "query image resources where displayName = x",
            "select image resources",
            "query image resources where compartmentId = 'a' &&",
            "query image resources where displayName > 'a'",
        ],
        ids=["unknown-field", "no-operator", "unquoted", "not-query", "dangling-and", "bad-op"],
    )
    def test_bad_query_is_400_invalid_parameter(
        self, emulator: EmulatorServer, small_world: World, query: str
    ) -> None:
        """A query outside the grammar is OCI's 400 InvalidParameter, never an empty result."""
        with pytest.raises(oci.exceptions.ServiceError) as info:
            searcher(emulator, small_world.home_region).search_resources(Details(query=query))
        assert (400, "InvalidParameter") == (info.value.status, info.value.code)

    @pytest.mark.parametrize("limit", [0, 1001])
    def test_limit_bounds(self, emulator: EmulatorServer, small_world: World, limit: int) -> None:
        """limit is 1..1000."""
        with pytest.raises(oci.exceptions.ServiceError) as info:
            searcher(emulator, small_world.home_region).search_resources(
                Details(query="query image resources"), limit=limit
            )
        assert (400, "InvalidParameter") == (info.value.status, info.value.code)

    def test_body_must_match_its_signed_hash(self, emulator: EmulatorServer) -> None:
        """A body other than the one signed (x-content-sha256) is refused with a 401."""

        def tamper(prepared: requests.PreparedRequest) -> requests.PreparedRequest:
            signed: requests.PreparedRequest = sdk_signer(emulator)(prepared)
            # Same length, so that only the body's hash can tell.
            assert isinstance(signed.body, bytes)
            signed.body = signed.body.replace(b"image", b"all  ")
            return signed

        response = requests.post(
            emulator.url + "/20180409/resources",
            json={"type": "Structured", "query": "query image resources"},
            auth=tamper,
            timeout=10,
        )
        assert 401 == response.status_code
        assert "NotAuthenticated" == response.json()["code"]

    def test_unsigned_body_headers_are_refused(self, emulator: EmulatorServer) -> None:
        """A POST signed as a GET (no body headers in the signature) is a 401."""
        from connector.oci.auth import sign_headers

        credentials = emulator.credentials
        url = emulator.url + "/20180409/resources"
        headers: dict[str, str] = {}
        sign_headers("GET", url, headers, credentials.key_id, credentials.private_key)
        response = requests.post(
            url,
            json={"type": "Structured", "query": "query image resources"},
            headers=headers,
            timeout=10,
        )
        assert 401 == response.status_code

    def test_no_search_on_pca(self, make_emulator: Callable[..., EmulatorServer]) -> None:
        """A Private Cloud Appliance has no Resource Search: 404."""
        server = make_emulator(build_world(seed=3, compartments=4, flavor="pca"))
        with pytest.raises(oci.exceptions.ServiceError) as info:
            searcher(server, server.emulator.world.home_region).search_resources(
                Details(query="query image resources")
            )
        assert 404 == info.value.status


class TestIndexLag:
    def test_lag_hides_images_and_ghosts_stay(
        self, make_emulator: Callable[..., EmulatorServer]
    ) -> None:
        """With lag, a share of custom images is missing and deleted images are still listed."""
        world = build_world(seed=11, compartments=12)
        server = make_emulator(world, search_lag=0.3, search_ghosts=2)
        region = world.home_region
        truth = custom_truth(world, region)
        found = {s.identifier for s in search_all(server, region, "query image resources")}
        missing = set(truth) - found
        ghosts = found - set(truth)
        assert 2 == len(ghosts)
        assert 0.15 * len(truth) < len(missing) < 0.45 * len(truth)


class TestLanguage:
    def test_keywords_and_fields_are_case_insensitive(self) -> None:
        """QUERY, RESOURCES, WHERE and attribute names in any case."""
        query = language.parse("QUERY image RESOURCES WHERE LifeCycleState = 'AVAILABLE'")
        assert query.images
        assert query.where is not None
        assert query.where({"lifecycleState": "AVAILABLE"})
        assert not query.where({"lifecycleState": "DELETED"})

    def test_time_comparison(self) -> None:
        """timeCreated compares as a time, a date alone being midnight UTC."""
        query = language.parse("query image resources where timeCreated >= '2026-01-02'")
        assert query.where is not None
        assert query.where({"timeCreated": "2026-01-02T00:00:00.000Z"})
        assert not query.where({"timeCreated": "2026-01-01T23:59:59.999Z"})


def test_search_has_a_rate_limit_of_its_own(
    make_emulator: Callable[..., EmulatorServer],
) -> None:
    """Search is a service of its own: its requests do not spend Compute's budget in the
    region, nor Compute's Search's."""
    server = make_emulator(rate=0.001, burst=2)
    world = server.emulator.world
    region = world.home_region
    compartment = world.listable_compartments()[1].id
    signer = sdk_signer(server)

    def list_images() -> int:
        url = f"{server.region_url(region)}/20160918/images"
        params = {"compartmentId": compartment}
        return requests.get(url, params=params, auth=signer, timeout=10).status_code

    def search() -> int:
        url = f"{server.region_url(region)}/query/20180409/resources"
        body = {"type": "Structured", "query": "query image resources"}
        return requests.post(url, json=body, auth=signer, timeout=10).status_code

    assert [200, 200, 429] == [list_images() for _ in range(3)]
    assert [200, 200, 429] == [search() for _ in range(3)]
