"""DAG runs under real Airflow 3 (``dag.test()``) against the emulator, output read back.

Each run goes through Airflow's own scheduling loop: templates rendered, XComs passed, mapped
shard tasks expanded, failed tries retried, asset events recorded in the metadata database.
"""

from __future__ import annotations

import configparser
import json
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

import connector
from connector.airflow import images_asset
from connector.emulator import EmulatorServer
from tests.airflow import faults
from tests.airflow.conftest import (
    DAGS,
    FETCH,
    asset_events,
    load_dag,
    task_states,
    tries,
)
from tests.airflow.support import form_fields
from tests.helpers import DATE, write_config

RUN_SPECIFIC = ("_run_id", "_fetched_at")


@pytest.fixture
def server(make_emulator: Callable[..., EmulatorServer]) -> Iterator[EmulatorServer]:
    """An emulator the DAGs export from, with no fault until a test injects one."""
    emulator = make_emulator()
    faults.reset(emulator)
    yield emulator
    faults.reset()


def published(uri: str, date: str) -> pa.Table:
    """The published partition's rows, without the columns that differ from run to run,
    in a stable order."""
    partition = Path(uri) / "images" / f"snapshot_date={date}"
    assert (partition / "_SUCCESS").is_file() or (partition / "_PARTIAL").is_file()
    table = ds.dataset(partition, format="parquet", partitioning="hive").to_table()
    table = table.drop_columns([c for c in RUN_SPECIFIC if c in table.column_names])
    # Under platform_images = "once", a region's platform images come with whichever listing
    # completed first, in a single run as in a sharded one: their source compartment is not
    # part of what must match.
    source = pc.if_else(table["_is_platform"], None, table["_source_compartment_id"])
    index = table.schema.get_field_index("_source_compartment_id")
    table = table.set_column(index, table.schema.field(index), source)
    return table.sort_by([("region", "ascending"), ("id", "ascending")])


def assert_same_rows(expected: pa.Table, actual: pa.Table) -> None:
    """The same rows, column by column (a mismatch names its column)."""
    assert expected.schema == actual.schema
    assert expected.num_rows == actual.num_rows
    for name in expected.column_names:
        assert expected[name].to_pylist() == actual[name].to_pylist(), name


def manifest(uri: str, date: str) -> dict[str, Any]:
    path = Path(uri) / "images" / f"snapshot_date={date}" / "_manifest.json"
    return json.loads(path.read_text())


def single_run(config: Path, tmp_path: Path, date: str) -> pa.Table:
    """What one unsharded run of the same configuration publishes."""
    uri = str(tmp_path / "single")
    settings = connector.load_config(
        config, [f'output.uri="{uri}"', f'output.snapshot_date="{date}"']
    )
    outcome = connector.run(settings)
    assert "succeeded" == outcome.status
    return published(uri, date)


def no_discovery(server: EmulatorServer) -> dict[str, dict[str, Any]]:
    """Regions and compartments named in the configuration: the run's only requests are
    ListImages, so a service fault fails listings (a partial shard), never discovery."""
    compartments = [c.id for c in server.world.listable_compartments()]
    return {"oci": {"regions": list(server.world.regions)}, "scope": {"compartments": compartments}}


