"""Throttling that lasts: minutes of 429s, run in virtual time against the official SDK's strategy.

The client runs with an injected clock and sleep. Virtual time advances only when every task
waits and no request is on the wire, to the earliest wake-up; the loopback server answers from
the same clock. A storm of a minute and a half thus takes well under a second of real time, and
the client's retry policy and rate controller run unchanged.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import oci
import orjson
import pytest
from aiohttp import web

from connector.errors import OciApiError
from connector.oci.auth import SdkSigner
from connector.oci.client import ClientOptions, OciClient
from connector.oci.retry import RetryPolicy
from tests.netfixtures import LoopThread

COMPARTMENTS = [f"ocid1.compartment.oc1..storm{i:02d}" for i in range(10)]
PAGES = 3


class VirtualTime:
    """A clock and a sleep for the client; ``drive`` moves time when nothing else can happen."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), event))
        await event.wait()

    async def drive(self, busy: Callable[[], bool]) -> None:
        while True:
            await anyio.wait_all_tasks_blocked()
            if busy() or not self._sleepers:
                await anyio.sleep(0.0005)  # a request is on the wire: real time must pass
                continue
            wake, _, event = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            event.set()


@dataclass
class StormServer:
    """ListImages that answers 429 until ``storm_s`` of virtual time, then pages of ids."""

    clock: VirtualTime
    storm_s: float
    unauthorized: int = 0
    requests: list[tuple[float, str, int]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/20160918/images", self._images)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _images(self, request: web.Request) -> web.Response:
        compartment = request.query["compartmentId"]
        if self.unauthorized:
            self.unauthorized -= 1
            self.requests.append((self.clock.now, compartment, 401))
            body = {"code": "NotAuthenticated", "message": "token expired"}
            return web.json_response(body, status=401)
        if self.clock.now < self.storm_s:
            self.requests.append((self.clock.now, compartment, 429))
            body = {"code": "TooManyRequests", "message": "Too many requests for the tenancy"}
            return web.json_response(body, status=429)
        self.requests.append((self.clock.now, compartment, 200))
        page = int(request.query.get("page", "0"))
        items = [{"id": f"{compartment}/{page}/{i}"} for i in range(5)]
        headers = {"opc-next-page": str(page + 1)} if page + 1 < PAGES else {}
        return web.Response(body=orjson.dumps(items), headers=headers)


class NoSigner:
    async def sign(self, method: str, url: str, headers: dict[str, str]) -> None:
        headers["authorization"] = "unsigned"


@pytest.fixture
def serve() -> Iterator[Callable[[StormServer], StormServer]]:
    loop = LoopThread()
    servers: list[StormServer] = []

    def start(server: StormServer) -> StormServer:
        loop.run(server.start())
        servers.append(server)
        return server

    yield start
    for server in servers:
        loop.run(server.stop())
    loop.stop()


@dataclass
class Outcome:
    """Per compartment: the virtual time it finished or gave up, and whether it completed."""

    finished: dict[str, float] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, OciApiError] = field(default_factory=dict)
    first_request: dict[str, float] = field(default_factory=dict)


def run_storm(server: StormServer, policy: RetryPolicy, signer: Any = None) -> Outcome:
    clock = server.clock
    outcome = Outcome()
    options = ClientOptions(concurrency=4, retry=policy, environ={})
    base = f"http://127.0.0.1:{server.port}/20160918/images"

    async def listing(client: OciClient, compartment: str) -> None:
        outcome.first_request[compartment] = clock.now
        ids: list[str] = []
        page: str | None = None
        try:
            while True:
                params = {"compartmentId": compartment, "page": page}
                response = await client.get(base, params, priority=0 if page else 1)
                ids += [r["id"] for r in orjson.loads(response.body)]
                page = response.next_page
                if page is None:
                    outcome.ids[compartment] = ids
                    break
        except OciApiError as exc:
            outcome.failed[compartment] = exc
        outcome.finished[compartment] = clock.now

    async def main() -> None:
        async with (
            OciClient(signer or NoSigner(), options, clock=clock, sleep=clock.sleep) as client,
            anyio.create_task_group() as driver,
        ):
            driver.start_soon(clock.drive, lambda: client.limiter.in_flight > 0)
            async with anyio.create_task_group() as group:
                for compartment in COMPARTMENTS:
                    group.start_soon(listing, client, compartment)
            driver.cancel_scope.cancel()

    anyio.run(main)
    return outcome


