"""The HTTP client against the emulator: throttling, faults, timeouts, auth, and secrets."""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from connector import __version__
from connector.config import is_loopback
from connector.emulator import EmulatorServer
from connector.errors import OciApiError, RequestTimeout
from connector.oci import (
    auth,
    signing,
)
from connector.oci.client import ClientOptions, OciClient, RequestCounters
from connector.oci.retry import RetryPolicy
from tests.helpers import captured_events, signer_for

FAST_RETRY = RetryPolicy(max_attempts=8, base_s=0.01, cap_s=0.1, jitter_s=0.01)


async def list_all(
    server: EmulatorServer,
    options: ClientOptions,
    signer: auth.RequestSigner | None = None,
    limit: int = 40,
) -> tuple[dict[str, list[str]], RequestCounters]:
    """Every listable compartment's image ids, fetched concurrently through one client."""
    found: dict[str, list[str]] = {}
    async with OciClient(signer or signer_for(server), options) as client:

        async def walk(compartment_id: str) -> None:
            ids: list[str] = []
            params = {"compartmentId": compartment_id, "limit": limit}
            pages = client.paginate(server.url + "/20160918/images", params)
            async with aclosing(pages):
                async for paged in pages:
                    ids += [r["id"] for r in orjson.loads(paged.response.body)]
            found[compartment_id] = ids

        async with anyio.create_task_group() as group:
            for comp in server.world.listable_compartments():
                group.start_soon(walk, comp.id)
    return found, client.counters


def truth_ids(server: EmulatorServer) -> dict[str, list[str]]:
    world = server.world
    return {
        c.id: [i.id for i in world.listing(world.home_region, c.id)]
        for c in world.listable_compartments()
    }


def test_429_storm_completes_exactly(make_emulator: Callable[..., EmulatorServer]) -> None:
    """Throttled at 100 req/s with burst 5, every listing still arrives whole; 429s are counted."""
    server = make_emulator(rate=100, burst=5, latency_ms=5)
    found, counters = anyio.run(list_all, server, ClientOptions(concurrency=16, retry=FAST_RETRY))
    assert truth_ids(server) == found
    stats = server.stats()
    assert stats["throttled"] > 0
    assert stats["throttled"] == counters.throttled
    assert stats["requests"] == counters.sent


def test_faults_and_truncated_bodies_are_retried(
    make_emulator: Callable[..., EmulatorServer],
) -> None:
    """10 % 5xx and 5 % truncated bodies: retried until every listing is exact."""
    server = make_emulator(fault_rate=0.10, truncate_rate=0.05, reset_rate=0.02)
    found, counters = anyio.run(list_all, server, ClientOptions(concurrency=8, retry=FAST_RETRY))
    assert truth_ids(server) == found
    faults = server.stats()["faults"]
    assert faults.get("truncate", 0) > 0
    assert faults.get("500", 0) + faults.get("503", 0) > 0
    # aiohttp itself re-sends an idempotent request once when a kept-alive connection drops,
    # so resets need not reach the retry policy.
    assert counters.retried >= sum(faults.values()) - faults.get("reset", 0)


def test_stalled_response_times_out_and_is_retried(
    make_emulator: Callable[..., EmulatorServer],
) -> None:
    """A response stalled past the read timeout is abandoned and tried again."""
    server = make_emulator(stall_rate=1.0, stall_s=1.0)
    options = ClientOptions(
        concurrency=2,
        request_timeout_s=0.3,
        retry=RetryPolicy(max_attempts=2, base_s=0.01, jitter_s=0.01),
    )

    async def one() -> None:
        async with OciClient(signer_for(server), options) as client:
            await client.get(
                server.url + "/20160918/images", {"compartmentId": server.world.tenancy_id}
            )

    with pytest.raises(RequestTimeout):
        anyio.run(one)
    assert 2 == server.stats()["faults"]["stall"]


def test_stall_then_success(make_emulator: Callable[..., EmulatorServer]) -> None:
    """With some responses stalled, a short read timeout still completes the listing."""
    server = make_emulator(stall_rate=0.1, stall_s=1.0)
    options = ClientOptions(concurrency=8, request_timeout_s=0.5, retry=FAST_RETRY)
    found, counters = anyio.run(list_all, server, options, None, 500)
    assert truth_ids(server) == found
    assert counters.retried >= 1


