"""Worker processes: what they write, and what happens when one fails or disappears."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio
import orjson
import pyarrow.parquet as pq
import pytest

from connector import (
    cli,
    config,
    errors,
    lean,
    machine,
)
from connector.emulator import EmulatorServer, build_world
from connector.errors import WorkerError
from connector.lake.manifest import RunOutcome
from connector.oci import auth
from connector.pages import Page, RunInfo, WorkItem
from connector.pipeline import Export
from connector.prepare import prepare
from connector.sinks import SinkOptions
from connector.workers import boot, coordinator, spawn
from connector.workers.page import Closed, ListingResult, PageWorker, shared_budget
from tests.helpers import worker_pids, write_config
from tests.worker_support import setup


def listings(count: int) -> list[list[Page]]:
    """``count`` listings of the home region, as pages of 50 records."""
    world = build_world(seed=3, compartments=count)
    region = world.home_region
    result = []
    for compartment in world.listable_compartments()[:count]:
        records = [i.json for i in world.listing(region, compartment.id)]
        pages = [
            Page(
                b"[" + b",".join(records[k : k + 50]) + b"]",
                region,
                compartment.id,
                n + 1,
                datetime(2026, 11, 27, tzinfo=UTC),
                f"req-{n}",
            )
            for n, k in enumerate(range(0, len(records), 50))
        ]
        result.append(pages)
    return result


def raised(main: Callable[[], Awaitable[None]]) -> list[BaseException]:
    """The exceptions ``main`` ends with (task groups wrap them)."""
    try:
        anyio.run(main)
    except BaseExceptionGroup as group:
        return list(errors.leaves(group))
    except BaseException as exc:
        return [exc]
    return []


async def feed(pool: coordinator.Workers, groups: list[list[Page]]) -> None:
    for pages in groups:
        for page in pages:
            await pool.page(page)
        first = pages[0]
        await pool.end(WorkItem(first.region, first.compartment_id), len(pages), None)


def test_processes_write_every_row_once(tmp_path: Path) -> None:
    """Two processes: each listing's rows land once, platform images once per region, and the
    results report every listing."""
    groups = listings(12)
    results: list[ListingResult] = []
    pool = coordinator.create(setup(tmp_path), 2, results.append)

    async def main() -> Closed:
        async with anyio.create_task_group() as group:
            group.start_soon(pool.serve)
            await feed(pool, groups)
            closed = await pool.close()
        return closed

    closed = anyio.run(main)
    ids = [
        i
        for f in closed.files
        for i in pq.read_table(
            f"{setup(tmp_path).layout.staged_partition}/{f.path}", columns=["id"]
        )["id"].to_pylist()
    ]
    expected = {r["id"] for pages in groups for p in pages for r in orjson.loads(p.body)}
    assert set(ids) == expected
    assert len(ids) == len(set(ids))  # platform images once, nothing twice
    assert len(results) == len(groups)
    assert sum(closed.donated.values()) == sum(
        r.platform_rows for r in results if r.item in closed.donated
    )
    assert len(ids) == sum(r.rows for r in results) + sum(closed.donated.values())
    assert {f.path.rsplit("/", 1)[1] for f in closed.files} == {
        "part-00000.parquet",
        "part-00001.parquet",
    }


def test_flush_writes_the_rows_held_before_close(tmp_path: Path) -> None:
    """`Flush` (every listing has started) makes a worker process write the rows it holds: the
    file has a row group of the listings before it and one of those after, and every row."""
    groups = listings(6)
    pool = coordinator.create(setup(tmp_path, "every"), 1, lambda result: None)

    async def main() -> Closed:
        async with anyio.create_task_group() as group:
            group.start_soon(pool.serve)
            await feed(pool, groups[:4])
            await pool.flush()
            await feed(pool, groups[4:])
            closed = await pool.close()
        return closed

    closed = anyio.run(main)
    [written] = closed.files
    parquet = pq.ParquetFile(f"{setup(tmp_path).layout.staged_partition}/{written.path}")
    before = sum(len(orjson.loads(p.body)) for pages in groups[:4] for p in pages)
    after = sum(len(orjson.loads(p.body)) for pages in groups[4:] for p in pages)
    sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    assert [before, after] == sizes


def test_reap_waits_for_the_processes_that_close_let_go(tmp_path: Path) -> None:
    """`close` returns once the workers have closed their files; their exit overlaps the commit
    and `reap` collects it (a run reaps its workers before it ends)."""
    pool = coordinator.create(setup(tmp_path), 2, lambda result: None)
    assert isinstance(pool, coordinator.ProcessWorkers)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(pool.serve)
            await feed(pool, listings(2))
            await pool.close()
        await pool.reap()

    anyio.run(main)
    assert pool._launched is not None
    assert 0 == pool._launched.process.wait(0)  # reaped already: no wait


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_get_their_allocator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker processes start with glibc's settings for parsing pages (``lean``), except
    where the user set one."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    launched = spawn.launch(1)  # this process is not the tool's own: a boot interpreter
    try:
        assert isinstance(launched.process, subprocess.Popen)
        process = Path(f"/proc/{launched.process.pid}")
        deadline = time.monotonic() + 30
        # Until the child has started the boot module, /proc shows the environment it forked with.
        while spawn.BOOT_MODULE.encode() not in (process / "cmdline").read_bytes():
            assert time.monotonic() < deadline, "the boot process did not start"
            time.sleep(0.01)
        raw = (process / "environ").read_bytes()
        environ = dict(item.partition("=")[::2] for item in raw.decode().split("\0") if item)
    finally:
        spawn.abandon(launched)
    assert environ["MALLOC_MMAP_THRESHOLD_"] == lean.WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"]
    assert environ["MALLOC_TRIM_THRESHOLD_"] == "12345"


def test_a_killed_worker_fails_the_run(tmp_path: Path) -> None:
    """A worker that dies (OOM killer, say) is a WorkerError, not a hang or a partial result."""
    groups = listings(4)
    pool = coordinator.create(setup(tmp_path), 2, lambda result: None)
    assert isinstance(pool, coordinator.ProcessWorkers)

    async def main() -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(pool.serve)
                await pool.start()  # returns once every worker is ready
                for worker in pool._processes:
                    assert worker.pid is not None
                    os.kill(worker.pid, signal.SIGKILL)
                await feed(pool, groups)
                await pool.close()
        finally:
            await pool.discard()

    assert any(isinstance(e, WorkerError) for e in raised(main))


def test_discard_outlasts_every_worker_when_worker_0_was_killed(tmp_path: Path) -> None:
    """Worker 0 is the boot process, the others' parent: once it is killed they run on,
    orphans, and one still discarding would write into the staging the run removes next (on
    S3, pyarrow puts back the folder marker of each file it deletes). ``discard`` returns only
    when every worker is gone: here worker 1 is stopped, so it is killed when the wait ends."""
    pool = coordinator.create(setup(tmp_path), 2, lambda result: None)
    assert isinstance(pool, coordinator.ProcessWorkers)
    orphan: list[int] = []

    async def main() -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(pool.serve)
                await pool.start()
                boot, other = (worker.pid for worker in pool._processes)
                assert boot is not None
                assert other is not None
                assert pool._launched is not None
                assert boot == pool._launched.process.pid
                orphan.append(other)
                os.kill(other, signal.SIGSTOP)  # busy: it does not exit when its socket closes
                os.kill(boot, signal.SIGKILL)
                await feed(pool, listings(2))
                await pool.close()
        finally:
            began = time.monotonic()
            await pool.discard()
            waited.append(time.monotonic() - began)

    waited: list[float] = []
    assert any(isinstance(e, WorkerError) for e in raised(main))
    assert not machine.process_running(orphan[0])
    assert waited[0] >= 4.5  # discard's wait (5 s) for the stopped worker, then its SIGKILL


def test_a_worker_error_is_reported(tmp_path: Path) -> None:
    """A worker that cannot write (here: its staging path is a file) reports why, and the
    coordinator raises it."""
    blocker = tmp_path / "_staging"
    blocker.write_text("not a directory")
    pool = coordinator.create(setup(tmp_path), 1, lambda result: None)

    async def main() -> None:
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(pool.serve)
                await feed(pool, listings(1))
                await pool.close()
        finally:
            await pool.discard()

    errors = raised(main)
    assert any(isinstance(e, WorkerError) and "worker 0 failed" in str(e) for e in errors), errors


def test_row_groups_share_one_writers_budget() -> None:
    """The worker processes share one budget of 48k rows: 24k each for two; more workers do
    not go below 16k rows."""
    options = SinkOptions()
    assert 48 * 1024 == shared_budget(options, 1).row_group_rows
    assert 24 * 1024 == shared_budget(options, 2).row_group_rows
    assert 16 * 1024 == shared_budget(options, 3).row_group_rows
    assert 16 * 1024 == shared_budget(options, 4).row_group_rows
    assert 16 * 1024 == shared_budget(options, 8).row_group_rows


def test_a_stalled_worker_stops_the_fetching(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Backpressure: while the only worker is stopped (SIGSTOP), its socket and the bounded
    queue fill and the fetch tasks wait; no request is sent until it runs again, and then
    the run completes."""
    world = build_world(
        seed=5,
        compartments=60,
        regions=("us-ashburn-1", "eu-frankfurt-1"),
        platform_images=200,
        custom_scale=0.1,
    )
    server = make_emulator(world)
    path = write_config(tmp_path, server, fetch={"workers": 1, "page_size": 100, "concurrency": 4})
    settings = config.load(path, [])
    export = Export(prepare(settings, auth.resolve_credentials(settings)))
    seen: list[int] = []

    async def main() -> RunOutcome:
        await export.workers.start()
        assert isinstance(export.workers, coordinator.ProcessWorkers)
        pid = export.workers._processes[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            async with anyio.create_task_group() as group:
                outcome: list[RunOutcome] = []

                async def run() -> None:
                    outcome.append(await export.run())

                group.start_soon(run)
                for _ in range(2):
                    await anyio.sleep(1.0)
                    seen.append(server.stats()["requests"])
                os.kill(pid, signal.SIGCONT)
        finally:
            with contextlib.suppress(ProcessLookupError):  # it may have finished already
                os.kill(pid, signal.SIGCONT)
        return outcome[0]

    outcome = anyio.run(main)
    total = server.stats()["requests"]
    assert 0 == outcome.exit_code
    assert seen[0] == seen[1], "requests went on while the worker could take no page"
    assert seen[0] < total / 2, f"stalled after {seen[0]} of {total} requests"


def test_workers_that_cannot_start_fail_the_run_cleanly(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No interpreter to start workers with: exit 1 with a message that names the way out,
    nothing published, no traceback."""
    server = make_emulator(build_world(seed=5, compartments=3))
    path = write_config(tmp_path, server, fetch={"workers": 2})
    monkeypatch.setattr("sys.executable", str(tmp_path / "no-such-python"))
    assert 1 == cli.main(["--log-level", "warning", "run", "--config", str(path)])
    err = capsys.readouterr().err
    assert "cannot start worker processes" in err
    assert "fetch.workers = 0" in err
    assert "Traceback" not in err
    assert not (tmp_path / "lake" / "images").exists()


def _run_under_way(server: EmulatorServer, folder: Path, requests: int) -> subprocess.Popen[str]:
    """`oci-images run` with two workers and pages of 100, once the emulator has served
    ``requests`` (or after 20 s)."""
    path = write_config(folder, server, fetch={"workers": 2, "page_size": 100})
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "--log-level", "warning", "run", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while server.stats()["requests"] < requests and time.monotonic() < deadline:
        time.sleep(0.02)
    return process


def test_a_worker_killed_mid_run_fails_the_run_with_its_reason(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """The OOM killer takes a worker mid-run: `oci-images run` exits 1 naming the worker (no
    traceback), the run's staging is removed, and nothing is published."""
    world = build_world(seed=5, compartments=60, platform_images=300, custom_scale=0.1)
    process = _run_under_way(make_emulator(world, latency_ms=20), tmp_path, requests=20)
    workers = worker_pids(process.pid, children_only=True)
    assert workers, "the command line's workers are its children"
    os.kill(workers[0], signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert 1 == process.returncode
    assert "oci-images: worker process 0 went away mid-run" in err
    assert "WorkerError" not in err
    assert "Traceback" not in err
    assert not (tmp_path / "lake" / "images").exists()
    assert not (tmp_path / "lake" / "_staging").exists()


def test_the_command_line_forks_its_workers_from_itself(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """`oci-images run` forks its first worker from its own process, which has imported pyarrow
    already, and that worker forks the second: both are named ``boot.NAME``, and no boot
    interpreter starts (it would import everything again, about 0.25 s of CPU a run). The run
    publishes as usual."""
    world = build_world(seed=5, compartments=40, platform_images=300, custom_scale=0.1)
    process = _run_under_way(make_emulator(world, latency_ms=20), tmp_path, requests=10)

    def children(pid: str) -> list[str]:
        found = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True)
        return found.stdout.split()

    deadline = time.monotonic() + 20  # the first worker forks the second once it has imported
    while len(found := children(str(process.pid))) != 1 or not children(found[0]):
        assert time.monotonic() < deadline, found
        time.sleep(0.02)
    (first,) = found
    (second,) = children(first)
    names = [Path(f"/proc/{pid}/comm").read_text().strip() for pid in (first, second)]
    command = Path(f"/proc/{first}/cmdline").read_bytes()
    _, err = process.communicate(timeout=60)
    assert 0 == process.returncode, err
    assert [boot.NAME, boot.NAME] == names
    assert spawn.BOOT_MODULE.encode() not in command
    assert pq.read_table(tmp_path / "lake" / "images").num_rows > 0


@pytest.mark.parametrize("mode", ["once", "skip", "every"])
def test_platform_images_are_converted_only_where_they_may_be_kept(
    tmp_path: Path, mode: str
) -> None:
    """Under `once` a worker converts platform images only until it holds a region's candidate
    listing, under `skip` never, under `every` always; it writes the same rows, and reports the
    same listings, as a worker that converts every record and drops platform rows after."""
    from connector.workers import normalize

    groups = listings(6)

    def export(folder: Path, convert_all: bool) -> tuple[list[bool], list[str], list[int]]:
        worker = PageWorker(setup(folder, mode))
        flags: list[bool] = []

        def spy(page: Page, run: RunInfo, *, platform: bool = True) -> normalize.Normalized:
            flags.append(platform)
            return normalize.normalize_page(page, run, platform=platform or convert_all)

        worker._normalize = spy
        rows = []
        for pages in groups:
            for page in pages:
                worker.page(page)
            item = WorkItem(pages[0].region, pages[0].compartment_id)
            rows.append(worker.end(item, len(pages), None).rows)
        donate = frozenset({groups[0][0].region}) if mode == "once" else frozenset()
        closed = worker.close(donate)
        partition = setup(folder, mode).layout.staged_partition
        ids = [
            str(i)
            for f in closed.files
            for i in pq.read_table(f"{partition}/{f.path}", columns=["id"])["id"].to_pylist()
        ]
        return flags, sorted(ids), rows

    flags, ids, rows = export(tmp_path / "lean", convert_all=False)
    _, reference_ids, reference_rows = export(tmp_path / "full", convert_all=True)
    first_listing = len(groups[0])
    assert {
        "once": [True] * first_listing + [False] * (len(flags) - first_listing),
        "skip": [False] * len(flags),
        "every": [True] * len(flags),
    }[mode] == flags
    assert reference_ids == ids
    assert reference_rows == rows
    assert ids
