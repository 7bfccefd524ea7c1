"""When to retry, how long to wait, and how fast to send.

``RetryPolicy`` is the one object that decides retries. Its defaults are the official SDK's
``DEFAULT_RETRY_STRATEGY``: 8 attempts, waits of ``min(base·2^(n-1) + U(0, 1 s), 30 s)`` with a
1 s base (about 91-96 s of waiting in all), and no new attempt once 600 s have passed since the
first. A throttling that lasts a minute and a half is thereby outlasted, as by the SDK; the
earlier policy here (full jitter from 0.1 s, 20 s cap) gave up after 6 s of waiting on average.
A server's ``Retry-After`` lengthens a wait, never shortens it below the SDK's. What is retried
is the SDK's retry checker's choice: 429, 409 ``IncorrectState``/``LockConflict``, 5xx but 501,
and failures to get any response.

``RateController`` is the pure core of the adaptive limiter. OCI answers 429 without
Retry-After, so the client must find the service's rate itself. At 50 ms latency, 20 req/s is
about one request in flight, so adapting the in-flight bound alone cannot converge; the
controller adapts both:

- a pacing rate (requests/s), which falls multiplicatively on a 429 and climbs on success;
- an in-flight bound, which shrinks multiplicatively on a 429 and grows additively on success,
  never above ``fetch.concurrency``.

At most one decrease happens per window: a 429 for a request sent before the last decrease
says nothing new (it was already in flight) and is ignored. Without that rule, one burst of
in-flight 429s would collapse the rate. The first decrease also bases itself on the rate
actually achieved over the last second, so a rate that has grown far past the service's
(while nothing was throttled) does not take many windows to come down.

OCI limits each region's API on its own, so ``AdaptiveLimiter`` keeps one controller per
endpoint (``endpoint_key``: the host and the path before the API version, so that a proxy or
the emulator serving several regions under one host still counts each region apart): a region
that is throttled slows down alone, and the others keep their pace. The bound on requests in
flight stays global (``fetch.concurrency``), taken only once a request's region has paced it,
so requests waiting for a slow region never hold capacity that another region could use.

Shards of one run share the tenancy's budget. A shard given the share ``s`` (1/N of N shards)
caps its rate at ``s`` × the configured rate and climbs ``s`` times as fast after a decrease, so
N shards in parallel probe the service together as one run does alone. (Slow start and the
multiplicative decrease are already proportional to each shard's own rate.) Shards on one
machine do better: they keep one ``RateState`` per endpoint in a shared file
(``connector.oci.sharedrate``), whose share is the sum of theirs, and so pace and adapt as one run.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

import anyio

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


# The SDK's retry checker (oci.retry.retry_checkers.RETRYABLE_STATUSES_AND_CODES): statuses
# retried whatever their code, or only with one of the codes listed.
RETRYABLE_CODES: dict[int, frozenset[str] | None] = {
    409: frozenset({"IncorrectState", "LockConflict"}),
    429: None,
}


def is_retryable_status(status: int, code: str = "") -> bool:
    """Whether the SDK's default strategy retries this status and code (5xx but 501 too)."""
    if status in RETRYABLE_CODES:
        codes = RETRYABLE_CODES[status]
        return codes is None or code in codes
    return 500 <= status <= 599 and status != 501


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with additive jitter, bounded by attempts and by a total time.

    The defaults reproduce the SDK's ``DEFAULT_RETRY_STRATEGY`` (decorrelated-jitter backoff).
    """

    max_attempts: int = 8
    base_s: float = 1.0
    cap_s: float = 30.0
    deadline_s: float = 600.0
    jitter_s: float = 1.0

    def backoff(self, attempt: int, uniform: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt ``attempt`` (1-based): min(cap, base·2^(n-1) + U·j)."""
        grown = self.base_s * 2.0 ** (attempt - 1)
        return float(min(self.cap_s, grown + uniform() * self.jitter_s))

    def total_backoff(self, uniform: Callable[[], float] = random.random) -> float:
        """The waiting done in all before giving up when every attempt fails quickly."""
        return sum(self.backoff(n, uniform) for n in range(1, self.max_attempts))

    def delay(
        self,
        attempt: int,
        elapsed_s: float,
        retry_after_s: float | None = None,
        uniform: Callable[[], float] = random.random,
    ) -> float | None:
        """How long to wait before the next attempt, or None when retrying must stop.

        As in the SDK, a failure before the deadline is retried, however long its wait; only a
        ``Retry-After`` that ends past the deadline stops the retries at once.
        """
        if attempt >= self.max_attempts or elapsed_s >= self.deadline_s:
            return None
        wait = self.backoff(attempt, uniform)
        if retry_after_s is not None:
            if elapsed_s + retry_after_s > self.deadline_s:
                return None
            wait = max(wait, retry_after_s)
        return wait


