"""The budget of responses in flight (``fetch.max_inflight_bytes``): the decoded bytes every
response of the fetching process holds at once stay under it whatever the concurrency; a
response that alone needs more fails its listing, the others wait for room and never for
each other in a circle."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from connector.emulator import Behaviour, EmulatorServer, build_world
from connector.limits import BodyReader, Limits, ResponseBudget, ResponseTooLarge
from connector.oci.client import OciClient
from tests.helpers import write_config

MiB = 1 << 20


async def _respond(budget: ResponseBudget, size: int, step: int, log: list[int]) -> None:
    """One response of ``size`` bytes read ``step`` at a time, then held a moment (in the
    stream to the workers) and released."""
    lease = budget.lease()
    try:
        taken = 0
        while taken < size:
            piece = min(step, size - taken)
            await lease.take(piece)
            taken += piece
            log.append(budget.used)
            await anyio.lowlevel.checkpoint()
        lease.done()
        await anyio.lowlevel.checkpoint()
    finally:
        lease.release()


def test_responses_wait_for_room_and_never_deadlock() -> None:
    """64 responses of up to 40 MiB at once in a 64 MiB budget whose responses may grow to
    32 MiB: all finish (no circle of waiters), the bytes held never pass the budget."""
    rng = random.Random(7)
    budget = ResponseBudget(64 * MiB, 32 * MiB)
    sizes = [rng.choice([MiB // 2, 4 * MiB, 20 * MiB, 31 * MiB]) for _ in range(64)]
    used: list[int] = []

    async def main() -> None:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                for size in sizes:
                    group.start_soon(_respond, budget, size, MiB, used)

    anyio.run(main)
    assert max(used) <= 64 * MiB
    assert budget.peak <= 64 * MiB
    assert 0 == budget.used
    assert max(used) > 32 * MiB  # several responses were read side by side


def test_gzip_bombs_read_side_by_side_are_refused_within_the_budget() -> None:
    """64 readers of gzip bombs (24 MiB of zeros each) at once, refused at 8 MiB decoded, in
    a 16 MiB budget: each is refused naming max_decompressed_bytes (none waits forever), and
    the decoded bytes held never pass the budget."""
    from tests.helpers import gzip_of_zeros

    bomb = gzip_of_zeros(24 * MiB)
    limits = Limits(max_decompressed_bytes=8 * MiB, max_inflight_bytes=16 * MiB)
    budget = ResponseBudget(limits.max_inflight_bytes, limits.max_decompressed_bytes)
    refused: list[str] = []

    async def read() -> None:
        lease = budget.lease()
        reader = BodyReader("gzip", limits, lease)
        try:
            for start in range(0, len(bomb), 1 << 16):
                await reader.receive(bomb[start : start + (1 << 16)])
            await reader.complete()
        except ResponseTooLarge as exc:
            refused.append(str(exc))
        finally:
            lease.release()

    async def main() -> None:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for _ in range(64):
                    group.start_soon(read)

    anyio.run(main)
    assert 64 == len(refused)
    assert all("max_decompressed_bytes" in reason for reason in refused)
    assert 8 * MiB < budget.peak <= 16 * MiB
    assert 0 == budget.used


def test_a_response_alone_over_the_budget_is_refused_the_others_finish() -> None:
    """The budget is smaller than max_decompressed_bytes: the one response that needs more
    than the whole budget fails naming fetch.max_inflight_bytes; the others all finish."""
    budget = ResponseBudget(8 * MiB, 128 * MiB)
    used: list[int] = []
    failures: list[str] = []

    async def big() -> None:
        try:
            await _respond(budget, 9 * MiB, MiB, used)
        except ResponseTooLarge as exc:
            failures.append(str(exc))

    async def main() -> None:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(big)
                for _ in range(16):
                    group.start_soon(_respond, budget, 3 * MiB, MiB // 4, used)

    anyio.run(main)
    assert 1 == len(failures)
    assert "fetch.max_inflight_bytes = 8388608" in failures[0]
    assert max(used) <= 8 * MiB
    assert 0 == budget.used


def test_page_tokens_are_remembered_as_digests() -> None:
    """The loop protection keeps 16 bytes a token, not the 7 KB token: 1,000 pages of 7 KB
    tokens, then a repeat, which is still recognised."""
    tokens = [f"{n:06d}" + "t" * 7000 for n in range(1000)]

    class Pages(OciClient):
        async def request(self, method, url, params=None, **kw):  # type: ignore[no-untyped-def]
            from connector.oci.client import Response

            index = int(params.get("page", "0" * 6)[:6]) if params and "page" in params else -1
            following = tokens[index + 1] if index + 1 < len(tokens) else tokens[0]
            return Response(200, b"[]", None, following, 0.0, 1)

    seen_sizes: list[int] = []
    errors: list[str] = []

    async def main() -> None:
        from connector.errors import PaginationError

        client = Pages(signer=None, options=None)  # type: ignore[arg-type]
        pages = client.paginate("https://x/images", {})
        try:
            async for _ in pages:
                frame = pages.ag_frame  # type: ignore[attr-defined]
                if frame is not None:
                    seen = frame.f_locals["seen"]
                    seen_sizes.append(sum(len(item) for item in seen))
        except PaginationError as exc:
            errors.append(str(exc))

    anyio.run(main)
    assert 1 == len(errors)
    assert "repeated page token" in errors[0]
    assert 1000 <= len(seen_sizes)
    assert seen_sizes[-1] <= 16 * 1000


# -- against the emulator: a gzip bomb on every listing ----------------------------------------


@pytest.fixture(scope="module")
def bombing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    """40 compartments in 2 regions, every ListImages page a gzip bomb of 48 MiB."""
    world = build_world(
        seed=3,
        compartments=40,
        regions=("us-ashburn-1", "eu-frankfurt-1"),
        platform_images=5,
        custom_scale=0.2,
    )
    folder = tmp_path_factory.mktemp("oci-bomb")
    with EmulatorServer(world, Behaviour(gzip_bomb_mib=48), oci_config_dir=folder) as server:
        yield server


def _peak_rss_mib(config: Path, tmp_path: Path) -> tuple[int, float, str]:
    """Run the command (workers in a thread: one process); its exit code, peak RSS and
    stderr. The peak is the kernel's high-water mark of the command's own memory
    (``VmHWM``), read while it runs: ``wait4``'s ``ru_maxrss`` would also count the test
    process's size at the fork, which after a long test session is gigabytes."""
    err = tmp_path / "stderr"
    status = Path("/proc")
    peak_kib = 0
    with open(err, "w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connector",
                "--log-level",
                "warning",
                "run",
                "--config",
                str(config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        while process.poll() is None:
            try:
                text = (status / str(process.pid) / "status").read_text()
            except OSError:
                break  # gone between the poll and the read
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
            time.sleep(0.02)
        process.wait()
    return process.returncode, peak_kib / 1024, err.read_text()


BUDGET_MIB = 64
ALLOWANCE_MIB = 200
"""The interpreter, pyarrow, aiohttp and the run's own state, measured at about 150 MiB with
responses that are small (``test_the_allowance_is_the_size_of_a_small_run``)."""


def _config(tmp_path: Path, server: EmulatorServer, **fetch: int) -> Path:
    return write_config(
        tmp_path,
        server,
        fetch={
            "concurrency": 64,
            "workers": 0,
            "max_attempts": 1,
            "max_decompressed_bytes": 32 * MiB,
            **fetch,
        },
        output={"allow_partial": True},
    )


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/PID/status is Linux's")
def test_a_gzip_bomb_on_every_listing_stays_within_the_budget(
    bombing: EmulatorServer, tmp_path: Path
) -> None:
    """80 listings at concurrency 64, each page inflating to 48 MiB, refused at 32 MiB each:
    without a budget 64 such responses may be held at once (2 GiB). With a budget of 64 MiB
    the peak RSS of the run stays under the budget plus the allowance; every listing fails
    with its reason, the run exits 1."""
    config = _config(tmp_path, bombing, max_inflight_bytes=BUDGET_MIB * MiB)
    code, peak, stderr = _peak_rss_mib(config, tmp_path)
    print(f"peak RSS {peak:.0f} MiB")
    assert 1 == code, stderr
    assert "max_decompressed_bytes" in stderr
    assert "Traceback" not in stderr
    assert peak < BUDGET_MIB + ALLOWANCE_MIB, f"peak RSS {peak:.0f} MiB"


@pytest.mark.reliability
@pytest.mark.skipif(sys.platform != "linux", reason="/proc/PID/status is Linux's")
def test_without_the_budget_the_same_bombs_take_far_more(
    bombing: EmulatorServer, tmp_path: Path
) -> None:
    """The control: a budget of 4 GiB (none, in effect) lets the same run hold several
    bombs at once, well past what the 64 MiB budget allows."""
    config = _config(tmp_path, bombing, max_inflight_bytes=4096 * MiB)
    code, peak, stderr = _peak_rss_mib(config, tmp_path)
    print(f"peak RSS {peak:.0f} MiB")
    assert 1 == code, stderr
    assert peak > BUDGET_MIB + ALLOWANCE_MIB, f"peak RSS {peak:.0f} MiB"


def test_budget_of_the_client_comes_from_the_settings() -> None:
    """``fetch.max_inflight_bytes`` is the client's budget; a response may claim at most
    ``max_decompressed_bytes`` of it."""
    client = OciClient(
        signer=None,  # type: ignore[arg-type]
        options=None,
    )
    assert Limits().max_inflight_bytes == client.budget.total
    assert Limits().max_decompressed_bytes + 1 == client.budget.claim
