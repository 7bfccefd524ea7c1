"""The retry policy and the adaptive rate controller, with the clock injected: no sleeping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import oci
import pytest

from connector.emulator import EmulatorServer
from connector.oci.retry import RateController, RetryPolicy, Ticket, is_retryable_status
from tests.helpers import FakeClock


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, "TooManyRequests", True),
        (500, "InternalServerError", True),
        (502, "", True),
        (503, "ServiceUnavailable", True),
        (504, "", True),
        (501, "NotImplemented", False),
        (409, "IncorrectState", True),
        (409, "LockConflict", True),
        (409, "Conflict", False),
        (400, "InvalidParameter", False),
        (401, "NotAuthenticated", False),
        (404, "NotAuthorizedOrNotFound", False),
    ],
)
def test_retryable_statuses(status: int, code: str, expected: bool) -> None:
    """The SDK's checker: 429, 409 IncorrectState/LockConflict and 5xx but 501 are retried."""
    assert expected == is_retryable_status(status, code)


def sdk_checker_retries(status: int, code: str) -> bool:
    """Whether the official SDK's default retry checker retries a ServiceError."""
    checker = oci.retry.retry_checkers.TimeoutConnectionAndServiceErrorRetryChecker(
        service_error_retry_config=oci.retry.retry_checkers.RETRYABLE_STATUSES_AND_CODES,
        retry_any_5xx=True,
    )
    error = oci.exceptions.ServiceError(status, code, {}, "message")
    return bool(checker.should_retry(exception=error))


@pytest.mark.parametrize(
    "status", [400, 401, 403, 404, 409, 412, 429, 500, 501, 502, 503, 504, 599]
)
@pytest.mark.parametrize(
    "code", ["", "IncorrectState", "LockConflict", "Conflict", "TooManyRequests"]
)
def test_classification_equals_the_sdk_checker(status: int, code: str) -> None:
    """Every status and code is retried exactly when the SDK's default checker retries it."""
    assert sdk_checker_retries(status, code) == is_retryable_status(status, code)


