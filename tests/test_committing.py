"""The commit's decisions, hit directly: from shard manifests and the output settings alone
(``committing.decide``), and a retried commit of a published run (``commit_run``) on a local
lake built by hand, without the emulator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from connector import config
from connector.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
from connector.lake import committing, durable, layout, storage
from connector.lake.manifest import ListingRecord, Manifest, RequestCounts, merge
from connector.pages import ListingError
from connector.prepare import new_run_id
from connector.sinks import FileInfo

DATE = "2026-11-27"
RUN = new_run_id()  # of now: a staged run a week old would expire at the commit's start
FAILED = ListingError(404, "NotAuthorizedOrNotFound", "no", "req-1")


def shard(
    index: int, count: int, *, run_id: str = RUN, day: str = DATE, ok: int = 9, failed: int = 0
) -> Manifest:
    """A shard's manifest: ``ok`` listings that completed and ``failed`` that did not."""
    listings = tuple(
        ListingRecord("us-ashburn-1", f"c{index}-{n}", 1, 10, 0, 0, FAILED if n < failed else None)
        for n in range(ok + failed)
    )
    return Manifest(
        run_id=run_id,
        snapshot_date=day,
        status="partial" if failed else "succeeded",
        started_at=f"2026-11-27T00:00:0{index}.000Z",
        finished_at="2026-11-27T00:01:00.000Z",
        files=(FileInfo(f"region=us-ashburn-1/part-{index:03d}-00000.parquet", 10 * ok, 100),),
        reject_files=(),
        compartments=listings,
        requests=RequestCounts(ok + failed),
        format="parquet",
        compression="zstd",
        platform_images="once",
        filters={},
        schema_fingerprint="sha256:x",
        connector_version="test",
        shard=(index, count),
        attempt=f"attempt-{index}",
    )


def output(allow_partial: bool = False, floor: float = 0.9) -> config.OutputSettings:
    overrides = [f"output.allow_partial={str(allow_partial).lower()}"]
    overrides.append(f"output.min_complete_ratio={floor}")
    return config.load(None, overrides).output


class TestDecide:
    def test_every_shard_complete_is_published(self) -> None:
        """Two shards of one run and date, every listing complete: publish, rows merged."""
        decision = committing.decide(RUN, [shard(0, 2), shard(1, 2)], output())
        assert decision.publish
        assert decision.manifest is not None
        assert (180, 2) == (decision.manifest.rows, decision.manifest.shards)
        assert EXIT_OK == decision.exit_code

    def test_a_failed_listing_without_allow_partial_publishes_nothing(self) -> None:
        """A partial run is refused unless output.allow_partial; the exit is 3."""
        decision = committing.decide(RUN, [shard(0, 1, ok=9, failed=1)], output())
        assert not decision.publish
        assert EXIT_PARTIAL == decision.exit_code
        assert "output.allow_partial = false" in decision.refusal

    def test_allow_partial_publishes_above_the_floor(self) -> None:
        """9 of 10 listings complete, floor 0.9, allow_partial: published as partial."""
        decision = committing.decide(RUN, [shard(0, 1, ok=9, failed=1)], output(True, 0.9))
        assert decision.publish
        assert decision.manifest is not None
        assert "partial" == decision.manifest.status

    @pytest.mark.parametrize("allow_partial", [False, True], ids=["refused", "allowed"])
    def test_below_the_floor_fails_either_way(self, allow_partial: bool) -> None:
        """Below output.min_complete_ratio nothing is published, whatever allow_partial says:
        a run in which most listings failed never replaces a good partition."""
        decision = committing.decide(RUN, [shard(0, 1, ok=1, failed=9)], output(allow_partial))
        assert (False, EXIT_FAILED) == (decision.publish, decision.exit_code)
        assert "below output.min_complete_ratio = 0.9" in decision.refusal

    def test_a_missing_shard(self) -> None:
        """Shard 1 of 3 never finished: nothing is published, and the refusal names it."""
        decision = committing.decide(RUN, [shard(0, 3), shard(2, 3)], output())
        assert (False, EXIT_FAILED) == (decision.publish, decision.exit_code)
        assert "missing shards [1] of 3" in decision.refusal

    def test_a_shard_of_another_run(self) -> None:
        """A shard manifest of another run in this run's staging is refused by name."""
        shards = [shard(0, 2), shard(1, 2, run_id="20261127T000000Z-bbbbbb")]
        decision = committing.decide(RUN, shards, output())
        assert not decision.publish
        assert "20261127T000000Z-bbbbbb" in decision.refusal

    def test_shards_of_two_dates(self) -> None:
        """Shards that disagree on the snapshot date are never merged into one partition."""
        decision = committing.decide(RUN, [shard(0, 2), shard(1, 2, day="2026-11-28")], output())
        assert not decision.publish
        assert "disagree on snapshot_date" in decision.refusal

    def test_nothing_staged(self) -> None:
        """No shard at all: a failure naming the run."""
        decision = committing.decide(RUN, [], output())
        assert (False, None) == (decision.publish, decision.manifest)
        assert RUN in decision.refusal


