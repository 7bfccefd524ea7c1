"""The public Python API (``import connector``), as a library user or Airflow calls it."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pytest

import connector
from connector import cli
from connector.emulator import EmulatorServer
from connector.oci import auth
from tests.helpers import settings_for

DATE = "2026-11-27"


def key_credentials(server: EmulatorServer) -> connector.Credentials:
    """API-key credentials built from values, as a secrets manager would hand them over."""
    assert server.config_file is not None
    profile = auth.load_profile(server.config_file, "DEFAULT")
    return connector.Credentials.from_api_key(
        user=str(profile.user),
        fingerprint=str(profile.fingerprint),
        tenancy=str(profile.tenancy),
        region=str(profile.region),
        private_key=Path(str(profile.key_file)).read_text(),
    )


def published_rows(tmp_path: Path) -> int:
    partition = tmp_path / "lake" / "images" / f"snapshot_date={DATE}"
    return ds.dataset(partition, format="parquet", partitioning="hive").count_rows()


class TestSurface:
    def test_every_public_name_resolves(self) -> None:
        """Each name in ``__all__`` is an attribute of the package."""
        for name in connector.__all__:
            assert getattr(connector, name) is not None, name

    def test_the_package_is_typed(self) -> None:
        """``py.typed`` ships with the package, so type checkers read its annotations."""
        assert (Path(connector.__file__).parent / "py.typed").is_file()

    def test_import_loads_nothing_heavy(self) -> None:
        """``import connector`` imports neither pyarrow nor aiohttp (worker processes and
        ``--help`` rely on it)."""
        code = "import sys, connector; print(sorted({'pyarrow', 'aiohttp'} & set(sys.modules)))"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert "[]" == out.strip()

    def test_unknown_attribute(self) -> None:
        """A name the package does not have is an AttributeError, as for any module."""
        with pytest.raises(AttributeError):
            _ = connector.no_such_name


class TestLoadConfig:
    def test_values_then_overrides_over_the_file(self, tmp_path: Path) -> None:
        """The file is read first, ``values`` go over it, and ``overrides`` over both."""
        path = tmp_path / "c.toml"
        path.write_text("[fetch]\nconcurrency = 4\npage_size = 200\nmax_attempts = 3\n")
        settings = connector.load_config(
            path,
            ["fetch.page_size=300"],
            values={"fetch": {"page_size": 100, "max_attempts": 5}},
        )
        assert (4, 300, 5) == (
            settings.fetch.concurrency,
            settings.fetch.page_size,
            settings.fetch.max_attempts,
        )

    def test_values_are_validated(self) -> None:
        """A bad value given in ``values`` is a ConfigError naming the key."""
        with pytest.raises(connector.ConfigError) as info:
            connector.load_config(values={"fetch": {"page_size": 5000}})
        assert "fetch.page_size" == info.value.key

    def test_replace_validates(self) -> None:
        """``replace`` sets keys as if they had been configured, checks included."""
        settings = connector.load_config()
        dated = settings.replace(**{"output.snapshot_date": "2026-11-27"})
        assert "2026-11-27" == dated.output.snapshot_date
        assert "" == settings.output.snapshot_date
        with pytest.raises(connector.ConfigError) as info:
            settings.replace(**{"output.snapshot_date": "27/11/2026"})
        assert "output.snapshot_date" == info.value.key
        with pytest.raises(connector.ConfigError):
            settings.replace(**{"fetch.pagesize": 10})

    def test_run_checks_a_replaced_copy_in_full(
        self, emulator: EmulatorServer, tmp_path: Path
    ) -> None:
        """What ``replace`` cannot check (here: a region no realm table knows, with no endpoint
        to go to) is checked when the copy is run: a ConfigError naming the key, before any
        request."""
        before = emulator.stats()["requests"]
        settings = settings_for(emulator, tmp_path / "lake").replace(
            **{"oci.endpoint": "", "oci.regions": ["us-ashburm-1"]}
        )
        with pytest.raises(connector.ConfigError) as info:
            connector.run(settings, credentials=key_credentials(emulator))
        assert "oci.regions[0]" == info.value.key
        assert before == emulator.stats()["requests"]

    def test_short_codes_of_a_replaced_copy_become_region_names(
        self, emulator: EmulatorServer, tmp_path: Path
    ) -> None:
        """A region set by its short code through ``replace`` is exported under its name."""
        settings = settings_for(emulator, tmp_path / "lake").replace(**{"oci.regions": ["IAD"]})
        export = connector.api.export(settings, credentials=key_credentials(emulator))
        assert ("us-ashburn-1",) == export.context.settings.oci.regions


class TestCredentials:
    def test_api_key_from_pem_text(self, emulator: EmulatorServer) -> None:
        """PEM text, no file: the credentials carry the region and tenancy they were given."""
        credentials = key_credentials(emulator)
        assert emulator.world.home_region == credentials.home_region
        assert emulator.world.tenancy_id == credentials.tenancy

    def test_bad_pem_names_no_secret(self) -> None:
        """A key that is not PEM is an AuthError that does not repeat the text."""
        with pytest.raises(connector.AuthError) as info:
            connector.Credentials.from_api_key(
                user="ocid1.user.oc1..u",
                fingerprint="aa:bb",
                tenancy="ocid1.tenancy.oc1..t",
                region="us-ashburn-1",
                private_key="not-a-key-SECRET",
            )
        assert "SECRET" not in str(info.value)

    def test_credentials_without_a_region(self, emulator: EmulatorServer, tmp_path: Path) -> None:
        """Credentials that name no region, with no oci.regions configured: a ConfigError
        naming oci.regions, before any request."""
        before = emulator.stats()["requests"]
        settings = settings_for(emulator, tmp_path / "lake").replace(**{"oci.regions": []})
        bare = connector.Credentials(key_credentials(emulator).signer)
        with pytest.raises(connector.ConfigError) as info:
            connector.run(settings, credentials=bare)
        assert "oci.regions" == info.value.key
        assert before == emulator.stats()["requests"]

    def test_check_access_signs_one_request(self, emulator: EmulatorServer, tmp_path: Path) -> None:
        """check_access: one signed request, the tenancy's subscribed regions returned; a
        credential with no tenancy is a ConfigError before any request."""
        settings = settings_for(emulator, tmp_path / "lake")
        before = emulator.stats()["requests"]
        regions = connector.check_access(settings, key_credentials(emulator))
        assert sorted(emulator.world.regions) == regions
        assert 1 == emulator.stats()["requests"] - before
        bare = connector.Credentials(key_credentials(emulator).signer, "us-ashburn-1")
        with pytest.raises(connector.ConfigError):
            connector.check_access(settings, bare)
        assert 1 == emulator.stats()["requests"] - before


class TestRun:
    def test_run_publishes(self, emulator: EmulatorServer, tmp_path: Path) -> None:
        """``run`` without a shard discovers, fetches, writes and publishes."""
        outcome = connector.run(settings_for(emulator, tmp_path / "lake"))
        assert ("succeeded", 0, True) == (outcome.status, outcome.exit_code, outcome.published)
        assert outcome.manifest is not None
        assert outcome.manifest.rows == published_rows(tmp_path)
        written = orjson.loads(
            (tmp_path / "lake" / "images" / f"snapshot_date={DATE}" / "_manifest.json").read_bytes()
        )
        assert outcome.manifest.as_dict() == written
        assert outcome.manifest == connector.Manifest.from_dict(written)

    def test_plan_shards_then_commit(self, emulator: EmulatorServer, tmp_path: Path) -> None:
        """Plan three shards, run each from its JSON form (as XCom carries it), then commit:
        every listing is staged once and the commit publishes them all."""
        settings = settings_for(emulator, tmp_path / "lake")
        credentials = key_credentials(emulator)
        plan = connector.plan(settings, 3, credentials=credentials)
        assert DATE == plan.snapshot_date
        assert 3 == len(plan.shards)
        staged = 0
        for spec in plan.shards:
            carried = connector.ShardSpec.from_dict(orjson.loads(orjson.dumps(spec.as_dict())))
            assert spec == carried
            outcome = connector.run(settings, shard=carried, credentials=credentials)
            assert (0, False) == (outcome.exit_code, outcome.published)
            assert outcome.manifest is not None
            assert spec.listings == len(outcome.manifest.compartments)
            staged += outcome.manifest.rows
        assert not (tmp_path / "lake" / "images").exists()
        committed = connector.commit(settings, plan.run_id)
        assert (0, True) == (committed.exit_code, committed.published)
        assert committed.manifest is not None
        assert 3 == committed.manifest.shards
        assert sum(s.listings for s in plan.shards) == len(committed.manifest.compartments)
        assert staged == committed.manifest.rows == published_rows(tmp_path)

    def test_plan_builds_no_export(
        self, emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`oci-images plan` only discovers: it prepares no export (no output filesystem, no
        workers), so an output it could not write to does not matter yet."""

        def no_export(*args: object, **kwargs: object) -> None:
            raise AssertionError("plan built an Export")

        monkeypatch.setattr("connector.pipeline.Export", no_export)
        blocker = tmp_path / "file"
        blocker.write_text("")
        config = tmp_path / "plan.toml"
        config.write_text(
            f'[oci]\nconfig_file = "{emulator.config_file}"\n'
            f'endpoint = "{emulator.endpoint_template}"\nregions = ["subscribed"]\n'
            f'[output]\nuri = "{blocker / "lake"}"\n'
        )
        assert 0 == cli.main(["plan", "--config", str(config), "--shards", "2", "--run-id", "r"])

    def test_a_shard_needs_a_run_id(self, emulator: EmulatorServer, tmp_path: Path) -> None:
        """A shard given as (index, count) without a run id is a ConfigError: shards and the
        commit must agree on one."""
        with pytest.raises(connector.ConfigError):
            connector.run(settings_for(emulator, tmp_path / "lake"), shard=(0, 2))

    def test_commit_without_shards(self, tmp_path: Path) -> None:
        """Committing a run that staged nothing raises, as ``diff`` of a date never published
        does: the run named is not there."""
        settings = connector.load_config(values={"output": {"uri": str(tmp_path)}})
        with pytest.raises(connector.PublishError, match="nothing staged for run no-such-run"):
            connector.commit(settings, "no-such-run")
        with pytest.raises(connector.PublishError, match="no published snapshot"):
            list(connector.diff(settings, "2026-01-01", "2026-01-02"))


