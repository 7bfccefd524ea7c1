"""Reliability on S3 (moto's S3 server on loopback): kills, concurrent runs, each commit step.

The same cases as ``tests/test_reliability.py`` on local disk, against an output on S3. After
each fault the published snapshot, read through ``_manifest.json`` (and through the Delta or
Iceberg reader where the output is a table), is the old one or the new one, equal to its ground
truth, never a mix; a marker never stands beside missing data; the next run succeeds, publishes
the new snapshot and leaves nothing in ``_staging``.

``make test`` runs the fast cases; ``make reliability`` the random SIGKILLs, 20 of each.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.fs as pafs
import pytest

from connector import cli as command_line
from connector.emulator import Behaviour, EmulatorServer, World
from connector.lake import door, publisher, storage, tables
from connector.lake.manifest import read_document
from tests.helpers import DATE, worker_pids, write_config
from tests.lake_support import (
    S3Server,
    delta_rows,
    iceberg_dataset,
    is_delta_file,
    manifest_rows,
)
from tests.reference import multiset, normalise_actual
from tests.reliability import (
    FETCH,
    build_new_world,
    build_old_world,
    cli,
    kill_group,
    start,
    truth,
    wait_for_requests,
)

KINDS: dict[str, dict[str, Any]] = {
    "parquet": {},
    "delta": {"table_format": "delta"},
    "iceberg": {"table_format": "iceberg"},
}

full = pytest.mark.reliability

OTHER = "2026-11-28"
"""A snapshot date beside ``DATE``, for a run that overlaps another."""


@pytest.fixture(scope="module")
def old_world() -> World:
    return build_old_world()


@pytest.fixture(scope="module")
def new_world() -> World:
    return build_new_world()


@pytest.fixture(scope="module")
def old_server(
    old_world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorServer]:
    with EmulatorServer(old_world, oci_config_dir=tmp_path_factory.mktemp("old-oci")) as server:
        yield server


@pytest.fixture(scope="module")
def new_server(
    new_world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorServer]:
    folder = tmp_path_factory.mktemp("new-oci")
    with EmulatorServer(new_world, Behaviour(latency_ms=5), oci_config_dir=folder) as server:
        yield server


@pytest.fixture
def slow_server(new_world: World, tmp_path: Path) -> Iterator[Callable[[int], EmulatorServer]]:
    """The new tenancy, ``latency_ms`` per request (runs long enough to be killed midway)."""
    started: list[EmulatorServer] = []

    def serve(latency_ms: int) -> EmulatorServer:
        folder = tmp_path / f"oci-{len(started)}"
        server = EmulatorServer(new_world, Behaviour(latency_ms=latency_ms), oci_config_dir=folder)
        started.append(server.start())
        return server

    yield serve
    for server in started:
        server.stop()


class S3Lake:
    """An output on S3 holding the old snapshot, and the checks every case ends with."""

    def __init__(self, s3: S3Server, folder: Path, kind: str, old_server: EmulatorServer) -> None:
        self.s3 = s3
        self.folder = folder
        self.kind = kind
        self.uri = f"s3://{s3.new_bucket()}/lake"
        self.store = storage.resolve(self.uri, s3.options())
        self.catalog = {"uri": f"sqlite:///{folder}/catalog.db"} if kind == "iceberg" else {}
        assert 0 == command_line.main(
            ["--log-level", "error", "run", "--config", str(self.config(old_server))]
        )

    def config(self, server: EmulatorServer, **sections: Any) -> Path:
        output = {"uri": self.uri, **KINDS[self.kind]}
        output.update(sections.pop("output", {}))
        fetch = {**FETCH, **sections.pop("fetch", {})}
        extra: dict[str, Any] = {"output.storage_options": self.s3.options()}
        if self.catalog:
            extra["output.catalog"] = self.catalog
        return write_config(self.folder, server, output=output, fetch=fetch, **extra, **sections)

    @property
    def partition(self) -> str:
        return f"{self.store.base}/images/snapshot_date={DATE}"

    def objects(self, top: str) -> set[str]:
        """The files below ``{base}/{top}``, relative to it."""
        root = f"{self.store.base}/{top}"
        selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
        found = self.store.fs.get_file_info(selector)
        return {
            i.path[len(root) + 1 :]
            for i in found
            if i.type == pafs.FileType.File and not is_delta_file(i.base_name)
        }

    def published(self, settled: bool = True) -> tuple[str, Counter[bytes]]:
        """The published run id and its rows, after checking the partition is whole: the
        manifest, its marker, every file it lists. For a table the table's own reader is what
        counts: its rows are one run's, and the manifest names that run, or (``settled``
        False: a commit was killed between the table's commit and the manifest, which the next
        commit writes) the run before it."""
        manifest, rows = manifest_rows(self.store, DATE)
        assert manifest is not None, "no manifest published"
        marker = "_PARTIAL" if manifest["status"] == "partial" else "_SUCCESS"
        objects = self.objects(f"images/snapshot_date={DATE}")
        assert marker in objects, f"{marker} missing"
        assert set(publisher.listed(manifest)) <= objects, "a listed file is missing"
        if self.kind == "delta":
            rows = delta_rows(self.store, DATE).to_pylist(maps_as_pydicts="strict")
        elif self.kind == "iceberg":
            writer = tables.IcebergWriter(self.store, self.catalog)
            rows = iceberg_dataset(writer, DATE).to_pylist(maps_as_pydicts="strict")
        else:
            assert manifest["rows"] == len(rows)
        run_ids = {row["_run_id"] for row in rows}
        assert 1 == len(run_ids), f"rows of several runs: {run_ids}"
        (run_id,) = run_ids
        if settled or self.kind == "parquet":
            assert manifest["run_id"] == run_id, "the manifest names another run"
        self.companions_agree(manifest)
        return run_id, multiset([normalise_actual(r, "once") for r in rows])

    def journal_runs(self) -> set[str]:
        """The runs whose commit journals wait in ``_staging``."""
        found = set()
        for path in self.objects("_staging"):
            if path.endswith("/_commit.json"):
                with self.store.fs.open_input_stream(f"{self.store.base}/_staging/{path}") as raw:
                    found.add(str(orjson.loads(raw.read())["run_id"]))
        return found

    def companions_agree(self, images: dict[str, Any], exact: bool = False) -> None:
        """Each companion the images manifest names is published by the same run, with its
        marker and the files its manifest lists (``exact``: and no other file)."""
        for name in images.get("datasets", {}):
            partition = f"{self.store.base}/{name}/snapshot_date={DATE}"
            manifest = read_document(self.store.fs, partition)
            assert manifest is not None, f"{name} has no manifest"
            if images["run_id"] != manifest["run_id"]:
                # Only a commit killed past its commit point (the images manifest) leaves a
                # companion behind, and its journal is there for the next start to finish it.
                assert not exact, f"{name} names another run"
                assert images["run_id"] in self.journal_runs(), f"{name} names another run"
            objects = self.objects(f"{name}/snapshot_date={DATE}")
            listed = {f["path"] for f in manifest["files"]}
            assert "_SUCCESS" in objects, f"{name} has no marker"
            assert listed <= objects, f"a file {name}'s manifest lists is missing"
            if exact:
                assert listed | {"_manifest.json", "_SUCCESS"} == objects, f"{name}: orphans"

    def settled(self, old_world: World, new_world: World, server: EmulatorServer) -> str:
        """Old or new snapshot, exact; then a clean run publishes the new one and leaves
        nothing behind. Which was found."""
        _, rows = self.published(settled=False)
        found = "old" if rows == truth(old_world) else "new" if rows == truth(new_world) else None
        assert found is not None, "the published snapshot is neither the old nor the new one"
        result = cli("run", "--config", str(self.config(server)))
        assert 0 == result.returncode, result.stderr
        run_id, rows = self.published()
        assert truth(new_world) == rows
        manifest = read_document(self.store.fs, self.partition)
        assert manifest is not None
        listed = set(publisher.listed(manifest)) | {"_manifest.json", "_SUCCESS"}
        assert listed == self.objects(f"images/snapshot_date={DATE}")
        self.companions_agree(manifest, exact=True)
        self.nothing_staged()
        assert f"{run_id}.json" in self.objects("_runs")  # its record
        return found

    def nothing_staged(self) -> None:
        """No object at all under ``_staging/`` or ``_trash/``: no file, and none of the empty
        folder markers (``_staging/``, ``_staging/_locks/``, ``_staging/RUN_ID/`` ...) pyarrow
        leaves wherever it created or emptied a folder."""
        base = self.store.base
        assert [] == self.s3.keys(f"{base}/_staging") + self.s3.keys(f"{base}/_trash")


@pytest.fixture
def make_lake(s3: S3Server, old_server: EmulatorServer, tmp_path: Path) -> Callable[..., S3Lake]:
    def make(kind: str = "parquet", name: str = "lake") -> S3Lake:
        folder = tmp_path / name
        folder.mkdir()
        return S3Lake(s3, folder, kind, old_server)

    return make


# -- each step of the commit -------------------------------------------------------------------

STEPS = ["kill-before-manifest", "kill-after-manifest", "kill-before-cleanup"]
# make test: every step for plain files, the table's commit point for each table format.
CASES = [
    pytest.param(kind, fault, marks=[] if kind == "parquet" or fault == STEPS[0] else [full])
    for kind in KINDS
    for fault in STEPS
]


@pytest.mark.parametrize(("kind", "fault"), CASES)
def test_sigkill_at_each_step_of_the_commit(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    kind: str,
    fault: str,
) -> None:
    """Killed with the copies (or the table's commit) done, with the manifest written, with
    the marker written: the old snapshot before the commit point, the new one after it (the
    commit point is the manifest for plain files, the table's commit for a table); the next
    run finishes or rolls back and publishes."""
    lake = make_lake(kind)
    result = cli("run", "--config", str(lake.config(new_server)), fault=fault)
    assert -signal.SIGKILL == result.returncode, result.stderr
    expected = "old" if fault == "kill-before-manifest" and kind == "parquet" else "new"
    assert expected == lake.settled(old_world, new_world, new_server)


# -- two runs at once --------------------------------------------------------------------------


@pytest.mark.parametrize("same_run_id", [True, False], ids=["same-run-id", "other-run-ids"])
def test_two_concurrent_runs_one_writer(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    slow_server: Callable[[int], EmulatorServer],
    same_run_id: bool,
) -> None:
    """Two runs of one date on S3 at once: the date's lease admits one; the other exits 1
    naming the holder; the published partition is whole and exact."""
    lake = make_lake()
    server = slow_server(40)
    config = lake.config(server)
    ids = ["twin", "twin"] if same_run_id else ["first", "second"]
    processes = [start("run", "--config", str(config), "--run-id", run_id) for run_id in ids]
    results = [p.communicate(timeout=180) for p in processes]
    codes = [p.returncode for p in processes]
    assert [0, 1] == sorted(codes), results
    loser = results[codes.index(1)][1]
    winner = ids[codes.index(0)]
    assert f"is being written by run {winner}" in loser
    assert "_staging/_locks/snapshot_date=" in loser
    run_id, rows = lake.published()
    assert (winner, truth(new_world)) == (run_id, rows)
    assert "new" == lake.settled(old_world, new_world, server)


# -- random kills ------------------------------------------------------------------------------


def _kill_the_command(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    server: EmulatorServer,
    kills: int,
    seed: int,
) -> Counter[str]:
    rng = random.Random(seed)
    found = Counter[str]()
    for trial in range(kills):
        lake = make_lake(name=f"t{trial}")
        process = start("run", "--config", str(lake.config(server)))
        time.sleep(rng.uniform(0.2, 3.0))
        kill_group(process)
        found[lake.settled(old_world, new_world, server)] += 1
    return found


def test_sigkill_of_the_command_fast(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    slow_server: Callable[[int], EmulatorServer],
) -> None:
    """Two SIGKILLs of the command writing to S3 (the full suite has 20)."""
    found = _kill_the_command(make_lake, old_world, new_world, slow_server(20), 2, seed=25)
    assert 2 == sum(found.values())


@full
def test_sigkill_of_the_command_at_random_points(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    slow_server: Callable[[int], EmulatorServer],
) -> None:
    """20 SIGKILLs of the command and its workers writing to S3, from start-up to the commit:
    every time the old snapshot or the new one; the next run cleans up and succeeds."""
    found = _kill_the_command(make_lake, old_world, new_world, slow_server(20), 20, seed=15)
    assert 20 == sum(found.values())
    print(f"SIGKILL of the command on S3: {dict(found)}")


def _kill_a_worker(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    server: EmulatorServer,
    kills: int,
    seed: int,
) -> Counter[str]:
    rng = random.Random(seed)
    outcomes = Counter[str]()
    for trial in range(kills):
        lake = make_lake(name=f"w{trial}")
        config = lake.config(server, fetch={"workers": 2})
        process = start("run", "--config", str(config))
        wait_for_requests(server, server.stats()["requests"] + rng.randint(1, 40))
        workers = worker_pids(process.pid)
        if workers:
            os.kill(rng.choice(workers), signal.SIGKILL)
        _, err = process.communicate(timeout=180)
        assert process.returncode in (0, 1), err
        if process.returncode == 1:
            assert "worker process" in err
            assert "went away" in err
        outcomes[f"exit {process.returncode}, {lake.settled(old_world, new_world, server)}"] += 1
    return outcomes


def test_sigkill_of_a_worker_fast(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    slow_server: Callable[[int], EmulatorServer],
) -> None:
    """Two SIGKILLs of a worker process writing to S3 (the full suite has 20)."""
    outcomes = _kill_a_worker(make_lake, old_world, new_world, slow_server(20), 2, seed=26)
    assert 2 == sum(outcomes.values())


@full
def test_sigkill_of_a_worker_at_random_points(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    slow_server: Callable[[int], EmulatorServer],
) -> None:
    """20 SIGKILLs of a worker mid-run on S3: the run fails (exit 1, nothing published) or,
    killed after its last listing, succeeds; the old snapshot or the new one; the next run
    succeeds."""
    outcomes = _kill_a_worker(make_lake, old_world, new_world, slow_server(20), 20, seed=16)
    assert 20 == sum(outcomes.values())
    print(f"SIGKILL of a worker on S3: {dict(outcomes)}")


# -- nothing left in _staging: pyarrow's folder markers ----------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_runs_leave_no_object_in_staging(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    slow_server: Callable[[int], EmulatorServer],
    kind: str,
) -> None:
    """pyarrow leaves an empty ``folder/`` object wherever it created a folder, and puts one
    back for the parent of whatever it deletes. After runs, shards and their commit, a killed
    run and the run after it, the bucket holds no object under ``_staging/`` or ``_trash/``
    (listed by S3 itself, markers included); each published snapshot is whole."""
    lake = make_lake(kind)
    lake.nothing_staged()  # the old snapshot's run, made by S3Lake
    config = lake.config(new_server)
    for _ in range(2):
        result = cli("run", "--config", str(config))
        assert 0 == result.returncode, result.stderr
        lake.nothing_staged()
    for shard in ("0/2", "1/2"):
        result = cli("run", "--config", str(config), "--shard", shard, "--run-id", "sharded")
        assert 0 == result.returncode, result.stderr
    assert 0 == cli("commit", "--config", str(config), "--run-id", "sharded").returncode
    assert truth(new_world) == lake.published()[1]
    lake.nothing_staged()
    server = slow_server(20)
    process = start("run", "--config", str(lake.config(server)))
    wait_for_requests(server, 30)
    kill_group(process)
    assert lake.s3.keys(f"{lake.store.base}/_staging"), "the killed run left nothing to clean"
    assert "new" == lake.settled(old_world, new_world, server)  # checks nothing_staged too


def test_removing_markers_takes_nothing_a_live_run_writes(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    slow_server: Callable[[int], EmulatorServer],
) -> None:
    """While a run writes its staging, another run of another date starts, publishes and
    cleans up, and a thread removes every empty-looking folder under ``_staging`` as fast as
    it can (the run's own folders too, between pyarrow's marker and the run's first file):
    the writing run loses nothing, publishes its whole snapshot, and the last one out leaves
    no object in ``_staging``."""
    lake = make_lake()
    server = slow_server(20)
    writer = start("run", "--config", str(lake.config(server)))
    wait_for_requests(server, 5)
    staging = f"{lake.store.base}/_staging"
    stop = threading.Event()
    removed: list[str] = []

    def remove_empty_folders() -> None:
        while not stop.is_set():
            selector = pafs.FileSelector(staging, recursive=True, allow_not_found=True)
            with contextlib.suppress(OSError):
                for info in lake.store.fs.get_file_info(selector):
                    if info.type == pafs.FileType.Directory and door.remove_empty_dir(
                        lake.store.fs, lake.store.base, info.path
                    ):
                        removed.append(info.path)

    remover = threading.Thread(target=remove_empty_folders)
    remover.start()
    try:
        other = cli("run", "--config", str(lake.config(new_server)), "--snapshot-date", OTHER)
        _, err = writer.communicate(timeout=180)
    finally:
        stop.set()
        remover.join()
    assert 0 == other.returncode, other.stderr
    assert 0 == writer.returncode, err
    assert removed, "the race was never run: no folder was found empty"
    assert truth(new_world) == lake.published()[1]
    other_manifest, other_rows = manifest_rows(lake.store, OTHER)
    assert other_manifest is not None
    assert other_manifest["rows"] == len(other_rows) > 0
    lake.nothing_staged()


def test_killing_worker_0_leaves_nothing_staged(
    make_lake: Callable[..., S3Lake],
    old_world: World,
    slow_server: Callable[[int], EmulatorServer],
) -> None:
    """Worker 0 is the other workers' parent: killed mid-run, it leaves them running, and the
    run fails. It waits for them before it removes its staging, so none recreates a folder
    there (on S3, the marker pyarrow puts back for each file a worker deletes) after it: once
    the command exits, nothing is left under ``_staging`` or ``_trash``, and the old snapshot
    stands."""
    server = slow_server(20)
    for trial in range(4):
        lake = make_lake(name=f"k{trial}")
        process = start("run", "--config", str(lake.config(server, fetch={"workers": 2})))
        wait_for_requests(server, server.stats()["requests"] + 10 + 8 * trial)
        first = worker_pids(process.pid, children_only=True)
        assert first, "no worker process to kill"
        os.kill(first[0], signal.SIGKILL)
        _, err = process.communicate(timeout=180)
        assert 1 == process.returncode, err
        assert "worker process 0 went away" in err
        lake.nothing_staged()
        assert truth(old_world) == lake.published()[1]