def test_bad_signature_is_not_retried(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """A key the service does not know: one request, 401, and the error names the request id."""
    server = make_emulator()
    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = auth.ApiKeySigner(
        "t/u/f", rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    async def one() -> None:
        async with OciClient(stranger, ClientOptions(retry=FAST_RETRY)) as client:
            await client.get(
                server.url + "/20160918/images", {"compartmentId": server.world.tenancy_id}
            )

    with pytest.raises(OciApiError) as info:
        anyio.run(one)
    assert (401, "NotAuthenticated", False) == (
        info.value.status,
        info.value.code,
        info.value.retryable,
    )
    assert info.value.opc_request_id
    assert info.value.opc_request_id in str(info.value)
    assert 1 == server.stats()["requests"]


def test_clock_skew_is_rejected(
    make_emulator: Callable[..., EmulatorServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client clock ten minutes slow gets 401 NotAuthenticated, not a retry loop."""
    import time

    server = make_emulator()
    monkeypatch.setattr(
        signing,
        "http_date",
        lambda timestamp=None: email.utils.formatdate(time.time() - 600, usegmt=True),
    )

    async def one() -> None:
        async with OciClient(signer_for(server), ClientOptions(retry=FAST_RETRY)) as client:
            await client.get(
                server.url + "/20160918/images", {"compartmentId": server.world.tenancy_id}
            )

    with pytest.raises(OciApiError) as info:
        anyio.run(one)
    assert 401 == info.value.status
    assert 1 == server.stats()["requests"]


@pytest.mark.parametrize("concurrency", [1, 5])
def test_in_flight_bound_holds(
    make_emulator: Callable[..., EmulatorServer], concurrency: int
) -> None:
    """The emulator never sees more requests at once than fetch.concurrency."""
    server = make_emulator(latency_ms=10)
    found, _ = anyio.run(list_all, server, ClientOptions(concurrency=concurrency))
    assert truth_ids(server) == found
    assert server.stats()["max_in_flight"] == concurrency


def test_identifies_itself(make_emulator: Callable[..., EmulatorServer]) -> None:
    """Every request carries a User-Agent naming the project and a client opc-request-id."""
    server = make_emulator()
    seen: list[dict[str, str]] = []

    async def one() -> Any:
        async with OciClient(signer_for(server)) as client:
            response = await client.get(
                server.url + "/20160918/images",
                {"compartmentId": server.world.tenancy_id, "limit": 1},
            )
            seen.append({"id": response.opc_request_id or ""})
            return response

    anyio.run(one)
    client_part, _, server_part = seen[0]["id"].partition("/")
    assert 32 == len(client_part)
    [agent] = server.stats()["user_agents"]
    assert agent.startswith(f"oci-images-connector/{__version__} (Python ")
    assert server_part


def test_secrets_never_reach_logs_or_errors(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Logs and errors of a failing run hold no key, pass phrase, token or Authorization header."""
    server = make_emulator(fault_rate=0.5)
    assert server.config_file is not None
    token = Path(
        auth.load_profile(server.config_file, "SESSION").security_token_file or ""
    ).read_text()
    pem = server.credentials.private_pem().decode()
    signer = signer_for(server, "SESSION")
    captured_headers: dict[str, str] = {}
    anyio.run(signer.sign, "GET", server.url + "/x", captured_headers)
    errors: list[str] = []
    with captured_events() as logs:

        async def run() -> None:
            async with OciClient(
                signer, ClientOptions(retry=RetryPolicy(max_attempts=2, base_s=0.01, jitter_s=0.01))
            ) as client:
                for comp in server.world.listable_compartments():
                    try:
                        await client.get(
                            server.url + "/20160918/images", {"compartmentId": comp.id}
                        )
                    except OciApiError as exc:
                        errors.append(str(exc) + repr(exc))

        anyio.run(run)
    assert errors, "the run was meant to fail somewhere"
    assert any(e["event"] == "request.retry" for e in logs)
    text = repr(logs) + "".join(errors) + repr(signer)
    signature = signing.parse_authorization(captured_headers["authorization"])["signature"]
    for secret in (token, pem.splitlines()[1], signature, "Signature algorithm"):
        assert secret not in text


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("localhost", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_loopback_detection(host: str, expected: bool) -> None:
    """Plain http is allowed by default only to loopback addresses."""
    assert expected == is_loopback(host)


def test_a_fetch_task_goes_on_while_its_listing_waits_for_verdicts(
    make_emulator: Callable[..., EmulatorServer],
) -> None:
    """A listing ends once the workers have parsed its pages; meanwhile its fetch task takes
    the next listing (here the only task: without that, the two would wait on each other)."""
    from connector.oci.endpoints import Endpoints
    from connector.oci.fetch import Fetcher
    from connector.pages import AllStarted, Message, Page, WorkItem
    from connector.workers.coordinator import Verdicts

    server = make_emulator()
    region = server.world.home_region
    first, second = (WorkItem(region, c.id) for c in server.world.listable_compartments()[:2])
    verdicts = Verdicts()
    seen: list[tuple[str, str]] = []

    async def main() -> None:
        async with OciClient(signer_for(server), ClientOptions(retry=FAST_RETRY)) as client:
            endpoints = Endpoints(server.endpoint_template, "", region)
            fetcher = Fetcher(client, endpoints, 1000, {}, per_region=1, verdicts=verdicts)
            send, receive = anyio.create_memory_object_stream[Message](4)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    group.start_soon(fetcher.fetch_all, [first, second], send)
                    held: list[int] = []
                    async with receive:
                        async for message in receive:
                            if isinstance(message, AllStarted):
                                continue
                            kind = "page" if isinstance(message, Page) else "end"
                            seen.append((kind, message.item.compartment_id))
                            if not isinstance(message, Page):
                                continue
                            if message.item == first:
                                held.append(message.number)
                                continue
                            for number in held:  # the first listing's pages, parsed only now
                                verdicts.put(first, number, None)
                            held.clear()
                            verdicts.put(second, message.number, None)

    anyio.run(main)
    one, two = first.compartment_id, second.compartment_id
    pages = [c for kind, c in seen if kind == "page"]
    assert pages == sorted(pages, key=[one, two].index)  # one listing after the other
    ends = [c for kind, c in seen if kind == "end"]
    assert sorted([one, two]) == sorted(ends)
    assert seen.index(("end", one)) > seen.index(("page", two))


def test_the_last_listing_to_start_is_announced_once(
    make_emulator: Callable[..., EmulatorServer],
) -> None:
    """`AllStarted` comes once, when the last listing is taken: after the pages of every
    listing taken before it and before its own (one fetch task takes them in order), so that
    the workers can write what they hold while the last pages are on their way."""
    from connector.oci.endpoints import Endpoints
    from connector.oci.fetch import Fetcher
    from connector.pages import AllStarted, ListingEnd, Message, Page, WorkItem

    server = make_emulator()
    region = server.world.home_region
    items = [WorkItem(region, c.id) for c in server.world.listable_compartments()[:4]]
    seen: list[Message] = []

    async def main() -> None:
        async with OciClient(signer_for(server), ClientOptions(retry=FAST_RETRY)) as client:
            endpoints = Endpoints(server.endpoint_template, "", region)
            fetcher = Fetcher(client, endpoints, 1000, {}, per_region=1)
            send, receive = anyio.create_memory_object_stream[Message](4)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    group.start_soon(fetcher.fetch_all, items, send)
                    async with receive:
                        seen.extend([message async for message in receive])

    anyio.run(main)
    [announced] = [i for i, m in enumerate(seen) if isinstance(m, AllStarted)]
    pages = [(i, m.item) for i, m in enumerate(seen) if isinstance(m, Page)]
    assert all(i < announced for i, item in pages if item != items[-1])
    assert all(i > announced for i, item in pages if item == items[-1])
    assert sorted(items) == sorted(m.item for m in seen if isinstance(m, ListingEnd))