class TestExampleDag:
    """configs/airflow_dag.py, configured through its environment variables."""

    def test_scheduled_run_publishes_what_a_single_run_does(
        self, server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run for a logical date plans, exports three shards, commits one partition for
        that date with the rows of an unsharded run, and emits the dataset's asset event."""
        config = write_config(
            tmp_path, server, snapshot_date=None, fetch={**FETCH, "workers": "auto"}
        )
        monkeypatch.setenv("OCI_IMAGES_CONFIG", str(config))
        monkeypatch.setenv("OCI_IMAGES_SHARDS", "3")
        dag = load_dag("airflow_dag.py", "oci_images_export")

        run = dag.test(logical_date=datetime(2026, 11, 27, tzinfo=UTC))

        assert "success" == str(run.state)
        states = task_states(run)
        assert ["success"] * 3 == states["oci_images.export_shard"]
        lake = str(tmp_path / "lake")
        assert_same_rows(single_run(config, tmp_path, DATE), published(lake, DATE))
        written = manifest(lake, DATE)
        assert 3 == written["shards"]
        (event,) = asset_events(images_asset(lake).uri)
        assert written["run_id"] == event["extra"]["run_id"]
        assert DATE == event["extra"]["snapshot_date"]
        assert written["rows"] == event["extra"]["rows"]
        assert "succeeded" == event["extra"]["status"]
        assert event["extra"]["uri"].endswith(f"/lake/images/snapshot_date={DATE}")
        assert event["partition_key"] is None

    def test_manual_run_without_logical_date_uses_the_run_date(
        self, server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A manual run has no logical date; the snapshot date is the day it was triggered."""
        monkeypatch.setenv(
            "OCI_IMAGES_CONFIG",
            str(write_config(tmp_path, server, snapshot_date=None, fetch=FETCH)),
        )
        monkeypatch.delenv("OCI_IMAGES_SHARDS", raising=False)
        dag = load_dag("airflow_dag.py", "oci_images_export")
        run_after = datetime(2026, 11, 28, 6, 30, tzinfo=UTC)

        run = dag.test(logical_date=None, run_after=run_after)

        assert "success" == str(run.state)
        assert 4 == len(task_states(run)["oci_images.export_shard"])
        assert "2026-11-28" == manifest(str(tmp_path / "lake"), "2026-11-28")["snapshot_date"]

    def test_unreadable_configuration_is_an_import_error_naming_it(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Where the configuration cannot be read, the DAG fails to import with a message that
        names the file and says how to do without it (the Asset given explicitly)."""
        from airflow.dag_processing.dagbag import DagBag

        missing = tmp_path / "missing.toml"
        monkeypatch.setenv("OCI_IMAGES_CONFIG", str(missing))
        bag = DagBag(dag_folder=str(DAGS / "airflow_dag.py"))
        (error,) = bag.import_errors.values()
        assert str(missing) in error
        assert "asset=" in error

    def test_dag_uses_airflow_3_interfaces_only(self) -> None:
        """The example imports airflow.sdk, none of the interfaces Airflow 3 deprecates."""
        source = (Path(__file__).parents[2] / "configs" / "airflow_dag.py").read_text()
        assert "from airflow.sdk import" in source
        for deprecated in ("airflow.decorators", "airflow.operators", "airflow.models"):
            assert deprecated not in source


class TestRetries:
    """Airflow's task retries rescue a run: shards and commit are safe to run again."""

    def test_shard_that_fails_once_succeeds_on_retry(
        self, server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Shard 1 meets a failing service on its first try and fails (partial, and partial
        runs are not allowed); its retry completes it, and the run publishes every row."""
        config = write_config(
            tmp_path,
            server,
            snapshot_date=None,
            fetch={**FETCH, "max_attempts": 2},
            **no_discovery(server),
        )
        monkeypatch.setenv("OCI_IMAGES_TEST_CONFIG", str(config))
        faults.fail_shard(1, tries=1)
        dag = load_dag("oci_images_test_dags.py", "shard_fault")

        run = dag.test(logical_date=datetime(2026, 11, 27, tzinfo=UTC))

        assert "success" == str(run.state)
        assert [1, 2, 1] == tries(run, "oci_images.export_shard")
        lake = str(tmp_path / "lake")
        assert "succeeded" == manifest(lake, DATE)["status"]
        assert_same_rows(single_run(config, tmp_path, DATE), published(lake, DATE))

    def test_commit_retried_after_publishing_succeeds_and_changes_nothing(
        self, server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A commit that published and then lost its worker is retried: the retry finds the
        run published, succeeds, and leaves the partition as the first try wrote it."""
        config = write_config(tmp_path, server, snapshot_date=None, fetch=FETCH)
        monkeypatch.setenv("OCI_IMAGES_TEST_CONFIG", str(config))
        dag = load_dag("oci_images_test_dags.py", "commit_retry")
        lake = str(tmp_path / "lake")

        run = dag.test(logical_date=datetime(2026, 11, 27, tzinfo=UTC))

        assert "success" == str(run.state)
        assert [2] == tries(run, "commit")
        first = faults.PUBLISHED_AT_FIRST_COMMIT
        written = manifest(lake, DATE)
        assert first["run_id"] == written["run_id"]
        assert first["rows"] == written["rows"]
        assert_same_rows(single_run(config, tmp_path, DATE), published(lake, DATE))
        (event,) = asset_events(images_asset(lake).uri)
        assert first["run_id"] == event["extra"]["run_id"]


class TestPartialRuns:
    """A shard whose listings failed follows output.allow_partial."""

    def test_allowed_partial_shard_succeeds_and_commit_publishes_it(
        self, server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With allow_partial, the failing shard's task succeeds, and the commit publishes the
        partial run, marked partial in the manifest and in the asset event (a whole shard of
        three failing is a third of the listings: the floor is lowered to let it through)."""
        config = write_config(
            tmp_path,
            server,
            snapshot_date=None,
            fetch={**FETCH, "max_attempts": 2},
            output={"allow_partial": True, "min_complete_ratio": 0.5},
            **no_discovery(server),
        )
        monkeypatch.setenv("OCI_IMAGES_TEST_CONFIG", str(config))
        faults.fail_shard(1, tries=99)
        dag = load_dag("oci_images_test_dags.py", "shard_fault")

        run = dag.test(logical_date=datetime(2026, 11, 26, tzinfo=UTC))

        assert "success" == str(run.state)
        assert [1, 1, 1] == tries(run, "oci_images.export_shard")
        lake = str(tmp_path / "lake")
        written = manifest(lake, "2026-11-26")
        assert "partial" == written["status"]
        failed = [c for c in written["compartments"] if c["status"] == "failed"]
        assert failed
        (event,) = asset_events(images_asset(lake).uri)
        assert "partial" == event["extra"]["status"]
        assert len(failed) == event["extra"]["listings_failed"]

    def test_partial_shard_fails_without_allow_partial_and_nothing_is_published(
        self, server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without allow_partial, a shard that stays partial fails after its retries; the
        commit never runs and no partition appears."""
        config = write_config(
            tmp_path,
            server,
            snapshot_date=None,
            fetch={**FETCH, "max_attempts": 2},
            **no_discovery(server),
        )
        monkeypatch.setenv("OCI_IMAGES_TEST_CONFIG", str(config))
        faults.fail_shard(1, tries=99)
        dag = load_dag("oci_images_test_dags.py", "shard_fault")

        run = dag.test(logical_date=datetime(2026, 11, 25, tzinfo=UTC))

        assert "failed" == str(run.state)
        states = task_states(run)
        assert ["success", "failed", "success"] == states["oci_images.export_shard"]
        assert ["upstream_failed"] == states["oci_images.commit"]
        assert not (tmp_path / "lake" / "images").exists()


class TestConnection:
    """Credentials from an Airflow Connection: nothing on the workers' disks."""

    def test_connection_credentials_with_no_config_file(
        self, server: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The API key lives in an Airflow Connection (an AIRFLOW_CONN_ JSON variable) made
        only of the fields of the form Airflow's providers manager lists, the settings in the
        DAG: with no OCI config file, no key file and no TOML file on disk, the run publishes
        the emulator's tenancy, and the asset event carries the snapshot date as partition key."""
        assert server.config_file is not None
        profile = configparser.ConfigParser()
        profile.read(server.config_file)
        default = profile["DEFAULT"]
        given = dict(default) | {"private_key_content": Path(default["key_file"]).read_text()}
        extras = {name: given[name] for name in form_fields() if name in given}
        assert {"tenancy", "fingerprint", "region", "private_key_content", "key_file"} == set(
            extras
        )
        del extras["key_file"]  # the key itself, nothing on the worker's disk
        shutil.rmtree(server.config_file.parent)
        connection = {"conn_type": "oci", "login": default["user"], "extra": extras}
        monkeypatch.setenv("AIRFLOW_CONN_OCI_EMULATOR", json.dumps(connection))
        lake = str(tmp_path / "lake")
        values = {
            "oci": {"endpoint": server.endpoint_template, "regions": ["subscribed"]},
            "fetch": {"workers": 0},
            "output": {"uri": lake},
        }
        monkeypatch.setenv("OCI_IMAGES_TEST_VALUES", json.dumps(values))
        dag = load_dag("oci_images_test_dags.py", "connection_only")

        run = dag.test(logical_date=datetime(2026, 11, 27, tzinfo=UTC))

        assert "success" == str(run.state)
        written = manifest(lake, DATE)
        assert "succeeded" == written["status"]
        assert written["rows"] > 0
        listed = {c["compartment_id"] for c in written["compartments"]}
        assert {c.id for c in server.world.listable_compartments()} == listed
        (event,) = asset_events(images_asset(lake).uri)
        assert DATE == event["partition_key"]
        assert written["rows"] == event["extra"]["rows"]
