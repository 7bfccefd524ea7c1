"""Reliability: no argument, server, disk or kill deletes, corrupts or empties a published snapshot.

Every case starts from a lake holding an old snapshot (exported from one emulated tenancy),
then exports another tenancy under a fault. Afterwards the published snapshot must be the old
one or the new one, each equal to its ground truth (``World.truth()`` through
``tests.reference``), and the next run without the fault must succeed and publish the new one.

``make test`` runs the fast cases; ``make reliability`` (``pytest -m reliability``) runs all of
them, with SIGKILLs at random points.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.emulator import Behaviour, EmulatorServer, World
from tests.conftest import PrivateCA
from tests.helpers import worker_pids, write_config
from tests.reliability import (
    FETCH,
    Lake,
    build_new_world,
    build_old_world,
    cli,
    kill_group,
    start,
    summary_run_id,
    truth,
    wait_for_requests,
)

full = pytest.mark.reliability


@pytest.fixture(scope="module")
def old_world() -> World:
    return build_old_world()


@pytest.fixture(scope="module")
def new_world() -> World:
    return build_new_world()


@pytest.fixture(scope="module")
def new_server(
    new_world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorServer]:
    """The tenancy every case exports, well behaved, 5 ms per request."""
    folder = tmp_path_factory.mktemp("new-oci")
    with EmulatorServer(new_world, Behaviour(latency_ms=5), oci_config_dir=folder) as server:
        yield server


@pytest.fixture(scope="module")
def old_lake(old_world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake holding the old snapshot (exported once, copied into each case)."""
    folder = tmp_path_factory.mktemp("old")
    with EmulatorServer(old_world, oci_config_dir=folder / "oci") as server:
        result = cli(
            "run", "--config", str(write_config(folder, server, lake=folder / "lake", fetch=FETCH))
        )
    assert 0 == result.returncode, result.stderr
    return folder / "lake"


@pytest.fixture
def lake(old_lake: Path, tmp_path: Path) -> Lake:
    shutil.copytree(old_lake, tmp_path / "lake")
    return Lake(tmp_path / "lake")


@pytest.fixture
def hostile(tmp_path: Path, new_world: World) -> Iterator[Callable[..., EmulatorServer]]:
    """The new tenancy behind an emulator with hostile knobs."""
    started: list[EmulatorServer] = []

    def serve(**knobs: Any) -> EmulatorServer:
        folder = tmp_path / f"oci-{len(started)}"
        server = EmulatorServer(new_world, Behaviour(**knobs), oci_config_dir=folder)
        started.append(server.start())
        return server

    yield serve
    for server in started:
        server.stop()


def settled(
    lake: Lake, old_world: World, new_world: World, server: EmulatorServer, tmp_path: Path
) -> str:
    """The checks after every fault: old or new snapshot, each exact; then a clean run
    publishes the new one and leaves nothing behind. Returns which was found."""
    published = lake.published()
    found = {None: "none", _key(truth(old_world)): "old", _key(truth(new_world)): "new"}.get(
        _key(published) if published is not None else None, "corrupt"
    )
    assert found in ("old", "new"), f"the published snapshot is {found}"
    config = write_config(tmp_path, server, lake=lake.root, fetch=FETCH)
    result = cli("run", "--config", str(config))
    assert 0 == result.returncode, result.stderr
    assert truth(new_world) == lake.published()
    assert [] == lake.leftovers()
    return found


def _key(rows: Counter[bytes]) -> frozenset[tuple[bytes, int]]:
    return frozenset(rows.items())


# -- names -------------------------------------------------------------------------------------

FAST_RUN_IDS = ["../images", "../..", "a/b", ".."]
ALL_RUN_IDS = [*FAST_RUN_IDS, "", ".hidden", "_locks", "x" * 129, "a\nb", "run/../../etc", "C:"]


