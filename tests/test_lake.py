"""Data lakes: every output kind on local disk and on S3 (moto's server on loopback).

For {Parquet, NDJSON, Delta, Iceberg} × {local, S3}: a run publishes, a second run replaces
the date, and what each kind's readers read equals the emulator's ground truth.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.fs as pafs
import pytest

from connector import cli
from connector.emulator import EmulatorServer, build_world
from connector.lake import housekeeping, storage, tables
from connector.lake.manifest import read_document
from connector.prepare import new_run_id
from tests.helpers import write_config
from tests.lake_support import (
    KEY,
    SECRET,
    Committer,
    S3Server,
    dataset_table,
    delta_rows,
    delta_table,
    duckdb_by_region,
    iceberg_dataset,
    iceberg_rows,
    is_delta_file,
    manifest_rows,
    partition_path,
)
from tests.reference import expected_rows, multiset, normalise_actual

DATE = "2026-11-27"
WORLD = {
    "seed": 33,
    "compartments": 6,
    "regions": ("us-ashburn-1", "eu-frankfurt-1"),
    "platform_images": 8,
    "custom_scale": 0.3,
}
KINDS = {
    "parquet": {"format": "parquet"},
    "ndjson": {"format": "ndjson", "compression": "gzip"},
    "delta": {"table_format": "delta"},
    "iceberg": {"table_format": "iceberg"},
}


@pytest.fixture(scope="module")
def lake_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    folder = tmp_path_factory.mktemp("oci-lake")
    with EmulatorServer(build_world(**WORLD), oci_config_dir=folder) as server:  # type: ignore[arg-type]
        yield server


def lake_config(
    tmp_path: Path, server: EmulatorServer, kind: str, place: str, s3: S3Server | None
) -> tuple[Path, storage.Store, dict[str, Any]]:
    """A config for ``kind`` at ``place``; the store it writes to and its catalog table."""
    # Any: the sections are passed on as keyword arguments beside write_config's own.
    sections: dict[str, Any] = {
        "output": {"snapshot_date": DATE, **KINDS[kind]},
        "fetch": {"workers": 0},
    }
    options: dict[str, Any] = {}
    if place == "s3":
        assert s3 is not None
        options = s3.options()
        sections["output"]["uri"] = f"s3://{s3.new_bucket()}/lake"
        sections["output.storage_options"] = options
    catalog: dict[str, Any] = {}
    if kind == "iceberg" and place == "s3":
        catalog = {"uri": f"sqlite:///{tmp_path}/catalog.db"}
        sections["output.catalog"] = catalog
    config = write_config(tmp_path, server, **sections)
    uri = sections["output"].get("uri", str(tmp_path / "lake"))
    return config, storage.resolve(uri, options), catalog


def run(config: Path, *extra: str) -> int:
    return cli.main(["--log-level", "warning", "run", "--config", str(config), *extra])


def expected(server: EmulatorServer) -> Any:
    return multiset(expected_rows(server.world, "once"))


def actual(rows: list[dict[str, Any]]) -> Any:
    return multiset([normalise_actual(r, "once") for r in rows])


def read_all(
    kind: str, store: storage.Store, catalog: dict[str, Any], pin: Any = None
) -> tuple[list[dict[str, Any]], set[str]]:
    """The rows of the date as the kind's own reader sees them, and their run ids."""
    if kind == "delta":
        rows = delta_rows(store, DATE, pin).to_pylist(maps_as_pydicts="strict")
    elif kind == "iceberg":
        writer = tables.IcebergWriter(store, catalog)
        rows = iceberg_dataset(writer, DATE, pin).to_pylist(maps_as_pydicts="strict")
    else:
        _, rows = manifest_rows(store, DATE)
    return rows, {r["_run_id"] for r in rows}


def partition_objects(store: storage.Store) -> set[str]:
    """The files of the date's partition folder the connector writes: a Delta table's own data
    files are left out (Delta names its partition folders as plain files do,
    ``snapshot_date=D/region=R/``, so they share the date's folder; VACUUM removes old ones)."""
    partition = partition_path(store, DATE)
    selector = pafs.FileSelector(partition, recursive=True, allow_not_found=True)
    return {
        info.path[len(partition) + 1 :]
        for info in store.fs.get_file_info(selector)
        if info.type == pafs.FileType.File and not is_delta_file(info.base_name)
    }


