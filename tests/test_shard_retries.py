"""Shards that a scheduler can retry: each shard owns its staged files, and commit publishes
exactly what the shard manifests list, once.

Through the public API against the emulator; what was published is read back with DuckDB.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

import connector
from connector.emulator import EmulatorServer
from tests.helpers import settings_for

DATE = "2026-11-27"
PAGES = {"page_size": 100}
"""Listings of several pages."""


def staged(lake: Path, run_id: str) -> dict[str, float]:
    """The run's staged data and reject files, in every attempt's folder (attempt and path
    within the partition: modification time)."""
    found: dict[str, float] = {}
    for root in (lake / "_staging" / run_id).glob(f"*/images/snapshot_date={DATE}"):
        attempt = root.parent.parent.name
        for path in root.rglob("*"):
            if path.is_file() and not path.name.startswith("_"):
                found[f"{attempt}/{path.relative_to(root)}"] = path.stat().st_mtime_ns
    return found


def partition(lake: Path) -> Path:
    return lake / "images" / f"snapshot_date={DATE}"


def counted_rows(lake: Path) -> int:
    """Rows in every Parquet file of the published partition, as a reader counts them."""
    glob = f"{partition(lake)}/*/*.parquet"
    relation = duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')")
    assert relation is not None  # None only for statements that return no rows
    ((count,),) = relation.fetchall()
    return int(count)


def shard_of(plan: connector.Plan, index: int) -> connector.ShardSpec:
    return plan.shards[index]


@pytest.fixture
def server(make_emulator: Callable[..., EmulatorServer]) -> EmulatorServer:
    return make_emulator()


class TestFailedShard:
    def test_failure_removes_only_its_own_files(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """A shard that fails (the service rejects its requests) leaves its siblings' staged
        files and manifests alone; once it succeeds on retry, the run commits complete."""
        lake = tmp_path / "lake"
        settings = settings_for(server, lake, fetch=PAGES)
        plan = connector.plan(settings, 3)
        for index in (0, 2):
            assert "succeeded" == connector.run(settings, shard=shard_of(plan, index)).status
        siblings = staged(lake, plan.run_id)
        assert siblings

        server.emulator.behaviour.max_clock_skew_s = -1.0  # every signature is now refused
        with pytest.raises(connector.ConnectorError):
            connector.run(settings, shard=shard_of(plan, 1))
        assert siblings == staged(lake, plan.run_id)

        server.emulator.behaviour.max_clock_skew_s = 300.0
        assert "succeeded" == connector.run(settings, shard=shard_of(plan, 1)).status
        outcome = connector.commit(settings, plan.run_id)
        assert "succeeded" == outcome.status
        assert outcome.manifest is not None
        assert outcome.manifest.rows == counted_rows(lake)


class TestRetriedShard:
    def test_retry_with_fewer_workers_replaces_only_its_own_files(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """A shard staged by two worker processes, then again by none (another machine):
        the retry's files replace the first try's, the sibling's stay untouched, and what is
        published holds as many rows as the manifest says."""
        lake = tmp_path / "lake"
        plan = connector.plan(settings_for(server, lake, fetch=PAGES), 2)
        connector.run(
            settings_for(server, lake, fetch={**PAGES, "workers": 2}), shard=shard_of(plan, 0)
        )
        connector.run(
            settings_for(server, lake, fetch={**PAGES, "workers": 2}), shard=shard_of(plan, 1)
        )
        first = staged(lake, plan.run_id)
        sibling = {p: t for p, t in first.items() if "part-000-" in p or "rejects-000-" in p}

        connector.run(
            settings_for(server, lake, fetch={**PAGES, "workers": 0}), shard=shard_of(plan, 1)
        )
        second = staged(lake, plan.run_id)
        assert sibling == {p: t for p, t in second.items() if p in sibling}
        retried = {p for p in second if p not in sibling}
        assert retried
        assert all(second[p] > first.get(p, 0) for p in retried)
        assert len([p for p in first if p not in sibling]) > len(retried)

        outcome = connector.commit(settings_for(server, lake, fetch=PAGES), plan.run_id)
        assert outcome.manifest is not None
        assert outcome.manifest.rows == counted_rows(lake)
        single = connector.run(settings_for(server, tmp_path / "single", fetch=PAGES))
        assert single.manifest is not None
        assert single.manifest.rows == outcome.manifest.rows


class TestCommit:
    def test_publishes_exactly_the_listed_files(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """A file in the staging that no shard manifest lists (a lost try's leftover) is not
        published."""
        lake = tmp_path / "lake"
        settings = settings_for(server, lake, fetch=PAGES)
        plan = connector.plan(settings, 2)
        for spec in plan.shards:
            connector.run(settings, shard=spec)
        attempts = lake / "_staging" / plan.run_id
        listed = next(attempts.glob(f"*/images/snapshot_date={DATE}/region=*/part-001-*.parquet"))
        shutil.copy(listed, listed.with_name("part-001-00099.parquet"))

        outcome = connector.commit(settings, plan.run_id)

        assert outcome.manifest is not None
        names = {p.name for p in partition(lake).rglob("part-*")}
        assert "part-001-00099.parquet" not in names
        assert {Path(f.path).name for f in outcome.manifest.files} == names
        assert outcome.manifest.rows == counted_rows(lake)

    def test_second_commit_succeeds_and_changes_nothing(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """Committing a published run again (a retried commit task) succeeds, reports the same
        manifest, and leaves every published file as it was."""
        lake = tmp_path / "lake"
        settings = settings_for(server, lake, fetch=PAGES)
        plan = connector.plan(settings, 2)
        for spec in plan.shards:
            connector.run(settings, shard=spec)
        first = connector.commit(settings, plan.run_id)
        before = {str(p): p.stat().st_mtime_ns for p in partition(lake).rglob("*")}

        again = connector.commit(settings, plan.run_id)

        assert (0, True) == (again.exit_code, again.published)
        assert first.manifest is not None
        assert again.manifest is not None
        assert first.manifest.rows == again.manifest.rows
        assert before == {str(p): p.stat().st_mtime_ns for p in partition(lake).rglob("*")}

    def test_commit_of_another_run_fails_without_publishing(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """A run that was never staged is not confused with the published one."""
        lake = tmp_path / "lake"
        settings = settings_for(server, lake, fetch=PAGES)
        connector.run(settings)
        with pytest.raises(connector.PublishError, match="nothing staged"):
            connector.commit(settings, connector.new_run_id())


class TestForeignShards:
    def test_shard_spec_of_another_run_is_refused(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """Running a shard spec under another run id is a ConfigError naming both ids."""
        settings = settings_for(server, tmp_path / "lake", fetch=PAGES)
        plan = connector.plan(settings, 2)
        other = connector.new_run_id()
        with pytest.raises(connector.ConfigError) as info:
            connector.run(settings, shard=plan.shards[0], run_id=other)
        assert other in str(info.value)
        assert plan.run_id in str(info.value)

    def test_commit_refuses_a_shard_manifest_of_another_run(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """A shard manifest of run A found in run B's staging stops B's commit, naming A;
        nothing is published."""
        lake = tmp_path / "lake"
        settings = settings_for(server, lake, fetch=PAGES)
        plan_a = connector.plan(settings, 2)
        plan_b = connector.plan(settings, 2)
        connector.run(settings, shard=plan_a.shards[1])
        connector.run(settings, shard=plan_b.shards[0])
        shards_a = lake / "_staging" / plan_a.run_id / "shards"
        shards_b = lake / "_staging" / plan_b.run_id / "shards"
        for manifest in shards_a.glob("*.json"):
            shutil.copy(manifest, shards_b / manifest.name)

        outcome = connector.commit(settings, plan_b.run_id)

        assert (1, False) == (outcome.exit_code, outcome.published)
        assert plan_a.run_id in outcome.message
        assert not partition(lake).exists()