def _hostile_run_ids(
    run_ids: list[str],
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    tmp_path: Path,
) -> None:
    sibling = lake.root.parent / "sibling-team"
    sibling.mkdir()
    (sibling / "data.parquet").write_text("theirs")
    config = write_config(tmp_path, new_server, lake=lake.root, fetch=FETCH)
    for run_id in run_ids:
        for args in (("run", "--run-id", run_id), ("run", "--shard", "0/2", "--run-id", run_id)):
            result = cli(*args, "--config", str(config))
            assert 2 == result.returncode, (run_id, result.stderr)
            assert "--run-id" in result.stderr
        result = cli("commit", "--run-id", run_id, "--config", str(config))
        assert 2 == result.returncode, (run_id, result.stderr)
        assert truth(old_world) == lake.published()
    assert "theirs" == (sibling / "data.parquet").read_text()
    settled(lake, old_world, new_world, new_server, tmp_path)


def test_hostile_run_ids_change_nothing(
    lake: Lake, old_world: World, new_world: World, new_server: EmulatorServer, tmp_path: Path
) -> None:
    """A run id that is a path (../images, ../..) is refused (exit 2) before anything is read
    or deleted: the old snapshot and a sibling folder stay."""
    _hostile_run_ids(FAST_RUN_IDS, lake, old_world, new_world, new_server, tmp_path)


@full
def test_every_hostile_run_id_changes_nothing(
    lake: Lake, old_world: World, new_world: World, new_server: EmulatorServer, tmp_path: Path
) -> None:
    """The whole list of hostile run ids, for run, shard and commit."""
    _hostile_run_ids(ALL_RUN_IDS, lake, old_world, new_world, new_server, tmp_path)


