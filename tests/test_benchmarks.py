"""The benchmark scenarios keep working: S5 at a tiny size, untimed (benchmarks are not tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import scenarios

TINY = scenarios.TenancyShape(
    compartments=6, platform_images=8, latency_ms=2.0, rate=20.0, burst=1.0, seed=3
)


@pytest.mark.parametrize("shards", [1, 2])
def test_s5_runs_at_a_tiny_size(tmp_path: Path, shards: int) -> None:
    """S5's run (or its shards and the commit) succeeds against a rate-limited emulator with
    four regions, and its figures add up."""
    with scenarios.EmulatorProcess(tmp_path, *TINY.emulator_args()) as emulator:
        figures = scenarios.tenancy_run(emulator, tmp_path, TINY, shards=shards)
        published = list((tmp_path / "lake" / "images").glob("snapshot_date=*/_SUCCESS"))
    assert len(TINY.regions) * TINY.compartments == figures["listings"]
    assert figures["requests"] >= figures["pages"] >= figures["listings"]
    assert 0 < figures["bound_s"] < figures["wall_s"]
    assert figures["cpu_s"] > 0
    assert figures["peak_pss_mb"] > 0
    assert 1 == len(published)
    rows = scenarios.s5_rows("tiny", [figures], shards)
    assert {"S5"} == {r["id"] for r in rows}
    assert all(r["median"] == r["median"] for r in rows)  # no NaN


SMALL_S6 = scenarios.TenancyShape(
    compartments=300,
    platform_images=8,
    latency_ms=1.0,
    rate=1000.0,
    burst=1000.0,
    seed=5,
    empty_share=0.9,
    custom_scale=0.1,
)


def test_s6_search_needs_at_most_15_percent_of_list_requests(tmp_path: Path) -> None:
    """S6's shape, small: the same rows from at most 15 % of list mode's requests (Compute,
    Identity and Search together, as the emulator counts them; unthrottled, so deterministic)."""
    with scenarios.EmulatorProcess(tmp_path, *SMALL_S6.emulator_args()) as emulator:
        pair = scenarios.search_pair(emulator, tmp_path, SMALL_S6)
    listed, searched = pair["list"], pair["search"]
    assert listed["rows"] == searched["rows"] > 0
    assert len(SMALL_S6.regions) * SMALL_S6.compartments == listed["listings"]
    assert 0 == listed["searches"]
    assert len(SMALL_S6.regions) <= searched["searches"]
    assert searched["requests"] <= 0.15 * listed["requests"], (searched, listed)
    rows = scenarios.s6_rows([pair])
    assert {"S6"} == {r["id"] for r in rows}
    assert all(r["median"] == r["median"] for r in rows)  # no NaN