@dataclass(slots=True)
class Ticket:
    """One request's passage through the limiter: when it was sent, and to which endpoint."""

    sent_at: float
    endpoint: str = ""


_API_VERSION = re.compile(r"/\d{8}(?=/|$)")


def endpoint_key(url: str) -> str:
    """The endpoint a URL's rate limit belongs to: everything before the API version.

    ``https://iaas.us-ashburn-1.oraclecloud.com/20160918/images?...`` and
    ``http://127.0.0.1:8080/us-ashburn-1/20160918/images`` each name one region's Compute; a URL
    without an API version belongs to its scheme and host.
    """
    scheme, _, rest = url.partition("://")
    rest = rest.split("?", 1)[0]
    match = _API_VERSION.search(rest)
    if match is not None:
        return f"{scheme}://{rest[: match.start()]}"
    return f"{scheme}://{rest.split('/', 1)[0]}"


class RateState:
    """What a controller paces and adapts by: the rate, the next send slot, the last decrease,
    the recent successes. This one lives in the process; ``connector.oci.sharedrate`` keeps the same
    state in a file that the shards of a run on one machine map together, so that they pace and
    adapt as one controller.

    ``share`` is the part of the tenancy's budget the state speaks for: of the configured cap and
    of the additive climb. Read and change the state only inside ``held()``.
    """

    def __init__(self, share: float = 1.0) -> None:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        self.rate: float | None = None
        self.next_slot = -math.inf
        self.last_decrease = -math.inf
        self.slow_start = True
        self.decreases = 0
        self.started: float | None = None
        self._successes: deque[float] = deque()

    @contextmanager
    def held(self) -> Iterator[RateState]:
        """The state, to read and change (one process: nothing to lock)."""
        yield self

    def count_success(self, now: float, window_s: float) -> None:
        """Remember a success at ``now``."""
        self._successes.append(now)
        self._forget(now, window_s)

    def successes(self, now: float, window_s: float) -> int:
        """Successes in the last ``window_s``."""
        self._forget(now, window_s)
        return len(self._successes)

    def _forget(self, now: float, window_s: float) -> None:
        while self._successes and self._successes[0] < now - window_s:
            self._successes.popleft()