class TestRetryPolicy:
    def test_defaults_are_the_sdk_default_strategy(self) -> None:
        """8 attempts, 600 s, base 1 s, cap 30 s, 1 s of jitter: oci.retry.DEFAULT_RETRY_STRATEGY."""
        sdk = oci.retry.DEFAULT_RETRY_STRATEGY
        limits = {type(c).__name__: c for c in sdk.checkers.checkers}
        policy = RetryPolicy()
        assert (
            limits["LimitBasedRetryChecker"].max_attempts,
            limits["TotalTimeExceededRetryChecker"].time_limit_seconds,
            sdk.base_sleep_time_seconds,
            sdk.max_wait_between_calls_seconds,
            sdk.decorrelated_jitter,
        ) == (policy.max_attempts, policy.deadline_s, policy.base_s, policy.cap_s, policy.jitter_s)

    @pytest.mark.parametrize("draw", [0.0, 0.37, 0.999])
    def test_waits_equal_the_sdk_sleeps(self, draw: float, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the same random draw, each wait equals the SDK's decorrelated-jitter sleep."""
        sleeps = oci.retry.retry_sleep_utils
        monkeypatch.setattr(sleeps.random, "uniform", lambda low, high: low + draw * (high - low))
        sdk = oci.retry.DEFAULT_RETRY_STRATEGY
        expected = [
            sleeps.get_exponential_backoff_with_decorrelated_jitter_sleep_time(
                sdk.base_sleep_time_seconds,
                sdk.exponent_growth_factor,
                sdk.max_wait_between_calls_seconds,
                attempt,
                sdk.decorrelated_jitter,
            )
            for attempt in range(1, 8)
        ]
        assert expected == pytest.approx(
            [RetryPolicy().backoff(n, lambda: draw) for n in range(1, 8)]
        )

    def test_total_wait_is_about_ninety_seconds(self) -> None:
        """Seven waits before the eighth attempt: 91 s at least, 96 s at most."""
        assert 91.0 == RetryPolicy().total_backoff(lambda: 0.0)
        assert 96.0 == pytest.approx(RetryPolicy().total_backoff(lambda: 1.0))

    def test_stops_after_max_attempts(self) -> None:
        """No delay is offered once max_attempts have been made."""
        policy = RetryPolicy(max_attempts=3)
        assert policy.delay(2, 0.0, uniform=lambda: 1.0) is not None
        assert policy.delay(3, 0.0, uniform=lambda: 1.0) is None

    def test_stops_at_the_deadline_as_the_sdk(self) -> None:
        """A failure before the deadline is retried (even past it); one after it is not."""
        policy = RetryPolicy(deadline_s=10.0)
        assert 1.0 == policy.delay(1, 9.5, uniform=lambda: 0.0)
        assert policy.delay(1, 10.0, uniform=lambda: 0.0) is None

    def test_retry_after_lengthens_but_never_shortens(self) -> None:
        """Retry-After is honoured when longer than the backoff; never retries sooner than it."""
        assert 7.0 == RetryPolicy().delay(1, 0.0, retry_after_s=7.0, uniform=lambda: 1.0)
        assert 2.0 == RetryPolicy().delay(1, 0.0, retry_after_s=0.0, uniform=lambda: 1.0)

    def test_retry_after_past_the_deadline_stops(self) -> None:
        """Waiting past the deadline for a Retry-After would be pointless."""
        assert RetryPolicy(deadline_s=60).delay(1, 0.0, retry_after_s=3600.0) is None


class TestRateController:
    def test_unthrottled_is_unpaced(self) -> None:
        """Until a 429 arrives there is no pacing."""
        controller = RateController(16, clock=FakeClock())
        assert controller.rate is None
        assert [0.0, 0.0, 0.0] == [controller.reserve() for _ in range(3)]

    def test_first_throttle_starts_from_the_achieved_rate(self) -> None:
        """The first 429 sets the rate to the successes of the last second."""
        clock = FakeClock()
        controller = RateController(16, clock=clock)
        for _ in range(12):
            clock.advance(0.125)
            controller.on_success(Ticket(clock.now))
        assert controller.on_throttle(Ticket(clock.now))
        assert 9.0 == controller.rate  # those at 0.5 s .. 1.5 s

    def test_early_burst_is_spread_over_half_a_second(self) -> None:
        """A burst that got through in the first 0.1 s counts as that many per 0.5 s, not per 0.1 s."""
        clock = FakeClock()
        controller = RateController(16, clock=clock)
        for _ in range(10):
            clock.advance(0.01)
            controller.on_success(Ticket(clock.now))
        controller.on_throttle(Ticket(clock.now))
        assert 20.0 == controller.rate

    def test_one_decrease_per_window(self) -> None:
        """429s for requests sent before the last decrease are ignored."""
        clock = FakeClock()
        controller = RateController(16, max_rate=20, clock=clock)
        for _ in range(20):
            clock.advance(0.05)
            controller.on_success(Ticket(clock.now))
        in_flight = [Ticket(clock.now) for _ in range(5)]
        clock.advance(0.01)
        assert controller.on_throttle(in_flight[0])
        rate = controller.rate
        assert [False] * 4 == [controller.on_throttle(t) for t in in_flight[1:]]
        assert rate == controller.rate
        assert 1 == controller.decreases
        clock.advance(0.1)
        assert controller.on_throttle(Ticket(clock.now - 0.05))
        assert rate is not None
        assert controller.rate == pytest.approx(rate * RateController.decrease)

    def test_decrease_is_multiplicative_and_based_on_what_got_through(self) -> None:
        """A rate far above what the service let through comes down to β × achieved at once."""
        clock = FakeClock()
        controller = RateController(16, max_rate=1000, clock=clock)
        for _ in range(10):
            clock.advance(0.1)
            controller.on_success(Ticket(clock.now))
        controller.on_throttle(Ticket(clock.now))
        assert controller.rate == pytest.approx(RateController.decrease * 10)

    @pytest.mark.parametrize("share", [1.0, 0.25])
    def test_additive_increase_after_slow_start(self, share: float) -> None:
        """After the second decrease, each success adds a·s/rate: about +a·s req/s per second,
        so that N shards of share s = 1/N together climb as fast as one run."""
        clock = FakeClock()
        controller = RateController(16, clock=clock, share=share)
        for _ in range(10):
            clock.advance(0.1)
            controller.on_success(Ticket(clock.now))
        controller.on_throttle(Ticket(clock.now))
        clock.advance(0.5)
        controller.on_throttle(Ticket(clock.now))
        assert controller.rate is not None
        start = controller.rate
        controller.on_success(Ticket(clock.now))
        increase = RateController.additive_increase * share / start
        assert controller.rate == pytest.approx(start + increase)

    def test_pacing_spaces_sends(self) -> None:
        """With a rate of 10/s, successive reservations are 0.1 s apart."""
        clock = FakeClock()
        controller = RateController(16, max_rate=10, clock=clock)
        assert [0.0, 0.1, 0.2] == pytest.approx([controller.reserve() for _ in range(3)])
        clock.advance(1.0)
        assert 0.0 == controller.reserve()

    def test_concurrency_aimd_within_bounds(self) -> None:
        """In-flight bound: ×0.7 per decrease, never below 2, +1/n per success, never above max."""
        clock = FakeClock()
        controller = RateController(16, clock=clock)
        for _ in range(20):
            clock.advance(1.0)
            controller.on_throttle(Ticket(clock.now))
        assert 2 == controller.in_flight_limit
        for _ in range(1000):
            controller.on_success(Ticket(clock.now))
        assert 16 == controller.in_flight_limit

    def test_client_cap_is_never_exceeded(self) -> None:
        """max_requests_per_second caps the rate however long things go well."""
        clock = FakeClock()
        controller = RateController(16, max_rate=5, clock=clock)
        for _ in range(500):
            clock.advance(0.2)
            controller.on_success(Ticket(clock.now))
        assert 5 == controller.rate


class TestPriorityGate:
    def test_admits_by_priority_then_arrival(self) -> None:
        """With the gate full, a later priority-0 waiter goes before earlier priority-1 ones."""
        import anyio

        from connector.oci.retry import PriorityGate

        order: list[str] = []

        async def main() -> None:
            gate = PriorityGate(lambda: 1)
            release = anyio.Event()

            async def holder() -> None:
                async with gate.hold():
                    await release.wait()

            async def waiter(name: str, priority: int) -> None:
                async with gate.hold(priority):
                    order.append(name)

            async with anyio.create_task_group() as group:
                group.start_soon(holder)
                await anyio.wait_all_tasks_blocked()
                for name, priority in [("first-page-a", 1), ("first-page-b", 1), ("next-page", 0)]:
                    group.start_soon(waiter, name, priority)
                    await anyio.wait_all_tasks_blocked()
                release.set()

        anyio.run(main)
        assert ["next-page", "first-page-a", "first-page-b"] == order

    def test_cancelled_waiter_gives_its_turn_away(self) -> None:
        """A waiter cancelled while queued does not take capacity from the next one."""
        import anyio

        from connector.oci.retry import PriorityGate

        async def main() -> int:
            gate = PriorityGate(lambda: 1)
            async with gate.hold():
                with anyio.move_on_after(0.01):
                    async with gate.hold():
                        raise AssertionError("admitted while the gate was full")
            async with gate.hold():
                return gate.held

        assert 1 == anyio.run(main)


class TestShareOfTheBudget:
    def test_share_caps_the_rate(self) -> None:
        """One of four shards paces at a quarter of the configured rate."""
        from connector.oci.retry import AdaptiveLimiter

        limiter = AdaptiveLimiter(16, max_rate=20, clock=FakeClock(), share=0.25)
        assert 5.0 == limiter.controller("a").rate

    def test_share_must_be_a_fraction(self) -> None:
        """A share of nothing, or more than the whole budget, is a programming error."""
        with pytest.raises(ValueError, match="share"):
            RateController(16, share=0.0)
        with pytest.raises(ValueError, match="share"):
            RateController(16, share=1.5)


class TestPerEndpoint:
    @pytest.mark.parametrize(
        ("url", "key"),
        [
            (
                "https://iaas.us-ashburn-1.oraclecloud.com/20160918/images?compartmentId=x",
                "https://iaas.us-ashburn-1.oraclecloud.com",
            ),
            (
                "https://identity.eu-frankfurt-1.oci.oraclecloud.com/20160918/compartments",
                "https://identity.eu-frankfurt-1.oci.oraclecloud.com",
            ),
            (
                "http://127.0.0.1:8080/us-ashburn-1/20160918/images?page=2",
                "http://127.0.0.1:8080/us-ashburn-1",
            ),
            ("http://127.0.0.1:8080/eu-paris-1/20160918", "http://127.0.0.1:8080/eu-paris-1"),
            ("https://proxy.example.com/images/12345678x", "https://proxy.example.com"),
        ],
    )
    def test_endpoint_key(self, url: str, key: str) -> None:
        """The key is what comes before the API version, or the host when there is none."""
        from connector.oci.retry import endpoint_key

        assert key == endpoint_key(url)

    def test_throttling_one_endpoint_leaves_the_others_alone(self) -> None:
        """A 429 from one region lowers that region's rate and in-flight bound only."""
        from connector.oci.retry import AdaptiveLimiter

        clock = FakeClock()
        limiter = AdaptiveLimiter(16, max_rate=20, clock=clock)
        for _ in range(20):
            clock.advance(0.05)
            for key in ("a", "b"):
                limiter.success(Ticket(clock.now, key))
        limiter.throttled(Ticket(clock.now, "a"))
        a, b = limiter.controller("a"), limiter.controller("b")
        assert a.rate is not None
        assert a.rate < 20
        assert 20 == b.rate
        assert a.in_flight_limit < 16 == b.in_flight_limit
        assert 1 == a.decreases
        assert 0 == b.decreases
        assert {"a", "b"} == set(limiter.controllers)

    def test_pacing_is_per_endpoint(self) -> None:
        """Two regions at 10 req/s each get two interleaved schedules, not one shared one."""
        from connector.oci.retry import AdaptiveLimiter

        clock = FakeClock()
        limiter = AdaptiveLimiter(16, max_rate=10, clock=clock)
        waits = [limiter.controller(key).reserve() for key in ("a", "b", "a", "b", "a", "b")]
        assert [0.0, 0.0, 0.1, 0.1, 0.2, 0.2] == pytest.approx(waits)

    def test_a_slow_region_does_not_hold_the_global_slots(self) -> None:
        """Requests waiting for a throttled region's pace hold no global in-flight slot, so
        another region's request goes out at once even when the global bound is small."""
        import anyio

        from connector.oci.retry import AdaptiveLimiter

        clock = FakeClock()  # frozen: region a's queued sends wait 2 s, 4 s, ... (real sleeps)
        limiter = AdaptiveLimiter(2, clock=clock)
        limiter.throttled(Ticket(clock.now, "a"))  # a: 0.5 req/s, nothing got through
        assert limiter.controller("a").rate == RateController.min_rate
        sent: list[str] = []
        b_sent = anyio.Event()

        async def request(key: str) -> None:
            async with limiter.slot(key):
                sent.append(key)
                if key == "b":
                    b_sent.set()
                await anyio.sleep(10)

        async def main() -> None:
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(request, "a")
                await anyio.wait_all_tasks_blocked()
                with anyio.fail_after(1):
                    group.start_soon(request, "b")
                    await b_sent.wait()
                assert 1 == limiter.in_flight - 1 == sent.count("a")
                group.cancel_scope.cancel()

        anyio.run(main)
        assert ["a", "b"] == sent

    def test_in_flight_bound_is_global(self) -> None:
        """However many regions, no more than max_concurrency requests are in flight."""
        import anyio

        from connector.oci.retry import AdaptiveLimiter

        limiter = AdaptiveLimiter(3)

        async def request(key: str) -> None:
            async with limiter.slot(key):
                await anyio.sleep(0.01)

        async def main() -> None:
            async with anyio.create_task_group() as group:
                for n in range(40):
                    group.start_soon(request, f"region-{n % 4}")

        anyio.run(main)
        assert 3 == limiter.max_in_flight


def test_four_regions_each_rate_limited_run_side_by_side(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """End to end: four regions, each limited to 20 requests/s by the emulator. Paced per
    region, the run goes at nearly four times one region's rate; one controller pacing every
    region together could not pass 20 requests/s, and would take 4× the bound."""
    import time

    import connector
    from connector.emulator import build_world

    regions = ("us-ashburn-1", "us-phoenix-1", "eu-frankfurt-1", "uk-london-1")
    world = build_world(
        seed=9, compartments=99, regions=regions, platform_images=5, custom_scale=0.0
    )
    server = make_emulator(world, latency_ms=20.0, rate=20.0, burst=5.0)
    settings = connector.load_config(
        values={
            "oci": {
                "config_file": str(server.config_file),
                "endpoint": server.endpoint_template,
                "regions": list(regions),
            },
            "fetch": {"workers": 0, "platform_images": "once"},
            "output": {"uri": str(tmp_path / "lake")},
        }
    )
    started = time.monotonic()
    outcome = connector.run(settings)
    wall = time.monotonic() - started
    assert 0 == outcome.exit_code
    stats = server.emulator.stats.as_dict()
    served = {r: n - stats["throttled_by_region"].get(r, 0)
              for r, n in stats["requests_by_region"].items()}  # fmt: skip
    assert set(regions) == set(served)
    bound = max((n - 5.0) / 20.0 for n in served.values())  # regions side by side
    one_controller = (sum(served.values()) - 5.0) / 20.0  # what pacing them together allows
    assert one_controller > 3.5 * bound
    assert wall < 0.75 * one_controller  # clearly faster than one shared pace could be
    assert stats["throttled"] <= 0.2 * stats["requests"]