@pytest.mark.parametrize("place", ["local", "s3"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_publish_replace_read_back(
    lake_emulator: EmulatorServer, s3: S3Server, tmp_path: Path, kind: str, place: str
) -> None:
    """A run publishes the ground truth; a rerun replaces the date wholesale; each kind's
    readers (its own, pyarrow.dataset, DuckDB) read exactly the rows of the latest run."""
    config, store, catalog = lake_config(tmp_path, lake_emulator, kind, place, s3)
    truth = expected(lake_emulator)
    published: list[dict[str, Any]] = []
    for attempt in range(2):
        assert 0 == run(config)
        manifest = read_document(store.fs, partition_path(store, DATE))
        assert manifest is not None
        published.append(manifest)
        rows, run_ids = read_all(kind, store, catalog)
        assert {manifest["run_id"]} == run_ids, f"run {attempt}: rows of several runs"
        assert truth == actual(rows)
        assert sum(truth.values()) == manifest["rows"]
        assert "_SUCCESS" in partition_objects(store)
    first, second = published
    assert first["run_id"] != second["run_id"]
    truth_rows = expected_rows(lake_emulator.world, "once")
    by_region = sorted(
        (region, sum(1 for r in truth_rows if r["region"] == region))
        for region in lake_emulator.world.regions
    )
    if kind in ("parquet", "ndjson"):
        table = dataset_table(store, DATE)
        assert [(r, n, n) for r, n in by_region] == duckdb_by_region(table)
        # Only the second run's files remain: the first run's were deleted after the swap.
        names = {f["path"] for f in second["files"]}
        assert names | {"_manifest.json", "_SUCCESS"} == partition_objects(store)
        if place == "s3":
            assert all(second["run_id"] in name for name in names)
    elif kind == "delta":
        info = second["table"]
        assert ("delta", first["table"]["version"] + 1) == (info["format"], info["version"])
        current = delta_table(store).to_pyarrow_dataset()
        assert [(r, n, n) for r, n in by_region] == duckdb_by_region(current.to_table())
        # Time travel: the version the first manifest recorded still reads the first run.
        rows, run_ids = read_all(kind, store, catalog, first["table"]["version"])
        assert ({first["run_id"]}, truth) == (run_ids, actual(rows))
    else:
        info = second["table"]
        assert info["snapshot_id"] != first["table"]["snapshot_id"]
        writer = tables.IcebergWriter(store, catalog)
        scanned = iceberg_rows(writer, DATE)
        assert [(r, n, n) for r, n in by_region] == duckdb_by_region(scanned)
        # pyiceberg's own reader, which reads a null list of structs as an empty list.
        for row in truth_rows:
            if row["image_volume_details__data_volumes"] is None:
                row["image_volume_details__data_volumes"] = []
        assert multiset(truth_rows) == actual(scanned.to_pylist(maps_as_pydicts="strict"))
        rows, run_ids = read_all(kind, store, catalog, first["table"]["snapshot_id"])
        assert ({first["run_id"]}, truth) == (run_ids, actual(rows))
        described = {f.name: f.doc for f in writer.table(create=False).schema().fields}
        assert "The image OCID." == described["id"]
    if place == "s3":
        # No staged file is left behind (an empty folder of released date locks may be).
        staging = f"{store.base}/_staging"
        selector = pafs.FileSelector(staging, recursive=True, allow_not_found=True)
        left = store.fs.get_file_info(selector)
        assert [] == [f.path for f in left if f.type == pafs.FileType.File]


PRELOAD = {"delta": ("deltalake",), "iceberg": ("pyiceberg.catalog.sql", "pyiceberg.table")}


@pytest.mark.parametrize("kind", ["parquet", "delta", "iceberg"])
def test_sigkill_during_commit_to_s3_fast(
    lake_emulator: EmulatorServer, s3: S3Server, tmp_path: Path, kind: str
) -> None:
    """`commit` to S3 killed at 2 moments early in its writes (the full suite: 20 random
    moments per kind)."""
    _kill_commits(lake_emulator, s3, tmp_path, kind, [0.1, 0.45], least_interrupted=1)


@pytest.mark.slow
@pytest.mark.reliability
@pytest.mark.parametrize("kind", ["parquet", "delta", "iceberg"])
def test_sigkill_during_commit_to_s3(
    lake_emulator: EmulatorServer, s3: S3Server, tmp_path: Path, kind: str
) -> None:
    """`commit` to S3, killed with SIGKILL at 20 random moments: every reader sees the old
    snapshot or the new one, whole; `_SUCCESS` never stands beside missing data; the next
    commit repairs the partition and leaves nothing behind."""
    rng = random.Random(f"kill-{kind}")
    moments = [rng.random() for _ in range(20)]
    interrupted = _kill_commits(lake_emulator, s3, tmp_path, kind, moments, least_interrupted=3)
    print(f"SIGKILL during a commit to S3 ({kind}): {interrupted} of 20 inside the commit")


def _kill_commits(
    lake_emulator: EmulatorServer,
    s3: S3Server,
    tmp_path: Path,
    kind: str,
    moments: list[float],
    least_interrupted: int,
) -> int:
    """Stage a run in two shards, start its commit, SIGKILL it at each of ``moments`` (a
    fraction of a commit's duration after its journal is written), check every reader, repair
    with the next commit. How many kills left a commit unfinished."""
    config, store, catalog = lake_config(tmp_path, lake_emulator, kind, "s3", s3)
    assert 0 == run(config)
    truth = expected(lake_emulator)

    def stage() -> str:
        """Two shards staged, as Airflow's mapped tasks do; `commit` publishes them together."""
        run_id = new_run_id()
        for shard in ("0/2", "1/2"):
            assert 0 == run(config, "--shard", shard, "--run-id", run_id)
        return run_id

    def journal_written(run_id: str) -> float:
        """Wait until the commit has written its journal (its first write); the time then."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _journals(store, run_id):  # in the commit's attempt folder
                break
            if _published_run(store) == run_id:  # done before we looked
                break
            time.sleep(0.002)
        return time.monotonic()

    def check_killed(attempt: int, before: str, run_id: str) -> None:
        rows, run_ids = read_all(kind, store, catalog)
        assert run_ids in ({before}, {run_id}), f"kill {attempt}: a mix of runs {run_ids}"
        assert truth == actual(rows), f"kill {attempt}: rows differ from the ground truth"
        objects = partition_objects(store)
        if "_SUCCESS" in objects:
            manifest = read_document(store.fs, partition_path(store, DATE))
            assert manifest is not None
            assert {f["path"] for f in manifest["files"]} <= objects
            if kind == "parquet":
                assert manifest["files"]
                _, listed_rows = manifest_rows(store, DATE)
                assert truth == actual(listed_rows)

    def check_repaired(run_id: str) -> None:
        """The next commit finishes or rolls back the killed one, then publishes its run."""
        assert 0 == cli.main(
            ["--log-level", "error", "commit", "--config", str(config), "--run-id", run_id]
        )
        rows, run_ids = read_all(kind, store, catalog)
        assert ({run_id}, truth) == (run_ids, actual(rows))
        manifest = read_document(store.fs, partition_path(store, DATE))
        assert manifest is not None
        assert run_id == manifest["run_id"]
        names = {f["path"] for f in manifest["files"] + manifest["reject_files"]}
        assert names | {"_manifest.json", "_SUCCESS"} == partition_objects(store)
        assert [] == _journals(store)
        if kind != "parquet":
            found = tables.writer(store, kind, catalog).find(run_id)
            assert found is not None
            assert found.items() <= manifest["table"].items()
            assert len(rows) == manifest["table"]["rows"] == manifest["rows"]

    committer = Committer(str(config), PRELOAD.get(kind, ()))
    try:
        # How long a commit's writes take, from its journal to its exit: the kills fall there.
        staged = stage()
        pid = committer.start(staged)
        began = journal_written(staged)
        assert 0 == committer.wait(pid)
        window = time.monotonic() - began

        interrupted = 0
        for attempt, moment in enumerate(moments):
            before = _published_run(store)
            run_id = stage()
            pid = committer.start(run_id)
            journal_written(run_id)
            time.sleep(moment * window)
            os.kill(pid, signal.SIGKILL)
            committer.wait(pid)
            interrupted += bool(_journals(store))
            check_killed(attempt, before, run_id)
            check_repaired(run_id)
    finally:
        committer.close()
    # Enough of the kills landed inside a commit for the test to mean something.
    assert interrupted >= least_interrupted, (
        f"only {interrupted} of {len(moments)} kills interrupted a commit"
    )
    return interrupted


def _published_run(store: storage.Store) -> str:
    manifest = read_document(store.fs, partition_path(store, DATE))
    assert manifest is not None
    return str(manifest["run_id"])


def _journals(store: storage.Store, run_id: str = "") -> list[str]:
    """Commit journals left in ``_staging`` (of ``run_id``'s commits only, if given)."""
    top = f"{store.base}/_staging" + (f"/{run_id}" if run_id else "")
    selector = pafs.FileSelector(top, recursive=True, allow_not_found=True)
    return [i.path for i in store.fs.get_file_info(selector) if i.base_name == "_commit.json"]


@pytest.mark.parametrize("place", ["local", "s3"])
def test_staging_expires_by_the_run_ids_time(s3: S3Server, tmp_path: Path, place: str) -> None:
    """Abandoned staging goes once its run id is a week old, whatever its files' times say;
    younger staging and ids without a time stay."""
    if place == "s3":
        store = storage.resolve(f"s3://{s3.new_bucket()}/lake", s3.options())
    else:
        store = storage.resolve(str(tmp_path / "lake"))
    now = time.time()
    ids = {
        "old": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - 8 * 86400)) + "-aaaaaa",
        "young": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now - 6 * 86400)) + "-bbbbbb",
        "untimed": "airflow-manual-7",
    }
    for run_id in ids.values():
        path = f"{store.base}/_staging/{run_id}/images/snapshot_date={DATE}/region=r/part-00000.parquet"
        store.fs.create_dir(path.rpartition("/")[0], recursive=True)
        with store.fs.open_output_stream(path) as out:
            out.write(b"staged")  # written just now: a modification time would keep it
    housekeeping.start(store)
    selector = pafs.FileSelector(f"{store.base}/_staging", allow_not_found=True)
    left = {info.base_name for info in store.fs.get_file_info(selector)}
    assert {ids["young"], ids["untimed"]} == left