class RateController:
    """Adaptive pacing rate and in-flight bound; pure, with the clock injected.

    The pacing state is a ``RateState``: this process's own, or one shared with other shards
    (``state``). The in-flight bound is always the process's own.
    """

    decrease = 0.8
    concurrency_decrease = 0.7
    min_concurrency = 2.0
    slow_start_gain = 1.0
    additive_increase = 2.0
    min_rate = 0.5
    window_s = 1.0
    min_span_s = 0.5

    def __init__(
        self,
        max_concurrency: int,
        max_rate: float | None = None,
        clock: Clock = time.monotonic,
        share: float = 1.0,
        state: RateState | None = None,
    ) -> None:
        self.max_concurrency = float(max_concurrency)
        self.full_rate = max_rate or None
        """The configured cap for the whole tenancy; this controller's is ``state.share`` of it."""
        self.concurrency = float(max_concurrency)
        self._clock = clock
        self.state = state if state is not None else RateState(share)
        with self.state.held() as st:
            self._begin(st)

    def _begin(self, st: RateState) -> None:
        """Start a state that has not started (new, or started over where it is shared)."""
        if st.started is None:
            st.started = self._clock()
            st.rate = self._cap(st)

    def _cap(self, st: RateState) -> float | None:
        return None if self.full_rate is None else self.full_rate * st.share

    @property
    def rate(self) -> float | None:
        """The pacing rate in requests/s (None: unpaced, nothing throttled yet)."""
        with self.state.held() as st:
            return st.rate

    @property
    def decreases(self) -> int:
        """How many times the rate came down."""
        with self.state.held() as st:
            return st.decreases

    @property
    def in_flight_limit(self) -> int:
        """The current bound on requests in flight."""
        return max(1, math.floor(self.concurrency))

    def reserve(self) -> float:
        """Claim the next send slot; returns how long to wait for it (0 when unpaced)."""
        now = self._clock()
        with self.state.held() as st:
            self._begin(st)
            if st.rate is None:
                return 0.0
            slot = max(now, st.next_slot)
            st.next_slot = slot + 1.0 / st.rate
            return slot - now

    def on_success(self, ticket: Ticket) -> None:
        """A request succeeded: count it and grow the bounds."""
        now = self._clock()
        self.concurrency = min(self.max_concurrency, self.concurrency + 1.0 / self.concurrency)
        with self.state.held() as st:
            self._begin(st)
            st.count_success(now, self.window_s)
            if st.rate is None:
                return
            if st.slow_start:
                st.rate += self.slow_start_gain  # +gain·rate per second: doubles every ~0.7 s
            else:
                # About +a·share req/s each second: N shards together climb as one run does.
                st.rate += self.additive_increase * st.share / st.rate
            cap = self._cap(st)
            if cap is not None:
                st.rate = min(st.rate, cap)

    def on_throttle(self, ticket: Ticket) -> bool:
        """A request was throttled; decrease unless this window already did. Returns whether."""
        now = self._clock()
        with self.state.held() as st:
            self._begin(st)
            if ticket.sent_at < st.last_decrease:
                return False
            # Early in a run, the window is not full yet: divide by the time actually observed,
            # but by no less than min_span_s, so that an initial burst is not mistaken for the
            # rate.
            assert st.started is not None
            span = min(self.window_s, max(self.min_span_s, now - st.started))
            achieved = max(self.min_rate, st.successes(now, self.window_s) / span)
            if st.rate is None:
                # First signal: start from what actually got through, then probe upwards quickly.
                st.rate = achieved
            else:
                st.rate = max(self.min_rate, self.decrease * min(st.rate, achieved))
                st.slow_start = False
            st.last_decrease = now
            st.next_slot = max(st.next_slot, now)
            st.decreases += 1
        self.concurrency = max(self.min_concurrency, self.concurrency * self.concurrency_decrease)
        self.concurrency = min(self.concurrency, self.max_concurrency)
        return True


