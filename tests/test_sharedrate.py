"""Shards of one run on one machine pace and adapt as one, through a shared file."""

from __future__ import annotations

import importlib.util
import itertools
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.oci import sharedrate
from connector.oci.retry import AdaptiveLimiter, RateController, Ticket
from connector.oci.sharedrate import SharedRates
from tests.helpers import FakeClock

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fcntl") is None, reason="needs fcntl (POSIX)"
)


_OPENED: list[SharedRates] = []


@pytest.fixture(autouse=True)
def _close_files() -> Iterator[None]:
    """Every file a test opens is closed after it."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def shard(tmp_path: Path, index: int, count: int = 2, run_id: str = "r1") -> SharedRates:
    rates = SharedRates(run_id, index, 1.0 / count, where=tmp_path).__enter__()
    _OPENED.append(rates)
    return rates


def limiter(rates: SharedRates, clock: FakeClock, max_rate: float | None = None) -> AdaptiveLimiter:
    return AdaptiveLimiter(16, max_rate, clock, share=rates.share, states=rates.state)


def two_shards(tmp_path: Path, clock: FakeClock) -> tuple[RateController, RateController]:
    """Endpoint x's controllers in shards 0 and 1 of two, the second just slow-started by
    successes of the first only, ten in a second."""
    first = limiter(shard(tmp_path, 0), clock).controller("x")
    second = limiter(shard(tmp_path, 1), clock).controller("x")
    for _ in range(10):
        clock.advance(0.1)
        first.on_success(Ticket(clock.now))
    return first, second


class TestOneState:
    def test_shards_reserve_slots_on_one_timeline(self, tmp_path: Path) -> None:
        """Two shards of two at 10 req/s together send 10 req/s, not 5 each on two clocks."""
        clock = FakeClock()
        a, b = shard(tmp_path, 0), shard(tmp_path, 1)
        first, second = limiter(a, clock, 10).controller("x"), limiter(b, clock, 10).controller("x")
        waits = [c.reserve() for c in (first, second, first, second)]
        assert [0.0, 0.1, 0.2, 0.3] == pytest.approx(waits)

    def test_a_throttle_in_one_shard_slows_both_once(self, tmp_path: Path) -> None:
        """A 429 seen by one shard lowers the rate both pace at; the other shard's 429 for a
        request sent before that decrease changes nothing (one decrease per window for all)."""
        clock = FakeClock()
        first, second = two_shards(tmp_path, clock)
        for _ in range(10):
            second.on_success(Ticket(clock.now))
        in_flight = Ticket(clock.now)
        clock.advance(0.01)
        assert first.on_throttle(Ticket(clock.now))
        assert second.rate == first.rate == pytest.approx(20.0)  # both shards' successes
        assert not second.on_throttle(in_flight)
        assert 1 == second.decreases == first.decreases
        clock.advance(0.5)
        assert second.on_throttle(Ticket(clock.now - 0.1))
        # The last second holds 5 successes of the first shard and 10 of the second.
        assert first.rate == pytest.approx(RateController.decrease * 15.0)

    def test_successes_of_every_shard_climb_the_one_rate(self, tmp_path: Path) -> None:
        """After slow start each success adds a·share/rate, share being the shards joined: two
        of two climb as one run does."""
        clock = FakeClock()
        first, second = two_shards(tmp_path, clock)
        first.on_throttle(Ticket(clock.now))
        clock.advance(0.5)
        second.on_throttle(Ticket(clock.now))
        start = first.rate
        assert start is not None
        second.on_success(Ticket(clock.now))
        assert first.rate == pytest.approx(start + RateController.additive_increase / start)

    def test_the_cap_is_the_share_of_the_shards_joined(self, tmp_path: Path) -> None:
        """Two of four shards here pace at half of fetch.max_requests_per_second (the other two
        may run on another machine with their own half); a shard joining twice counts once."""
        clock = FakeClock()
        a = shard(tmp_path, 0, count=4)
        shard(tmp_path, 0, count=4).close()
        assert 5.0 == limiter(a, clock, 20).controller("x").rate
        b = shard(tmp_path, 3, count=4)
        controller = limiter(b, clock, 20).controller("x")
        for _ in range(100):
            clock.advance(0.1)
            controller.on_success(Ticket(clock.now))
        assert 10.0 == controller.rate

    def test_regions_keep_states_apart(self, tmp_path: Path) -> None:
        """Each endpoint has its own state in the file."""
        clock = FakeClock()
        rates = shard(tmp_path, 0)
        limits = limiter(rates, clock, 10)
        waits = [limits.controller(key).reserve() for key in ("a", "b", "a", "b")]
        assert [0.0, 0.0, 0.2, 0.2] == pytest.approx(waits)

    def test_endpoints_past_the_file_are_paced_alone(self, tmp_path: Path) -> None:
        """Beyond ENDPOINTS the controller keeps its own state."""
        rates = shard(tmp_path, 0)
        states = [rates.state(f"https://host-{n}") for n in range(sharedrate.ENDPOINTS + 2)]
        assert all(s is not None for s in states[: sharedrate.ENDPOINTS])
        assert [None, None] == states[sharedrate.ENDPOINTS :]

    def test_another_run_has_its_own_file(self, tmp_path: Path) -> None:
        clock = FakeClock()
        one = limiter(shard(tmp_path, 0, run_id="r1"), clock, 10).controller("x")
        other = limiter(shard(tmp_path, 1, run_id="r2"), clock, 10).controller("x")
        assert [0.0, 0.0] == [one.reserve(), other.reserve()]


class TestFile:
    def test_a_file_from_before_a_restart_starts_over(self, tmp_path: Path) -> None:
        """Monotonic time starts again at boot: a state from before would hold slots far in the
        future. The file records the boot and is started over when it differs."""
        clock = FakeClock()
        rates = shard(tmp_path, 0)
        controller = limiter(rates, clock, 1).controller("x")
        for _ in range(5):
            controller.reserve()  # next slot 5 s ahead
        rates.close()
        with rates.path.open("r+b") as file:
            file.seek(8)
            file.write(bytes(range(1, 17)))  # another boot's id
            file.seek(24)
            file.write(struct.pack("<d", 12345.0))  # and moment
        again = limiter(shard(tmp_path, 0), clock, 1).controller("x")
        assert 0.0 == again.reserve()

    def test_a_state_started_over_under_a_shard_leaves_it_alone(self, tmp_path: Path) -> None:
        """When the file is started over while a shard uses it, the shard goes on alone from
        what it last saw (no division by a zeroed rate, no other region's timeline)."""
        clock = FakeClock()
        rates = shard(tmp_path, 0)
        controller = limiter(rates, clock, 10).controller("x")
        assert [0.0, 0.2] == pytest.approx([controller.reserve(), controller.reserve()])
        with rates.path.open("r+b") as file:
            file.write(bytes(sharedrate._SIZE))
        other = limiter(shard(tmp_path, 1), clock, 10).controller("y")  # takes the first slot
        assert 0.0 == other.reserve()
        assert [0.4, 0.6] == pytest.approx([controller.reserve(), controller.reserve()])

    def test_an_idle_state_starts_over_when_a_shard_joins(self, tmp_path: Path) -> None:
        """A retry of the run long after finds the service afresh, at the cap again."""
        clock = FakeClock()
        first = limiter(shard(tmp_path, 0), clock, 10).controller("x")
        for _ in range(5):
            first.reserve()
        first.on_throttle(Ticket(clock.now))  # nothing got through: the minimum rate
        assert RateController.min_rate == first.rate
        rates = _OPENED[0]
        assert rates._map is not None
        offset = sharedrate._HEADER.size + 16 + 4 * 8
        struct.pack_into("<d", rates._map, offset, time.monotonic() - sharedrate.IDLE_S - 1)
        retried = limiter(shard(tmp_path, 0), clock, 10).controller("x")
        assert 5.0 == retried.rate

    def test_a_folder_open_to_others_is_not_used(self, tmp_path: Path) -> None:
        """The file would be theirs to change: each shard keeps its own state instead."""
        shared = tmp_path / "rates"
        shared.mkdir(mode=0o777)
        shared.chmod(0o777)
        rates = SharedRates("r1", 0, 0.5, where=shared).__enter__()
        assert rates.state("x") is None

    def test_a_link_in_place_of_the_file_is_not_followed(self, tmp_path: Path) -> None:
        victim = tmp_path / "victim"
        victim.write_text("keep me")
        probe = SharedRates("r1", 0, 0.5, where=tmp_path / "rates")
        probe.path.parent.mkdir(mode=0o700)
        probe.path.symlink_to(victim)
        assert probe.__enter__().state("x") is None
        assert "keep me" == victim.read_text()

    def test_runs_untouched_for_a_week_are_removed(self, tmp_path: Path) -> None:
        old = tmp_path / "0123.rates"
        old.write_bytes(b"")
        week = time.time() - sharedrate.STALE_S - 60
        os.utime(old, (week, week))
        recent = tmp_path / "4567.rates"
        recent.write_bytes(b"")
        shard(tmp_path, 0).close()
        assert not old.exists()
        assert recent.exists()

    def test_a_folder_that_cannot_be_written_falls_back(self, tmp_path: Path) -> None:
        """Nothing to share through: each shard keeps its own state, and the run goes on."""
        blocked = tmp_path / "file"
        blocked.write_text("not a folder")
        rates = SharedRates("r1", 0, 0.5, where=blocked / "rates").__enter__()
        assert rates.state("x") is None
        controller = AdaptiveLimiter(16, 10, share=0.5, states=rates.state).controller("x")
        assert 5.0 == controller.rate

    def test_closed_rates_fall_back(self, tmp_path: Path) -> None:
        """Not opened: no state to share. Closed under a controller: it goes on alone from the
        values it last saw."""
        assert SharedRates("r1", 0, 0.5, where=tmp_path).state("x") is None
        clock = FakeClock()
        rates = shard(tmp_path, 0)
        controller = limiter(rates, clock, 10).controller("x")
        assert [0.0, 0.2] == pytest.approx([controller.reserve(), controller.reserve()])
        rates.close()
        assert [0.4, 0.6] == pytest.approx([controller.reserve(), controller.reserve()])


PACE = """
import sys, time
from pathlib import Path
from connector.oci.retry import AdaptiveLimiter
from connector.oci.sharedrate import SharedRates

read: list[float] = []  # the clock's readings: the reserved slot is the first plus the wait


def clock() -> float:
    read.append(time.monotonic())
    return read[-1]


with SharedRates("race", int(sys.argv[1]), 0.5, where=Path(sys.argv[2])) as rates:
    print("joined", flush=True)
    sys.stdin.readline()  # both have joined
    limiter = AdaptiveLimiter(16, 40, clock=clock, share=0.5, states=rates.state)
    controller = limiter.controller("x")
    for _ in range(20):
        read.clear()
        wait = controller.reserve()
        print("slot", read[0] + wait, flush=True)
        time.sleep(wait)
"""


def test_two_processes_reserve_on_one_timeline(tmp_path: Path) -> None:
    """Two shard processes at 40 req/s (both joined: the whole rate) reserve 40 send slots 25 ms
    apart: one timeline. Each pacing alone at its half would reserve slots in pairs, two at
    the same moment every 50 ms."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PACE, str(index), str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in (0, 1)
    ]
    for process in processes:
        assert process.stdout is not None
        while process.stdout.readline().strip() != "joined":
            pass
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    outputs = [p.communicate(timeout=60)[0] for p in processes]
    slots = sorted(
        float(line.split()[1])
        for out in outputs
        for line in out.splitlines()
        if line[:5] == "slot "
    )
    assert 40 == len(slots)
    assert min(b - a for a, b in itertools.pairwise(slots)) > 0.025 * 0.99
