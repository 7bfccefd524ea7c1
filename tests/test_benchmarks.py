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