class PriorityGate:
    """A semaphore that admits waiters by priority, then in arrival order.

    anyio's ``CapacityLimiter`` is FIFO; here a listing's next page (priority 0) must go ahead
    of a new listing's first page (priority 1), so that large compartments finish early
    instead of trickling out one page per round at the end of a run. The capacity is read
    through a callable, so it may change while waiters wait.
    """

    def __init__(self, capacity: Callable[[], int]) -> None:
        self._capacity = capacity
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()
        self.held = 0

    @asynccontextmanager
    async def hold(self, priority: int = 1) -> AsyncIterator[None]:
        """Hold one unit of capacity for the duration of the block."""
        await self._acquire(priority)
        try:
            yield
        finally:
            self.held -= 1
            self.admit()

    def admit(self) -> None:
        """Wake waiters while there is capacity (call after the capacity grew)."""
        while self._waiters and self.held < self._capacity():
            waiter = heapq.heappop(self._waiters)
            if waiter.cancelled:
                continue
            waiter.admitted = True
            self.held += 1
            waiter.event.set()

    async def _acquire(self, priority: int) -> None:
        if not self._waiters and self.held < self._capacity():
            self.held += 1
            return
        waiter = _Waiter(priority, next(self._order))
        heapq.heappush(self._waiters, waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.admitted:
                self.held -= 1
                self.admit()
            else:
                waiter.cancelled = True
            raise


class _Endpoint:
    """One endpoint's controller, its in-flight gate and its pacing lock."""

    def __init__(self, controller: RateController) -> None:
        self.controller = controller
        self.gate = PriorityGate(lambda: controller.in_flight_limit)
        self.pace_lock = anyio.Lock()


class AdaptiveLimiter:
    """Bounds requests in flight (globally) and paces them per endpoint, adapting to throttling.

    A request first takes its endpoint's adaptive in-flight slot and paced send time, then one
    of the global slots; admission is by priority (``PriorityGate``), pacing uses anyio's FIFO
    lock. ``max_rate`` caps each endpoint's rate; ``share`` is this process's part of it (see
    the module's docstring). ``states``, when given, supplies each endpoint's pacing state (the
    one shared by the shards of a run, from ``connector.oci.sharedrate``); without it, or when it
    has none for an endpoint, the process keeps its own.
    """

    def __init__(
        self,
        max_concurrency: int,
        max_rate: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        share: float = 1.0,
        states: Callable[[str], RateState | None] | None = None,
    ) -> None:
        self.max_concurrency = max(1, max_concurrency)
        self.max_rate = max_rate or None
        self.share = share
        self._states = states
        self._clock = clock
        self._sleep = sleep
        self._endpoints: dict[str, _Endpoint] = {}
        self._global = PriorityGate(lambda: self.max_concurrency)
        self.in_flight = 0
        self.max_in_flight = 0

    def controller(self, endpoint: str = "") -> RateController:
        """The rate controller of ``endpoint`` (an ``endpoint_key``), created on first use."""
        return self._endpoint(endpoint).controller

    @property
    def controllers(self) -> dict[str, RateController]:
        """Every endpoint's controller so far."""
        return {key: value.controller for key, value in self._endpoints.items()}

    def _endpoint(self, key: str) -> _Endpoint:
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            shared = self._states(key) if self._states is not None else None
            controller = RateController(
                self.max_concurrency, self.max_rate, self._clock, self.share, shared
            )
            endpoint = self._endpoints[key] = _Endpoint(controller)
        return endpoint

    @asynccontextmanager
    async def slot(self, endpoint: str = "", priority: int = 1) -> AsyncIterator[Ticket]:
        """Hold an in-flight slot and a paced send time for one request to ``endpoint``."""
        state = self._endpoint(endpoint)
        async with state.gate.hold(priority):
            async with state.pace_lock:
                wait = state.controller.reserve()
                if wait > 0:
                    await self._sleep(wait)
            async with self._global.hold(priority):
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    yield Ticket(self._clock(), endpoint)
                finally:
                    self.in_flight -= 1

    def success(self, ticket: Ticket) -> None:
        """Report a successful response."""
        state = self._endpoint(ticket.endpoint)
        state.controller.on_success(ticket)
        state.gate.admit()

    def throttled(self, ticket: Ticket) -> None:
        """Report a 429."""
        self._endpoint(ticket.endpoint).controller.on_throttle(ticket)


@dataclass(order=True, slots=True)
class _Waiter:
    priority: int
    order: int
    event: anyio.Event = field(default_factory=anyio.Event, compare=False)
    admitted: bool = field(default=False, compare=False)
    cancelled: bool = field(default=False, compare=False)
