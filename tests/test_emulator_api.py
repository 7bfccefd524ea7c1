"""The emulator's HTTP behaviour: validation, pagination, signatures, throttling and faults.

Requests are signed by the official SDK's signer, so these tests also pin that the emulator
verifies exactly what the SDK signs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import pytest
from oci._vendor import requests

from connector.emulator import EmulatorServer, World, build_world
from tests.conftest import sdk_signer, signed_get

IMAGES = "/20160918/images"


def error_of(response: Any) -> tuple[int, str]:
    body = response.json()
    assert {"code", "message"} <= set(body)
    return response.status_code, body["code"]


class TestValidation:
    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({}, (400, "MissingParameter")),
            ({"limit": "0"}, (400, "InvalidParameter")),
            ({"limit": "1001"}, (400, "InvalidParameter")),
            ({"limit": "ten"}, (400, "InvalidParameter")),
            ({"displayName": "x" * 256}, (400, "InvalidParameter")),
            ({"sortBy": "SIZE"}, (400, "InvalidParameter")),
            ({"sortOrder": "UP"}, (400, "InvalidParameter")),
            ({"lifecycleState": "GONE"}, (400, "InvalidParameter")),
            ({"page": "not-a-token"}, (400, "InvalidParameter")),
            ({"page": "x" * 513}, (400, "InvalidParameter")),
            (
                {"compartmentId": "ocid1.compartment.oc1..aaaaaaaaunknown"},
                (404, "NotAuthorizedOrNotFound"),
            ),
        ],
        ids=[
            "no-compartment",
            "limit-0",
            "limit-1001",
            "limit-text",
            "long-display-name",
            "bad-sort-by",
            "bad-sort-order",
            "bad-lifecycle",
            "bad-token",
            "long-token",
            "unknown-compartment",
        ],
    )
    def test_bad_parameters(
        self,
        emulator: EmulatorServer,
        small_world: World,
        params: dict[str, str],
        expected: tuple[int, str],
    ) -> None:
        """Each documented constraint is enforced with OCI's status and code."""
        query = {"compartmentId": small_world.tenancy_id} | params if params else {}
        response = signed_get(emulator, IMAGES, query)
        assert expected == error_of(response)
        assert response.headers["opc-request-id"]

    def test_default_limit_is_100(self, emulator: EmulatorServer, small_world: World) -> None:
        """Without limit, a page holds 100 records and points to the next."""
        comp = max(
            small_world.listable_compartments(),
            key=lambda c: len(small_world.listing(small_world.home_region, c.id)),
        )
        assert len(small_world.listing(small_world.home_region, comp.id)) > 100
        response = signed_get(emulator, IMAGES, {"compartmentId": comp.id})
        assert len(response.json()) == 100
        assert response.headers.get("opc-next-page")

    def test_lifecycle_state_is_case_insensitive(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """lifecycleState=available filters like AVAILABLE."""
        query = {"compartmentId": small_world.tenancy_id, "limit": "1000"}
        upper = signed_get(emulator, IMAGES, query | {"lifecycleState": "AVAILABLE"}).json()
        lower = signed_get(emulator, IMAGES, query | {"lifecycleState": "available"}).json()
        assert upper == lower
        assert {"AVAILABLE"} == {r["lifecycleState"] for r in lower}

    def test_shape_and_name_filters(self, emulator: EmulatorServer, small_world: World) -> None:
        """shape keeps compatible images; displayName matches the whole name."""
        region = small_world.home_region
        query = {"compartmentId": small_world.tenancy_id, "limit": "1000"}
        arm = signed_get(emulator, IMAGES, query | {"shape": "VM.Standard.A1.Flex"}).json()
        expected = [
            i.id
            for i in small_world.listing(region, small_world.tenancy_id)
            if "VM.Standard.A1.Flex" in i.shapes
        ]
        assert expected == [r["id"] for r in arm]
        name = small_world.platform[region][0].display_name
        assert name is not None
        named = signed_get(emulator, IMAGES, query | {"displayName": name}).json()
        assert [name] == [r["displayName"] for r in named]
        assert signed_get(emulator, IMAGES, query | {"displayName": name[:-1]}).json() == []


class TestPagination:
    def walk(
        self, server: EmulatorServer, query: dict[str, str]
    ) -> tuple[list[dict[str, Any]], list[int]]:
        records: list[dict[str, Any]] = []
        sizes = []
        page: str | None = None
        while True:
            response = signed_get(server, IMAGES, query | ({"page": page} if page else {}))
            assert response.status_code == 200
            batch = response.json()
            records += batch
            sizes.append(len(batch))
            page = response.headers.get("opc-next-page")
            if not page:
                return records, sizes

    def test_token_only_while_more_remain(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """The last page carries no opc-next-page, even when it is full."""
        comp = small_world.tenancy_id
        total = len(small_world.listing(small_world.home_region, comp))
        records, sizes = self.walk(emulator, {"compartmentId": comp, "limit": str(total)})
        assert [total] == sizes
        assert total == len(records)

    def test_trailing_empty_page_option(self, make_emulator: Callable[..., EmulatorServer]) -> None:
        """With the option, a last full page leads to one empty page, as some services do."""
        server = make_emulator(trailing_empty_page=True)
        comp = server.world.tenancy_id
        total = len(server.world.listing(server.world.home_region, comp))
        records, sizes = self.walk(server, {"compartmentId": comp, "limit": str(total)})
        assert [total, 0] == sizes
        assert [i.id for i in server.world.listing(server.world.home_region, comp)] == [
            r["id"] for r in records
        ]

    def test_token_is_bound_to_its_listing(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """A token from one compartment's listing is rejected for another's."""
        first, second = small_world.listable_compartments()[:2]
        response = signed_get(emulator, IMAGES, {"compartmentId": first.id, "limit": "1"})
        token = response.headers["opc-next-page"]
        reused = signed_get(
            emulator, IMAGES, {"compartmentId": second.id, "limit": "1", "page": token}
        )
        assert error_of(reused) == (400, "InvalidParameter")


class TestSignatures:
    def test_tampered_query_is_rejected(self, emulator: EmulatorServer, small_world: World) -> None:
        """Changing the query after signing makes the signature invalid: 401 NotAuthenticated."""
        request = requests.Request(
            "GET", f"{emulator.url}{IMAGES}?compartmentId={small_world.tenancy_id}&limit=1"
        ).prepare()
        sdk_signer(emulator)(request)
        request.url = request.url.replace("limit=1", "limit=2")
        response = requests.Session().send(request, timeout=10)
        assert error_of(response) == (401, "NotAuthenticated")

    # The date header has one-second resolution (a fraction is cut off), so 302 s, not 301,
    # is reliably more than five minutes away.
    @pytest.mark.parametrize("skew_s", [-302, 302, 3600], ids=["past-5m", "future-5m", "hour-old"])
    def test_clock_skew_is_rejected(
        self, emulator: EmulatorServer, small_world: World, skew_s: int
    ) -> None:
        """A validly signed request dated more than five minutes off is 401."""
        headers = {"date": formatdate(time.time() + skew_s, usegmt=True)}
        response = signed_get(
            emulator, IMAGES, {"compartmentId": small_world.tenancy_id}, headers=headers
        )
        assert error_of(response) == (401, "NotAuthenticated")

    def test_small_skew_is_accepted(self, emulator: EmulatorServer, small_world: World) -> None:
        """Four minutes of skew is within OCI's tolerance."""
        headers = {"date": formatdate(time.time() - 240, usegmt=True)}
        response = signed_get(
            emulator,
            IMAGES,
            {"compartmentId": small_world.tenancy_id, "limit": "1"},
            headers=headers,
        )
        assert response.status_code == 200

    def test_unsigned_is_rejected(self, emulator: EmulatorServer, small_world: World) -> None:
        """A request without a signature is 401 with a request id."""
        response = requests.get(
            emulator.url + IMAGES, params={"compartmentId": small_world.tenancy_id}, timeout=10
        )
        assert error_of(response) == (401, "NotAuthenticated")
        assert response.headers["opc-request-id"]


class TestEveryResponse:
    def test_request_id_echoes_the_clients(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """The client's opc-request-id prefixes the service's."""
        response = signed_get(
            emulator,
            IMAGES,
            {"compartmentId": small_world.tenancy_id, "limit": "1"},
            headers={"opc-request-id": "CLIENT1"},
        )
        assert response.headers["opc-request-id"].startswith("CLIENT1/")

    def test_unknown_region_is_404(self, emulator: EmulatorServer, small_world: World) -> None:
        """A region the tenancy is not served in answers NotAuthorizedOrNotFound."""
        response = signed_get(
            emulator, "/mars-olympus-1" + IMAGES, {"compartmentId": small_world.tenancy_id}
        )
        assert error_of(response) == (404, "NotAuthorizedOrNotFound")


class TestRealism:
    def test_throttling_has_no_retry_after(
        self, make_emulator: Callable[..., EmulatorServer]
    ) -> None:
        """Past the burst, the tenancy gets 429 TooManyRequests without Retry-After."""
        server = make_emulator(rate=1, burst=3)
        statuses = [
            signed_get(server, IMAGES, {"compartmentId": server.world.tenancy_id, "limit": "1"})
            for _ in range(6)
        ]
        assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
        throttled = [r for r in statuses if r.status_code == 429]
        assert throttled
        assert all(
            error_of(r) == (429, "TooManyRequests") and "Retry-After" not in r.headers
            for r in throttled
        )
        assert len(throttled) == server.stats()["throttled"]

    def test_retry_after_option(self, make_emulator: Callable[..., EmulatorServer]) -> None:
        """With the option, a 429 carries Retry-After."""
        server = make_emulator(rate=0.5, burst=1, retry_after=2)
        query = {"compartmentId": server.world.tenancy_id, "limit": "1"}
        assert signed_get(server, IMAGES, query).status_code == 200
        response = signed_get(server, IMAGES, query)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "2"

    def test_server_faults(self, make_emulator: Callable[..., EmulatorServer]) -> None:
        """fault_rate=1 answers every call with 500 or 503 in OCI's error shape, counted."""
        server = make_emulator(fault_rate=1.0)
        codes = {
            error_of(signed_get(server, IMAGES, {"compartmentId": server.world.tenancy_id}))
            for _ in range(20)
        }
        assert {(500, "InternalServerError"), (503, "ServiceUnavailable")} == codes
        assert sum(server.stats()["faults"].values()) == 20

    def test_truncated_body(self, make_emulator: Callable[..., EmulatorServer]) -> None:
        """A truncated response announces more bytes than it delivers."""
        server = make_emulator(truncate_rate=1.0)
        with pytest.raises(requests.exceptions.RequestException):
            signed_get(
                server, IMAGES, {"compartmentId": server.world.tenancy_id, "limit": "50"}
            ).json()
        assert server.stats()["faults"] == {"truncate": 1}

    def test_connection_reset(self, make_emulator: Callable[..., EmulatorServer]) -> None:
        """A reset drops the connection without a response."""
        server = make_emulator(reset_rate=1.0)
        with pytest.raises(requests.exceptions.ConnectionError):
            signed_get(server, IMAGES, {"compartmentId": server.world.tenancy_id})

    def test_stall(self, make_emulator: Callable[..., EmulatorServer]) -> None:
        """A stalled response outlives a client's read timeout."""
        server = make_emulator(stall_rate=1.0, stall_s=2.0)
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(
                server.url + IMAGES,
                params={"compartmentId": server.world.tenancy_id},
                auth=sdk_signer(server),
                timeout=(5, 0.3),
            )

    def test_latency_and_in_flight_counter(
        self, make_emulator: Callable[..., EmulatorServer]
    ) -> None:
        """Concurrent slow requests show up in max_in_flight; latency is applied."""
        from concurrent.futures import ThreadPoolExecutor

        server = make_emulator(latency_ms=200, jitter=0.0)
        query = {"compartmentId": server.world.tenancy_id, "limit": "1"}
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda _: signed_get(server, IMAGES, query), range(4)))
        assert all(r.status_code == 200 for r in responses)
        assert time.monotonic() - started >= 0.2
        stats = server.stats()
        assert stats["requests"] == 4
        assert 2 <= stats["max_in_flight"] <= 4
        assert stats["status"] == {"200": 4}

    def test_stats_reset(self, make_emulator: Callable[..., EmulatorServer]) -> None:
        """POST /_emulator/reset zeroes the counters."""
        server = make_emulator()
        signed_get(server, IMAGES, {"compartmentId": server.world.tenancy_id, "limit": "1"})
        assert requests.get(server.url + "/_emulator/stats", timeout=5).json()["requests"] == 1
        requests.post(server.url + "/_emulator/reset", timeout=5)
        assert requests.get(server.url + "/_emulator/stats", timeout=5).json()["requests"] == 0


class TestData:
    def test_deterministic(self) -> None:
        """The same seed gives the same world, byte for byte."""
        first = build_world(seed=5, compartments=6)
        second = build_world(seed=5, compartments=6)
        assert list(first.truth()) == list(second.truth())
        assert list(first.truth()) != list(build_world(seed=6, compartments=6).truth())

    def test_every_field_and_awkward_values(self) -> None:
        """Every Image field appears; so do nulls, absent keys, big ints, odd text and unknowns."""
        world = build_world(seed=11, compartments=60)
        records = [r for listing in world.truth() for r in listing["images"]]
        keys = set().union(*(r.keys() for r in records))
        documented = {
            "agentFeatures", "baseImageId", "billableSizeInGBs", "compartmentId", "createImageAllowed",
            "definedTags", "displayName", "freeformTags", "id", "imageVolumeDetails", "launchMode",
            "launchOptions", "lifecycleState", "listingType", "operatingSystem", "operatingSystemVersion",
            "sizeInMBs", "timeCreated",
        }  # fmt: skip
        assert documented <= keys
        assert keys - documented, "some records carry fields the schema does not know"
        options = set().union(
            *(r["launchOptions"].keys() for r in records if r.get("launchOptions"))
        )
        assert {"bootVolumeType", "firmware", "networkType", "remoteDataVolumeType", "isConsistentVolumeNamingEnabled",
                "isEncryptionInTransitEnabled", "isPvEncryptionInTransitEnabled"} <= options  # fmt: skip
        assert any(r.get("sizeInMBs") is not None and r["sizeInMBs"] > 2**31 for r in records)
        assert any("agentFeatures" not in r for r in records)
        assert any(r.get("agentFeatures", 0) is None for r in records)
        names = [r.get("displayName") or "" for r in records]
        assert any(not n.isascii() for n in names)
        assert any(any(ord(ch) < 32 for ch in n) for n in names)
        times = [r["timeCreated"] for r in records]
        assert any("." not in t for t in times)
        assert any("." in t for t in times)
        assert any(not t.endswith("Z") for t in times)
        assert any(
            r.get("launchMode")
            not in (None, "NATIVE", "EMULATED", "PARAVIRTUALIZED", "VDPA", "CUSTOM")
            for r in records
        )

    def test_custom_images_are_skewed(self) -> None:
        """Most compartments hold a few dozen images; some need several 1000-record pages."""
        world = build_world(seed=12, compartments=180)
        sizes = sorted(
            len(world.custom.get((world.home_region, c.id), []))
            for c in world.listable_compartments()
        )
        assert sizes[len(sizes) // 2] <= 50
        assert sizes[-1] > 2000