@pytest.mark.parametrize("kind", ["delta", "iceberg"])
def test_rejects_stay_files_beside_the_table(
    make_emulator: Callable[..., EmulatorServer], s3: S3Server, tmp_path: Path, kind: str
) -> None:
    """On S3 with a table format, malformed records are JSON lines under the date's
    `_rejects/`, listed by the manifest; the table holds the rest; a rerun replaces them."""
    world = build_world(**WORLD, bad_records=0.05)  # type: ignore[arg-type]
    server = make_emulator(world)
    config, store, catalog = lake_config(tmp_path, server, kind, "s3", s3)
    listed = [i for region in world.regions for i in world.platform[region]]
    listed += [i for images in world.custom.values() for i in images]
    for _ in range(2):
        assert 0 == run(config)
        manifest = read_document(store.fs, partition_path(store, DATE))
        assert manifest is not None
        reject_paths = [f["path"] for f in manifest["reject_files"]]
        assert reject_paths
        assert all(p.startswith("_rejects/") and manifest["run_id"] in p for p in reject_paths)
        partition = partition_path(store, DATE)
        lines = [
            orjson.loads(line)
            for p in reject_paths
            for line in store.fs.open_input_stream(f"{partition}/{p}").read().splitlines()
        ]
        rows, run_ids = read_all(kind, store, catalog)
        assert ({manifest["run_id"]}, len(lines)) == (run_ids, manifest["rejects"])
        assert len(listed) == len(rows) + len(lines)
        assert {i.record().get("id") for i in listed} == {r["id"] for r in rows} | {
            line["record"].get("id") for line in lines
        }
        # Only this run's rejects remain beside the table.
        assert set(reject_paths) | {"_manifest.json", "_SUCCESS"} == partition_objects(store)