class TestAlreadyPublished:
    def lake(self, tmp_path: Path) -> tuple[config.Settings, storage.Store]:
        settings = config.load(None, [f'output.uri="{tmp_path}"', f'output.snapshot_date="{DATE}"'])
        return settings, storage.resolve(str(tmp_path))

    def publish_by_hand(self, store: storage.Store, manifest: Manifest) -> None:
        """The partition as a commit of ``manifest``'s run left it."""
        partition = layout.partition_of(store.base, "images", DATE)
        durable.write_json(store.fs, f"{partition}/{layout.MANIFEST}", manifest.as_dict())
        durable.write_durably(store.fs, f"{partition}/{layout.SUCCESS}", b"")

    def test_a_retry_after_a_kill_in_the_clean_up_succeeds_unchanged(self, tmp_path: Path) -> None:
        """Published, then killed while removing its staging (a shard manifest left whose
        files are gone), and its record rewritten as failed by an older retry: the commit
        succeeds, says it was published already, and the record says published again."""
        settings, store = self.lake(tmp_path)
        staged = merge([shard(0, 1)])
        published = replace(staged, started_at=shard(0, 1).started_at)
        self.publish_by_hand(store, published)
        left = layout.Layout(store.base, RUN, DATE)
        durable.write_json(store.fs, left.shard_manifest(0, 1), shard(0, 1).as_dict())
        record = layout.run_record(store.base, RUN)
        durable.write_json(
            store.fs,
            record,
            {"run_id": RUN, "snapshot_date": DATE, "published": False, "status": "failed"},
        )
        for _ in range(2):
            outcome = committing.commit_run(settings, RUN, store=store)
            assert (EXIT_OK, True, "already published") == (
                outcome.exit_code,
                outcome.published,
                outcome.message,
            )
            assert True is orjson.loads(Path(record).read_bytes())["published"]
        assert not Path(left.run_staging).exists()

    def test_new_shards_under_a_published_run_id_are_committed(self, tmp_path: Path) -> None:
        """A run id published before and staged anew (a cleared Airflow run) is no retry:
        its new shards are what the commit looks at (here: missing their files, refused)."""
        settings, store = self.lake(tmp_path)
        self.publish_by_hand(store, merge([shard(0, 1)]))
        again = replace(shard(0, 1), started_at="2026-11-27T05:00:00.000Z")
        left = layout.Layout(store.base, RUN, DATE)
        durable.write_json(store.fs, left.shard_manifest(0, 1), again.as_dict())
        outcome = committing.commit_run(settings, RUN, store=store)
        assert (EXIT_FAILED, False) == (outcome.exit_code, outcome.published)
        assert "is missing" in outcome.message