class TestLogs:
    def test_every_line_of_a_run_names_it(self, emulator: EmulatorServer, tmp_path: Path) -> None:
        """Each log line of a run, from whichever task wrote it, carries run_id and shard."""
        from connector import logs

        stream = io.StringIO()
        logs.configure("debug", "json", stream)
        outcome = connector.run(settings_for(emulator, tmp_path / "lake"), run_id="r-logged")
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        assert 0 == outcome.exit_code
        assert {"run.start", "listing.done", "run.published"} <= {e["event"] for e in lines}
        assert {("r-logged", "0/1")} == {(e.get("run_id"), e.get("shard")) for e in lines}


class TestShardsShareTheBudget:
    def test_plan_gives_each_shard_its_share(
        self, emulator: EmulatorServer, tmp_path: Path
    ) -> None:
        """Each of four shards gets a quarter of the request budget, and a shard run paces at
        its quarter of fetch.max_requests_per_second."""
        settings = settings_for(emulator, tmp_path / "lake").replace(
            **{"fetch.max_requests_per_second": 20}
        )
        credentials = key_credentials(emulator)
        plan = connector.plan(settings, 4, credentials=credentials)
        assert [0.25] * 4 == [s.rate_share for s in plan.shards]
        assert all(s.as_dict()["rate_share"] == 0.25 for s in plan.shards)
        export = connector.api.export(settings, shard=plan.shards[1], credentials=credentials)
        assert 5.0 == export.client.limiter.controller("any region").rate
        alone = connector.api.export(settings, credentials=credentials)
        assert 20.0 == alone.client.limiter.controller("any region").rate

    def test_shards_on_one_machine_join_one_rate_file(
        self, emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two shards of a plan running side by side join one rate file (the run's), with their
        shares summed to the whole budget, and keep one state per region in it (that states in
        one file pace as one: tests/test_sharedrate.py)."""
        import tempfile

        import anyio

        from connector.oci import sharedrate

        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        settings = settings_for(emulator, tmp_path / "lake")
        credentials = key_credentials(emulator)
        plan = connector.plan(settings, 2, credentials=credentials)
        exports = [
            connector.api.export(settings, shard=spec, credentials=credentials)
            for spec in plan.shards
        ]

        async def side_by_side() -> None:
            async with anyio.create_task_group() as group:
                for export in exports:
                    group.start_soon(export.run)

        anyio.run(side_by_side)
        (rates,) = (tmp_path / "tmp").glob("oci-images-rates-*/*.rates")
        data = rates.read_bytes()
        _, _, _, share, joined, _ = sharedrate._HEADER.unpack_from(data)
        assert (1.0, 2) == (share, joined)
        regions = {region for spec in plan.shards for region in spec.regions}
        digests = {
            data[offset : offset + 16]
            for offset in range(sharedrate._HEADER.size, len(data), sharedrate._SLOT.size)
        } - {bytes(16)}
        assert len(regions) == len(digests)
        assert 0 == connector.commit(settings, plan.run_id).exit_code

    def test_a_spec_from_before_the_share_reads_back_with_one_nth(self) -> None:
        """ShardSpec JSON without rate_share and snapshot_date (as older plans wrote it) still
        reads: 1/count, and the settings' date."""
        old = {"index": 1, "count": 4, "run_id": "r1", "listings": 7, "regions": ["r"]}
        spec = connector.ShardSpec.from_dict(old)
        assert 0.25 == spec.rate_share
        assert old | {"rate_share": 0.25, "snapshot_date": ""} == spec.as_dict()

    def test_a_share_outside_the_budget_is_refused(self) -> None:
        with pytest.raises(connector.ConfigError, match="rate_share"):
            connector.ShardSpec(0, 2, "r1", 1, ("r",), 1.5)

    def test_the_cli_plan_prints_the_share(self, emulator: EmulatorServer, tmp_path: Path) -> None:
        """`oci-images plan --shards 2` prints each spec with rate_share 0.5 beside its args."""
        config = tmp_path / "c.toml"
        config.write_text(
            "[oci]\n"
            f'config_file = "{emulator.config_file}"\n'
            f'endpoint = "{emulator.endpoint_template}"\n'
            "[output]\n"
            f'uri = "{tmp_path / "lake"}"\n'
        )
        result = subprocess.run(
            [sys.executable, "-m", "connector", "plan", "--config", str(config), "--shards", "2"],
            capture_output=True,
            text=True,
            check=True,
        )
        specs = orjson.loads(result.stdout.strip().splitlines()[-1])
        assert [0.5, 0.5] == [s["rate_share"] for s in specs]
        assert connector.ShardSpec.from_dict(specs[0]).rate_share == 0.5


class TestTimings:
    def test_the_manifest_records_each_phase(
        self, emulator: EmulatorServer, tmp_path: Path
    ) -> None:
        """The published manifest says how long discovery, fetching, conversion and the commit
        took; each phase happened, so each took some time."""
        outcome = connector.run(settings_for(emulator, tmp_path / "lake"))
        written = orjson.loads(
            (tmp_path / "lake" / "images" / f"snapshot_date={DATE}" / "_manifest.json").read_bytes()
        )
        timings = written["timings"]
        assert {"discovery_s", "fetch_s", "convert_s", "commit_s"} == set(timings)
        assert all(value > 0 for value in timings.values())
        assert timings["fetch_s"] < outcome.elapsed_s
        assert outcome.manifest is not None
        assert timings == outcome.manifest.timings.as_dict()

    def test_shards_merge_their_timings(self, emulator: EmulatorServer, tmp_path: Path) -> None:
        """A merged manifest has the longest shard's wall times, the sum of the conversion
        times, and the commit's own time."""
        settings = settings_for(emulator, tmp_path / "lake")
        credentials = key_credentials(emulator)
        plan = connector.plan(settings, 2, credentials=credentials)
        shards = [connector.run(settings, shard=s, credentials=credentials) for s in plan.shards]
        committed = connector.commit(settings, plan.run_id)
        assert committed.manifest is not None
        merged = committed.manifest.timings
        staged = [s.manifest.timings for s in shards if s.manifest is not None]
        assert merged.fetch_s == pytest.approx(max(t.fetch_s for t in staged), abs=1e-6)
        assert merged.discovery_s == pytest.approx(max(t.discovery_s for t in staged), abs=1e-6)
        assert merged.convert_s == pytest.approx(sum(t.convert_s for t in staged), abs=1e-5)
        assert merged.commit_s > 0
        assert all(t.commit_s == 0 for t in staged)
