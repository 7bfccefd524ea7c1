"""The retry policy and the adaptive rate controller, with the clock injected: no sleeping."""

from __future__ import annotations

import pytest

from connector.retry import RateController, RetryPolicy, Ticket, is_retryable_status


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
        (409, "Conflict", False),
        (400, "InvalidParameter", False),
        (401, "NotAuthenticated", False),
        (404, "NotAuthorizedOrNotFound", False),
    ],
)
def test_retryable_statuses(status: int, code: str, expected: bool) -> None:
    """429, 409 IncorrectState and 5xx but 501 are retried; 400, 401, 404 are not."""
    assert expected == is_retryable_status(status, code)


class TestRetryPolicy:
    def test_full_jitter_ceiling_doubles_up_to_the_cap(self) -> None:
        """With the random draw at its maximum, waits are base·2^(n-1), capped."""
        policy = RetryPolicy(max_attempts=10, base_s=0.1, cap_s=1.0)
        assert [0.1, 0.2, 0.4, 0.8, 1.0, 1.0] == [
            policy.backoff(n, lambda: 1.0) for n in range(1, 7)
        ]

    def test_jitter_scales_the_wait(self) -> None:
        """Full jitter: the wait is the draw times the ceiling, so it can be zero."""
        policy = RetryPolicy(base_s=0.5, cap_s=10)
        assert 0.0 == policy.backoff(3, lambda: 0.0)
        assert 1.0 == policy.backoff(3, lambda: 0.5)

    def test_stops_after_max_attempts(self) -> None:
        """No delay is offered once max_attempts have been made."""
        policy = RetryPolicy(max_attempts=3)
        assert policy.delay(2, 0.0, uniform=lambda: 1.0) is not None
        assert policy.delay(3, 0.0, uniform=lambda: 1.0) is None

    def test_stops_at_the_deadline(self) -> None:
        """A wait that would pass the total deadline ends the retries."""
        policy = RetryPolicy(base_s=1.0, deadline_s=10.0)
        assert 1.0 == policy.delay(1, 8.0, uniform=lambda: 1.0)
        assert policy.delay(1, 9.5, uniform=lambda: 1.0) is None

    def test_retry_after_is_honoured(self) -> None:
        """A server's Retry-After replaces the computed backoff."""
        assert 7.0 == RetryPolicy().delay(1, 0.0, retry_after_s=7.0, uniform=lambda: 1.0)


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

    def test_additive_increase_after_slow_start(self) -> None:
        """After the second decrease, each success adds a/rate: about +a req/s per second."""
        clock = FakeClock()
        controller = RateController(16, clock=clock)
        for _ in range(10):
            clock.advance(0.1)
            controller.on_success(Ticket(clock.now))
        controller.on_throttle(Ticket(clock.now))
        clock.advance(0.5)
        controller.on_throttle(Ticket(clock.now))
        assert controller.rate is not None
        start = controller.rate
        controller.on_success(Ticket(clock.now))
        assert controller.rate == pytest.approx(start + RateController.additive_increase / start)

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

        from connector.retry import PriorityGate

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

        from connector.retry import PriorityGate

        async def main() -> int:
            gate = PriorityGate(lambda: 1)
            async with gate.hold():
                with anyio.move_on_after(0.01):
                    async with gate.hold():
                        raise AssertionError("admitted while the gate was full")
            async with gate.hold():
                return gate.held

        assert 1 == anyio.run(main)