def sdk_gives_up_after(storm_s: float, monkeypatch: pytest.MonkeyPatch) -> float | None:
    """The official SDK's DEFAULT_RETRY_STRATEGY against the same storm, with its earliest
    draws (jitter 0): the virtual time at which it gives up, or None if it gets through."""
    now = [0.0]

    def operation() -> str:
        if now[0] < storm_s:
            raise oci.exceptions.ServiceError(429, "TooManyRequests", {}, "throttled")
        return "ok"

    with monkeypatch.context() as patch:
        patch.setattr(oci.retry.retry.time, "time", lambda: now[0])
        patch.setattr(oci.retry.retry.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
        patch.setattr(oci.retry.retry_sleep_utils.random, "uniform", lambda low, high: low)
        try:
            oci.retry.DEFAULT_RETRY_STRATEGY.make_retrying_call(operation)
        except oci.exceptions.ServiceError:
            return now[0]
    return None


# The client at its earliest: every random draw at zero.
EARLIEST = RetryPolicy(jitter_s=0.0)


@pytest.mark.parametrize("storm_s", [60.0, 90.0])
def test_storm_the_sdk_outlasts_is_outlasted(
    serve: Callable[[StormServer], StormServer], monkeypatch: pytest.MonkeyPatch, storm_s: float
) -> None:
    """A storm of a minute or a minute and a half: the SDK gets through, so does every listing,
    exactly, though each request may wait behind the others' throttling."""
    assert sdk_gives_up_after(storm_s, monkeypatch) is None
    started = time.monotonic()
    server = serve(StormServer(VirtualTime(), storm_s))
    outcome = run_storm(server, EARLIEST)
    assert {} == outcome.failed
    assert {c: [f"{c}/{p}/{i}" for p in range(PAGES) for i in range(5)] for c in COMPARTMENTS} == (
        outcome.ids
    )
    throttled = [t for t, _, status in server.requests if status == 429]
    assert throttled
    assert max(throttled) < storm_s <= min(outcome.finished.values())
    assert time.monotonic() - started < 60, "virtual time, not real time"


def test_storm_that_outlasts_the_sdk(
    serve: Callable[[StormServer], StormServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five minutes of 429s: the SDK gives up (after 91 s at the earliest); no listing here
    gives up sooner after its first request, and each tried max_attempts times."""
    sdk_done = sdk_gives_up_after(300.0, monkeypatch)
    assert sdk_done is not None
    assert 91.0 == pytest.approx(sdk_done)
    server = serve(StormServer(VirtualTime(), 300.0))
    outcome = run_storm(server, EARLIEST)
    assert set(COMPARTMENTS) == set(outcome.failed)
    for compartment in COMPARTMENTS:
        assert outcome.finished[compartment] - outcome.first_request[compartment] >= sdk_done
        assert 429 == outcome.failed[compartment].status
        assert "fetch.concurrency" in str(outcome.failed[compartment])
    per_compartment = {c: sum(1 for _, x, _ in server.requests if x == c) for c in COMPARTMENTS}
    assert {c: EARLIEST.max_attempts for c in COMPARTMENTS} == per_compartment


class FakePrincipal:
    """The SDK's principal signers: a requests auth callable with refresh_security_token."""

    def __init__(self) -> None:
        self.refreshed = 0
        self.region = "us-ashburn-1"

    def __call__(self, request: Any) -> Any:
        request.headers["authorization"] = f"Signature token={self.refreshed}"
        return request

    def refresh_security_token(self) -> None:
        self.refreshed += 1


@pytest.mark.parametrize(("unauthorized", "succeeds"), [(1, True), (2, False)])
def test_401_with_principals_refreshes_once(
    serve: Callable[[StormServer], StormServer], unauthorized: int, succeeds: bool
) -> None:
    """As the SDK's base client: a 401 refreshes the principal's token and tries once more."""
    principal = FakePrincipal()
    server = serve(StormServer(VirtualTime(), 0.0, unauthorized=unauthorized))
    signer = SdkSigner(principal, "instance_principal")
    options = ClientOptions(retry=EARLIEST, environ={}, auth="instance_principal")

    async def one() -> None:
        async with OciClient(signer, options) as client:
            await client.get(
                f"http://127.0.0.1:{server.port}/20160918/images", {"compartmentId": "c"}
            )

    if succeeds:
        anyio.run(one)
    else:
        with pytest.raises(OciApiError, match="dynamic group") as caught:
            anyio.run(one)
        assert 401 == caught.value.status
    assert 1 == principal.refreshed
    assert min(unauthorized + 1, 2) == len(server.requests)


def test_401_with_an_api_key_is_not_retried(
    serve: Callable[[StormServer], StormServer],
) -> None:
    """An API key cannot be refreshed: one request, and the message says what to check."""
    server = serve(StormServer(VirtualTime(), 0.0, unauthorized=5))
    options = ClientOptions(
        retry=EARLIEST, environ={}, profile='profile "DEFAULT" of ~/.oci/config'
    )

    async def one() -> None:
        async with OciClient(NoSigner(), options) as client:
            await client.get(
                f"http://127.0.0.1:{server.port}/20160918/images", {"compartmentId": "c"}
            )

    with pytest.raises(OciApiError) as caught:
        anyio.run(one)
    message = str(caught.value)
    assert 1 == len(server.requests)
    assert message.startswith(f'ListImages to 127.0.0.1:{server.port} with profile "DEFAULT"')
    for word in ("fingerprint", "key_file", "clock"):
        assert word in message
