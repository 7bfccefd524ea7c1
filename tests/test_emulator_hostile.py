"""The emulator's hostile behaviours, which reliability tests aim the connector at, and its
per-region rate limits. Each is checked from the wire, with raw signed requests."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from typing import Any

import oci
import orjson
import pytest

from connector.emulator import EmulatorServer
from connector.emulator.app import HOSTILE_REGION_NAMES, POISON_KINDS
from tests.conftest import sdk_config, signed_get

IMAGES = "/20160918/images"


def first_page(server: EmulatorServer, limit: int = 50, **kw: Any) -> Any:
    return signed_get(
        server, IMAGES, {"compartmentId": server.world.tenancy_id, "limit": str(limit)}, **kw
    )


def test_endless_pagination(make_emulator: Callable[..., EmulatorServer]) -> None:
    """Past the last record, every page is empty and points to yet another new page."""
    server = make_emulator(endless_pages=True)
    total = len(server.world.listing(server.world.home_region, server.world.tenancy_id))
    query = {"compartmentId": server.world.tenancy_id, "limit": "1000"}
    tokens, sizes = [], []
    page: str | None = None
    for _ in range(30):
        response = signed_get(server, IMAGES, query | ({"page": page} if page else {}))
        assert response.status_code == 200
        sizes.append(len(response.json()))
        page = response.headers["opc-next-page"]
        tokens.append(page)
    assert [total] + [0] * 29 == sizes
    assert len(set(tokens)) == 30


def test_gzip_bomb_is_small_on_the_wire(make_emulator: Callable[..., EmulatorServer]) -> None:
    """A page gzip-encoded behind 64 MiB of whitespace: about 66 KB sent, and valid JSON
    holding the real page once (incrementally) inflated."""
    server = make_emulator(gzip_bomb_mib=64)
    response = first_page(server, stream=True)
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["opc-request-id"]
    compressed = response.raw.read(decode_content=False)
    assert len(compressed) == int(response.headers["Content-Length"])
    assert len(compressed) < 100_000
    inflater = zlib.decompressobj(31)
    expanded = 0
    tail = b""
    for start in range(0, len(compressed), 4096):
        chunk = inflater.decompress(compressed[start : start + 4096], 2**20)
        while chunk:
            expanded += len(chunk)
            tail = (tail + chunk)[-200_000:]
            chunk = inflater.decompress(inflater.unconsumed_tail, 2**20)
    assert expanded > 64 * 2**20
    records = json.loads("[" + tail.decode().lstrip(" ").lstrip("["))
    listing = server.world.listing(server.world.home_region, server.world.tenancy_id)
    assert [i.id for i in listing[:50]] == [r["id"] for r in records]


def test_huge_page(make_emulator: Callable[..., EmulatorServer]) -> None:
    """A page padded to 5 MB: valid JSON, the real records first, then one padding record."""
    server = make_emulator(huge_page_mb=5)
    response = first_page(server)
    assert 5_000_000 == len(response.content) == int(response.headers["Content-Length"])
    records = orjson.loads(response.content)
    listing = server.world.listing(server.world.home_region, server.world.tenancy_id)
    assert [i.id for i in listing[:50]] == [r["id"] for r in records[:-1]]
    assert records[-1]["id"].endswith("padding")


@pytest.mark.parametrize("kind", POISON_KINDS)
def test_poisoned_record(make_emulator: Callable[..., EmulatorServer], kind: str) -> None:
    """The first page of a listing carries one record a strict parser refuses; the page as a
    whole no longer parses, and later pages are clean."""
    server = make_emulator(poison=(kind,))
    response = first_page(server, limit=5)
    body = response.content
    marker = {
        "invalid_utf8": b"\xff\xfe",
        "lone_surrogate": b"\\ud800",
        "deep_nesting": b"[" * 5000 + b"]" * 5000,
    }[kind]
    assert marker in body
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    clean, poisoned = body[1:-1].rsplit(b',{"id":"ocid1.image.oc1..poisoned-', 1)
    listing = server.world.listing(server.world.home_region, server.world.tenancy_id)
    assert b",".join(i.json for i in listing[:5]) == clean
    assert poisoned.startswith(kind.replace("_", "-").encode())
    following = signed_get(
        server,
        IMAGES,
        {
            "compartmentId": server.world.tenancy_id,
            "limit": "5",
            "page": response.headers["opc-next-page"],
        },
    )
    assert [i.id for i in listing[5:10]] == [r["id"] for r in orjson.loads(following.content)]


def test_cut_after_a_bracket(make_emulator: Callable[..., EmulatorServer]) -> None:
    """A body cut after a } or ], with a Content-Length that matches what is sent."""
    server = make_emulator(cut_json_rate=1.0)
    response = first_page(server)
    body = response.content
    assert len(body) == int(response.headers["Content-Length"])
    assert body[-1:] in (b"}", b"]")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    assert server.stats()["faults"] == {"cut": 1}


def test_everyone_is_unauthenticated(make_emulator: Callable[..., EmulatorServer]) -> None:
    """reject_auth answers a correctly signed call 401 NotAuthenticated, as a bad key would."""
    server = make_emulator(reject_auth=True)
    client = oci.core.ComputeClient(sdk_config(server), service_endpoint=server.url)
    with pytest.raises(oci.exceptions.ServiceError) as info:
        client.list_images(server.world.tenancy_id)
    assert (401, "NotAuthenticated") == (info.value.status, info.value.code)


def test_hostile_region_names(make_emulator: Callable[..., EmulatorServer]) -> None:
    """Region subscriptions can carry names that are paths, not regions, marked READY."""
    server = make_emulator(hostile_regions=HOSTILE_REGION_NAMES)
    client = oci.identity.IdentityClient(sdk_config(server), service_endpoint=server.url)
    subs = client.list_region_subscriptions(server.world.tenancy_id).data
    ready = [s.region_name for s in subs if s.status == "READY"]
    assert list(server.world.regions) + list(HOSTILE_REGION_NAMES) == ready
    assert "../x" in ready


def test_rate_limit_per_region(make_emulator: Callable[..., EmulatorServer]) -> None:
    """Each region has its own budget: exhausting one leaves the others whole."""
    server = make_emulator(rate=0.01, burst=2)
    query = {"compartmentId": server.world.tenancy_id, "limit": "1"}
    home, other = server.world.regions
    codes = {
        region: [signed_get(server, f"/{region}{IMAGES}", query).status_code for _ in range(3)]
        for region in (home, other)
    }
    assert {home: [200, 200, 429], other: [200, 200, 429]} == codes
    stats = server.stats()
    assert {home: 1, other: 1} == stats["throttled_by_region"]
    assert {home: 3, other: 3} == stats["requests_by_region"]


def test_unknown_poison_kind_is_refused() -> None:
    """A misspelt poison kind is a ValueError naming the known ones."""
    from connector.emulator import Behaviour

    with pytest.raises(ValueError, match="invalid_utf8"):
        Behaviour(poison=("bad_bytes",))