def test_hostile_region_names_from_the_service(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    """Region subscriptions named /../ or ../../x: the run stops (exit 1) before writing
    anything anywhere; the old snapshot stays."""
    server = hostile(hostile_regions=("/../", "../../escaped", "us-ashburn-1/../../x"))
    result = cli(
        "run", "--config", str(write_config(tmp_path, server, lake=lake.root, fetch=FETCH))
    )
    assert 1 == result.returncode
    assert "is not a region name like us-ashburn-1; refusing to use it in a path" in result.stderr
    assert truth(old_world) == lake.published()
    assert not list(tmp_path.rglob("escaped"))
    assert not list(tmp_path.rglob("x"))
    assert "old" == settled(lake, old_world, new_world, new_server, tmp_path)


# -- concurrency -------------------------------------------------------------------------------


@pytest.mark.parametrize("same_run_id", [True, False], ids=["same-run-id", "other-run-ids"])
def test_two_concurrent_runs_one_writer(
    lake: Lake,
    old_world: World,
    new_world: World,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
    same_run_id: bool,
) -> None:
    """Two runs of one date at once: one publishes, the other fails at once naming the first;
    the partition is whole and exact."""
    server = hostile(latency_ms=40)
    config = write_config(tmp_path, server, lake=lake.root, fetch=FETCH)
    ids = ["twin", "twin"] if same_run_id else ["first", "second"]
    processes = [start("run", "--config", str(config), "--run-id", run_id) for run_id in ids]
    results = [p.communicate(timeout=120) for p in processes]
    codes = sorted(p.returncode for p in processes)
    assert [0, 1] == codes, results
    loser = results[[p.returncode for p in processes].index(1)][1]
    assert "is being written by run" in loser
    assert truth(new_world) == lake.published()
    assert "new" == settled(lake, old_world, new_world, server, tmp_path)


# -- the service -------------------------------------------------------------------------------


def _failed_fast(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    server: EmulatorServer,
    tmp_path: Path,
    expected: str,
    **sections: Any,
) -> subprocess.CompletedProcess[str]:
    fetch = {**FETCH, **sections.pop("fetch", {})}
    config = write_config(tmp_path, server, lake=lake.root, fetch=fetch, **sections)
    result = cli("run", "--config", str(config))
    assert 1 == result.returncode, result.stderr
    assert expected in result.stderr
    assert truth(old_world) == lake.published()
    run_id = summary_run_id(result.stdout) if "run_id=" in result.stdout else None
    if run_id and run_id != "-":
        record = lake.record(run_id)
        assert ("failed", False) == (record["status"], record["published"])
    assert "old" == settled(lake, old_world, new_world, new_server, tmp_path)
    return result


def test_endless_pagination_fails_its_listings(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    """Every page points to a new one: each listing stops at max_pages_per_listing, the run
    is below the floor and publishes nothing, with each listing's error recorded."""
    server = hostile(endless_pages=True)
    _failed_fast(
        lake,
        old_world,
        new_world,
        new_server,
        server,
        tmp_path,
        "min_complete_ratio",
        fetch={"max_pages_per_listing": 20},
        output={"allow_partial": True},
    )
    listings = len(new_world.listable_compartments()) * len(new_world.regions)
    assert server.stats()["requests"] <= listings * 20 + 10


def test_a_gzip_bomb_is_refused_without_inflating_it(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    """Pages that inflate to 256 MiB: refused at 16 MiB decoded, the run fails below the floor,
    and the process never holds the bomb (peak RSS of the run well under 256 MiB)."""
    server = hostile(gzip_bomb_mib=256)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    _failed_fast(
        lake,
        old_world,
        new_world,
        new_server,
        server,
        tmp_path,
        "max_decompressed_bytes",
        fetch={"max_decompressed_bytes": 16 * 2**20, "workers": 0, "concurrency": 2},
        output={"allow_partial": True},
    )
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert peak_mib < 250 or before / 1024 >= 250, f"peak RSS {peak_mib:.0f} MiB"


@full
def test_a_50_mb_page_is_refused_by_the_size_limit(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    """A 50 MB page over a 32 MiB max_response_bytes: refused from its Content-Length."""
    server = hostile(huge_page_mb=50)
    _failed_fast(
        lake,
        old_world,
        new_world,
        new_server,
        server,
        tmp_path,
        "max_response_bytes",
        fetch={"max_response_bytes": 32 * 2**20},
        output={"allow_partial": True},
    )


@pytest.mark.parametrize("kind", ["401", "tls", "refused"])
def test_whole_run_errors_fail_fast(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    hostile: Callable[..., EmulatorServer],
    private_ca: PrivateCA,
    tmp_path: Path,
    kind: str,
) -> None:
    """A bad key, an untrusted certificate, nothing listening: exit 1 after one round of
    attempts (never partial), with the reason, the host and what to check."""
    sections: dict[str, dict[str, Any]]
    if kind == "401":
        server = hostile(reject_auth=True)
        expected, sections = "401 NotAuthenticated", {}
    elif kind == "tls":
        server = EmulatorServer(
            new_world,
            oci_config_dir=tmp_path / "tls-oci",
            tls_cert=private_ca.cert_file,
            tls_key=private_ca.key_file,
        ).start()
        expected, sections = "oci.ca_bundle", {}
    else:
        server = hostile()
        expected = "connection was refused"
        sections = {"oci": {"endpoint": "http://127.0.0.1:9/{region}"}}
    started = time.monotonic()
    try:
        result = _failed_fast(
            lake, old_world, new_world, new_server, server, tmp_path, expected, **sections
        )
    finally:
        if kind == "tls":
            server.stop()
    [line] = [x for x in result.stderr.splitlines() if x.startswith("oci-images:")]
    assert "127.0.0.1" in line
    assert "RunAbort" not in line
    assert time.monotonic() - started < 60
    if kind == "401":
        assert server.stats()["requests"] <= 2  # discovery's first call: one round


def test_cut_json_and_poisoned_records_give_the_exact_rows(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    """Bodies cut after a bracket (Content-Length to match) are recognised by parsing and asked
    for again; records no parser accepts (invalid UTF-8, a lone surrogate, 5,000-deep nesting)
    are rejected alone. The run is complete and exact.

    A fifth of the requests are cut. A page fails the run only if all 8 of its attempts are
    cut: 0.2^8, about 3e-6 a page, and the world has 51 pages (at 0.3, one run in 300 failed
    so; one did)."""
    server = hostile(cut_json_rate=0.2, poison=("invalid_utf8", "lone_surrogate", "deep_nesting"))
    config = write_config(tmp_path, server, lake=lake.root, fetch={**FETCH, "max_attempts": 8})
    result = cli("run", "--config", str(config))
    assert 0 == result.returncode, result.stderr
    assert truth(new_world) == lake.published()
    manifest = lake.record(summary_run_id(result.stdout))
    listings = len(new_world.listable_compartments()) * len(new_world.regions)
    assert 3 * listings == manifest["rejects"]
    assert server.stats()["faults"]["cut"] > 0
    assert "new" == settled(lake, old_world, new_world, new_server, tmp_path)


# -- signals and kills ---------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_the_run_cleanly(
    lake: Lake,
    old_world: World,
    new_world: World,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
    signum: int,
    code: int,
) -> None:
    """SIGTERM (Airflow's) exits 143, SIGINT 130: the run's staging is removed, the old
    snapshot stays, no traceback."""
    server = hostile(latency_ms=100)
    process = start(
        "run", "--config", str(write_config(tmp_path, server, lake=lake.root, fetch=FETCH))
    )
    wait_for_requests(server, 5)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert code == process.returncode, err
    assert "Traceback" not in err
    assert "nothing published" in err
    assert truth(old_world) == lake.published()
    assert [] == lake.leftovers()
    assert "old" == settled(lake, old_world, new_world, server, tmp_path)


@full
def test_sigkill_of_the_command_at_random_points(
    lake: Lake,
    old_lake: Path,
    old_world: World,
    new_world: World,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    """20 SIGKILLs of the command and its workers, from start-up to the commit: every time
    the old snapshot or the new one, and the next run cleans up and succeeds."""
    server = hostile(latency_ms=20)
    rng = random.Random(15)
    found = Counter[str]()
    for trial in range(20):
        config = write_config(tmp_path / f"t{trial}", server, lake=lake.root, fetch=FETCH)
        process = start("run", "--config", str(config))
        time.sleep(rng.uniform(0.2, 3.0))
        kill_group(process)
        found[settled(lake, old_world, new_world, server, tmp_path / f"t{trial}")] += 1
        shutil.rmtree(lake.root)
        shutil.copytree(old_lake, lake.root)  # the next trial starts from the old snapshot
    assert 20 == sum(found.values())
    print(f"SIGKILL of the command: {dict(found)}")


@full
def test_sigkill_of_a_worker_at_random_points(
    lake: Lake,
    old_world: World,
    new_world: World,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    """10 SIGKILLs of a worker process mid-run: the run fails (exit 1, nothing published),
    the old snapshot stays, the next run succeeds."""
    server = hostile(latency_ms=20)
    rng = random.Random(16)
    for trial in range(10):
        folder = tmp_path / f"w{trial}"
        config = write_config(folder, server, lake=lake.root, fetch={**FETCH, "workers": 2})
        process = start("run", "--config", str(config))
        wait_for_requests(server, server.stats()["requests"] + rng.randint(1, 40))
        workers = worker_pids(process.pid)
        if workers:
            os.kill(rng.choice(workers), signal.SIGKILL)
        _, err = process.communicate(timeout=120)
        assert process.returncode in (0, 1), err
        if process.returncode == 1:
            assert "worker process" in err
            assert "went away" in err
        settled(lake, old_world, new_world, server, folder)


@full
@pytest.mark.parametrize(
    "fault", ["kill-before-exchange", "kill-after-exchange", "kill-between-renames"]
)
def test_sigkill_during_the_swap(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    tmp_path: Path,
    fault: str,
) -> None:
    """Killed at each point of the swap (an exchange, or two renames where the kernel cannot
    exchange): the next run or commit finds the old or the new snapshot, never none."""
    config = write_config(tmp_path, new_server, lake=lake.root, fetch=FETCH)
    result = cli("run", "--config", str(config), fault=fault)
    assert -signal.SIGKILL == result.returncode, result.stderr
    if fault == "kill-between-renames":
        assert not lake.partition.exists()  # between the two renames; repaired below
        repaired = cli("commit", "--config", str(config), "--run-id", "nothing-staged")
        assert 1 == repaired.returncode
        assert truth(old_world) == lake.published()
    found = settled(lake, old_world, new_world, new_server, tmp_path)
    assert ("new" if fault == "kill-after-exchange" else "old") == found


@full
def test_a_shard_rerun_killed_then_commit(
    lake: Lake,
    old_world: World,
    new_world: World,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    """Three shards staged; shard 1 re-run and killed after 0.9 s; commit publishes the
    finished attempt of every shard, verified, exact."""
    server = hostile(latency_ms=30)
    config = write_config(tmp_path, server, lake=lake.root, fetch=FETCH)
    for index in range(3):
        result = cli("run", "--config", str(config), "--shard", f"{index}/3", "--run-id", "r3")
        assert 0 == result.returncode, result.stderr
    process = start("run", "--config", str(config), "--shard", "1/3", "--run-id", "r3")
    time.sleep(0.9)
    kill_group(process)
    result = cli("commit", "--config", str(config), "--run-id", "r3")
    assert 0 == result.returncode, result.stderr
    assert truth(new_world) == lake.published()
    again = cli("commit", "--config", str(config), "--run-id", "r3")
    assert 0 == again.returncode
    assert "already published" in again.stderr
    assert "new" == settled(lake, old_world, new_world, server, tmp_path)


@full
def test_a_tampered_shard_file_stops_the_commit(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    tmp_path: Path,
) -> None:
    """A staged file cut short after its shard finished: commit exits 1 naming the shard and
    the file, and nothing changes."""
    config = write_config(tmp_path, new_server, lake=lake.root, fetch=FETCH)
    for index in range(2):
        result = cli("run", "--config", str(config), "--shard", f"{index}/2", "--run-id", "r2")
        assert 0 == result.returncode, result.stderr
    victim = next(lake.root.glob("_staging/r2/*/images/*/region=*/part-001-*.parquet"))
    victim.write_bytes(victim.read_bytes()[:-100])
    result = cli("commit", "--config", str(config), "--run-id", "r2")
    assert 1 == result.returncode
    assert "shard 1/2" in result.stderr
    assert victim.name in result.stderr
    assert truth(old_world) == lake.published()
    assert ("failed", False) == (lake.record("r2")["status"], lake.record("r2")["published"])
    # As a scheduler's retry would: the shard again, then the commit.
    result = cli("run", "--config", str(config), "--shard", "1/2", "--run-id", "r2")
    assert 0 == result.returncode, result.stderr
    result = cli("commit", "--config", str(config), "--run-id", "r2")
    assert 0 == result.returncode, result.stderr
    assert truth(new_world) == lake.published()
    assert "new" == settled(lake, old_world, new_world, new_server, tmp_path)


@full
@pytest.mark.parametrize("fault", ["enospc-data", "enospc-manifest", "enospc-success"])
def test_a_full_disk(
    lake: Lake,
    old_world: World,
    new_world: World,
    new_server: EmulatorServer,
    tmp_path: Path,
    fault: str,
) -> None:
    """No space left when writing data, the manifest or _SUCCESS: exit 1, the old snapshot
    stays, this run's staging is gone at once (not in 7 days)."""
    config = write_config(tmp_path, new_server, lake=lake.root, fetch={**FETCH, "workers": 0})
    result = cli("run", "--config", str(config), fault=fault)
    assert 1 == result.returncode, result.stderr
    assert "No space left on device" in result.stderr
    assert truth(old_world) == lake.published()
    assert [] == lake.leftovers()
    assert "old" == settled(lake, old_world, new_world, new_server, tmp_path)


@full
def test_a_stopped_worker_fails_the_run(
    lake: Lake,
    old_world: World,
    new_world: World,
    hostile: Callable[..., EmulatorServer],
    tmp_path: Path,
) -> None:
    """A worker stopped with SIGSTOP: its heartbeat stops, the run fails after
    fetch.worker_heartbeat_s instead of hanging, and publishes nothing."""
    server = hostile(latency_ms=20)
    config = write_config(
        tmp_path, server, lake=lake.root, fetch={**FETCH, "workers": 2, "worker_heartbeat_s": 3}
    )
    process = start("run", "--config", str(config))
    wait_for_requests(server, 10)
    workers = worker_pids(process.pid)
    assert workers
    os.kill(workers[-1], signal.SIGSTOP)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGCONT)
    assert 1 == process.returncode, err
    assert "stopped or hung" in err
    assert truth(old_world) == lake.published()
    assert "old" == settled(lake, old_world, new_world, server, tmp_path)