@pytest.mark.parametrize("kind", ["delta", "iceberg"])
def test_cli_writes_a_table_to_s3(
    lake_emulator: EmulatorServer, s3: S3Server, tmp_path: Path, kind: str
) -> None:
    """`oci-images run` as a user types it, the store and catalog given with --set, keys from
    the environment: the table on S3 holds the ground truth and no key reaches the output."""
    bucket = s3.new_bucket()
    config = write_config(tmp_path, lake_emulator, output={"snapshot_date": DATE})
    options = s3.options()
    overrides = [
        f"output.uri=s3://{bucket}/lake",
        f"output.table_format={kind}",
        f"output.storage_options.endpoint_url={options['endpoint_url']}",
        f"output.storage_options.region={options['region']}",
        "output.storage_options.path_style=true",
    ]
    if kind == "iceberg":
        overrides.append(f'output.catalog.uri="sqlite:///{tmp_path}/catalog.db"')
    environment = dict(os.environ)
    environment |= {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
    result = subprocess.run(
        [sys.executable, "-m", "connector", "run", "--config", str(config)]
        + [f"--set={o}" for o in overrides],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert 0 == result.returncode, result.stderr
    assert SECRET not in result.stdout + result.stderr
    store = storage.resolve(f"s3://{bucket}/lake", options)
    catalog = {"uri": f"sqlite:///{tmp_path}/catalog.db"} if kind == "iceberg" else {}
    rows, run_ids = read_all(kind, store, catalog)
    assert expected(lake_emulator) == actual(rows)
    manifest = read_document(store.fs, partition_path(store, DATE))
    assert manifest is not None
    assert {manifest["run_id"]} == run_ids
    assert kind == manifest["table"]["format"]
    assert SECRET not in orjson.dumps(manifest).decode()


def test_python_api_plans_shards_and_commits_a_delta_table_on_s3(
    lake_emulator: EmulatorServer, s3: S3Server, tmp_path: Path
) -> None:
    """connector.plan, run per shard and commit (what the Airflow tasks call) with the store
    and table given as values: one Delta version for the date, recorded in the outcome."""
    import connector

    settings = connector.load_config(
        values={
            "oci": {
                "config_file": str(lake_emulator.config_file),
                "endpoint": lake_emulator.endpoint_template,
                "regions": ["subscribed"],
            },
            "fetch": {"workers": 0},
            "output": {
                "uri": f"s3://{s3.new_bucket()}/lake",
                "snapshot_date": DATE,
                "table_format": "delta",
                "storage_options": s3.options(),
            },
        }
    )
    plan = connector.plan(settings, 3)
    for shard in plan.shards:
        staged = connector.run(settings, shard=shard)
        assert (0, False) == (staged.exit_code, staged.published)
    outcome = connector.commit(settings, plan.run_id)
    assert (0, True) == (outcome.exit_code, outcome.published)
    assert outcome.manifest is not None
    store = storage.resolve(settings.output.uri, settings.output.storage_options)
    version = delta_table(store).version()
    rows, run_ids = read_all("delta", store, {})
    assert {
        "format": "delta",
        "uri": store.uri(f"{store.base}/images"),
        "version": version,
        "rows": len(rows),
        "files": sum(len(s.regions) for s in plan.shards),
    } == outcome.manifest.table
    assert len(rows) == outcome.manifest.rows
    assert ({plan.run_id}, expected(lake_emulator)) == (run_ids, actual(rows))
    again = connector.commit(settings, plan.run_id)  # idempotent
    assert (0, True, "already published") == (again.exit_code, again.published, again.message)
