"""The scenarios S1–S4; each returns result rows for the report."""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# -- processes --------------------------------------------------------------------------------


class EmulatorProcess:
    """``oci-images emulator`` in its own process, on a free loopback port."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "connector",
                "emulator",
                "--port",
                "0",
                "--oci-config-dir",
                str(folder / "oci"),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.url = line.removeprefix("listening on ")
        self.config = folder / "oci" / "config"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_emulator/stats", timeout=10) as response:
            result: dict[str, Any] = orjson.loads(response.read())
            return result

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/_emulator/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@dataclass(frozen=True, slots=True)
class Measured:
    """One measured process."""

    wall_s: float
    peak_rss_mb: float
    peak_tree_rss_mb: float
    returncode: int
    stdout: str
    cpu_s: float = 0.0
    """CPU time (user + system) of the process and every descendant it waited for."""


def _tree_rss_kb(pid: int) -> int:
    """Proportional set size (PSS) of a process and all its descendants, from /proc.

    PSS splits shared pages (libraries mapped by every worker) between the processes that map
    them, so the sum is the tree's real footprint; a sum of RSS would count them once per process.
    """
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                total += next(
                    (int(line.split()[1]) for line in rollup if line.startswith("Pss:")), 0
                )
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending += [int(c) for c in children.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def measure(command: Sequence[str], memory: bool = True) -> Measured:
    """Run a process: wall time; peak RSS from os.wait4 (the largest single process) and the
    peak of the whole process tree's RSS, sampled every 20 ms (worker processes included).

    ``memory=False`` leaves the sampling out, for timings (S1, S2): each sample reads every
    process's ``smaps_rollup``, about 1.3 ms of kernel time a process, so a tree of three
    processes lost a fifth of a core to it, and a single process a sixteenth, on a machine of
    two. The peaks are then 0.
    """
    return measure_all([command], memory=memory)[0]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_all(
    commands: Sequence[Sequence[str]], interval_s: float = 0.02, memory: bool = True
) -> list[Measured]:
    """Run processes side by side (shards of one run): each one's wall time, and the peak of
    the PSS of all their trees together, sampled every ``interval_s``. CPU time is for the
    whole group (``getrusage`` cannot tell waited children apart); it goes to the first."""
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in commands]
        cpu_before = _children_cpu_s()
        started = time.perf_counter()
        processes = [
            subprocess.Popen(list(c), stdout=out, stderr=subprocess.DEVNULL, cwd=ROOT)
            for c, out in zip(commands, outs, strict=True)
        ]
        ended: dict[int, float] = {}
        tree_peak = 0
        while len(ended) < len(processes):
            if memory:
                tree_peak = max(tree_peak, sum(_tree_rss_kb(p.pid) for p in processes))
                time.sleep(interval_s)
            else:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    processes[min(set(range(len(processes))) - ended.keys())].wait(interval_s)
            for n, process in enumerate(processes):
                if n not in ended and process.poll() is not None:
                    ended[n] = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = _children_cpu_s() - cpu_before
        results = []
        for n, (process, out) in enumerate(zip(processes, outs, strict=True)):
            out.seek(0)
            results.append(
                Measured(
                    ended[n],
                    usage.ru_maxrss / 1024,
                    tree_peak / 1024,
                    process.returncode,
                    out.read(),
                    cpu if n == 0 else 0.0,
                )
            )
        return results


def connector_config(
    folder: Path,
    emulator: EmulatorProcess,
    regions: Sequence[str] = ("us-ashburn-1",),
    **fetch: Any,
) -> Path:
    options = {"concurrency": 16, "page_size": 1000, "platform_images": "every"} | fetch
    if "BENCH_WORKERS" in os.environ:
        options["workers"] = int(os.environ["BENCH_WORKERS"])
    lines = [
        "[oci]",
        f'config_file = "{emulator.config}"',
        f'endpoint = "{emulator.url}/{{region}}"',
        # Search as the service of its own it is (query.<region>...), with its own rate limit.
        f'search_endpoint = "{emulator.url}/{{region}}/query"',
        f"regions = {orjson.dumps(list(regions)).decode()}",
        "[fetch]",
        *(f"{k} = {orjson.dumps(v).decode()}" for k, v in options.items()),
        "[output]",
        f'uri = "{folder / "lake"}"',
    ]
    path = folder / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def connector_command(config: Path, command: str = "run", *args: str) -> list[str]:
    return [PYTHON, "-m", "connector", "--log-level", "error", command, "--config", str(config),
            *(["--no-progress"] if command == "run" else []), *args]  # fmt: skip


def run_connector(config: Path, memory: bool = True) -> Measured:
    result = measure(connector_command(config), memory)
    if result.returncode != 0:
        raise RuntimeError(f"connector run failed with exit {result.returncode}: {result.stdout}")
    return result


def run_bare(emulator: EmulatorProcess) -> Measured:
    result = measure(
        [PYTHON, "-m", "benchmarks.bare_client", "--oci-config", str(emulator.config),
         "--endpoint", f"{emulator.url}/us-ashburn-1", "--concurrency", "16"],
        memory=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"bare client failed with exit {result.returncode}")
    return result


def run_sdk(emulator: EmulatorProcess, folder: Path, threads: int) -> Measured:
    result = measure(
        [PYTHON, "-m", "benchmarks.sdk_baseline", "--oci-config", str(emulator.config), "--endpoint",
         f"{emulator.url}/us-ashburn-1", "--threads", str(threads), "--out", str(folder / f"sdk{threads}.parquet")],
        memory=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"SDK baseline failed with exit {result.returncode}")
    return result


def oci_cli() -> Path | None:
    """The OCI CLI's executable: ``$OCI_CLI``, or the benchmark-only install (``make
    bench-tools``; it pins versions that conflict with the project's lock, so it has its own
    virtual environment)."""
    configured = os.environ.get("OCI_CLI")
    candidates = [Path(configured)] if configured else []
    candidates.append(ROOT / ".venv-oci-cli" / "bin" / "oci")
    return next((c for c in candidates if c.is_file()), None)


def oci_cli_loop(executable: Path, emulator: EmulatorProcess, region: str) -> str:
    """The shell loop many users run today: list the compartments, then ``oci compute image
    list --all`` for the root and each of them, one after the other, output to a file."""
    tenancy = next(
        line.split("=", 1)[1].strip()
        for line in emulator.config.read_text().splitlines()
        if line.startswith("tenancy")
    )
    endpoint = f"{emulator.url}/{region}"
    common = f'--config-file "{emulator.config}" --endpoint "{endpoint}"'
    return (
        f"oci={executable}; out=$(mktemp -d); trap 'rm -rf \"$out\"' EXIT\n"
        f"for c in {tenancy} $($oci iam compartment list {common} --all"
        f" --compartment-id {tenancy} --compartment-id-in-subtree true"
        " --lifecycle-state ACTIVE --access-level ACCESSIBLE"
        " --query 'data[].id' --raw-output | tr -d '[],\"'); do\n"
        f'  $oci compute image list {common} --all --compartment-id "$c" > "$out/$c.json"'
        " || exit 1\n"
        "done\n"
    )


def run_oci_cli(emulator: EmulatorProcess, region: str = "us-ashburn-1") -> Measured | None:
    executable = oci_cli()
    if executable is None:
        return None
    script = oci_cli_loop(executable, emulator, region)
    quiet = "OCI_CLI_SUPPRESS_FILE_PERMISSIONS_WARNING=True"  # the emulator's key file is 0644
    result = measure(["env", quiet, "bash", "-c", script])
    if result.returncode != 0:
        raise RuntimeError(f"the OCI CLI loop failed with exit {result.returncode}")
    return result


# -- results ----------------------------------------------------------------------------------


def row(
    scenario: str,
    name: str,
    values: Sequence[float],
    unit: str = " s",
    fmt: str = ".2f",
    goal: str = "",
    met: bool | None = None,
) -> dict[str, Any]:
    return {
        "id": scenario,
        "name": name,
        "median": statistics.median(values),
        "min": min(values) if len(values) > 1 else None,
        "max": max(values) if len(values) > 1 else None,
        "values": list(values),
        "unit": unit,
        "fmt": fmt,
        "goal": goal,
        "met": met,
    }


def pages_listed(stats: dict[str, Any]) -> int:
    return int(sum(stats["listed_compartments"].values()))


# -- S1: end to end, 181 compartments, 50 ms ± 50 % ---------------------------------------------

# The data the S1 figures were measured on (the emulator's CLI now defaults to the realistic
# data set with 150 platform images per listing, and to OCI's typed defined-tag values, which
# the SDK baseline's pandas-free Parquet writing cannot infer a type for).
S1_DATA = ("--dataset", "awkward", "--platform-images", "60", "--no-oci-extras")
S1_WORLD = (
    "--seed",
    "12",
    "--compartments",
    "180",
    *S1_DATA,
    "--latency-ms",
    "50",
    "--jitter",
    "0.5",
)


def s1(full: bool, repeat: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as temp, EmulatorProcess(Path(temp), *S1_WORLD) as emulator:
        folder = Path(temp)
        config = connector_config(folder, emulator)
        ours, bare, floor_ratios, sdk16, sdk1, cli = [], [], [], [], [], []
        ours_cpu, bare_cpu = [], []
        pages = 0
        # One run of each, not measured: the disk cache warms for both, and the lake gets the
        # snapshot a scheduled run finds from the day before (whose page counts order the
        # listings; a lake's very first run has none).
        emulator.reset()
        run_connector(config, memory=False)
        run_bare(emulator)
        for _ in range(repeat):
            # Alternated run by run, so that both see the same moment of a noisy machine.
            emulator.reset()
            connector_run = run_connector(config, memory=False)
            pages = pages_listed(emulator.stats())
            bare_run = run_bare(emulator)
            ours.append(connector_run.wall_s)
            bare.append(bare_run.wall_s)
            ours_cpu.append(connector_run.cpu_s)
            bare_cpu.append(bare_run.cpu_s)
            floor_ratios.append(ours[-1] / bare[-1])
        for _ in range(repeat if full else max(1, repeat - 2)):  # the SDK takes 16 s a run
            sdk16.append(run_sdk(emulator, folder, 16).wall_s)
        if full:
            sdk1 = [run_sdk(emulator, folder, 1).wall_s for _ in range(2)]
            measured = run_oci_cli(emulator)  # once: about 1 s per compartment
            cli = [measured.wall_s] if measured else []
    bound = pages * 0.050 / 16
    ratio = statistics.median(sdk16) / statistics.median(ours)
    floor = statistics.median(floor_ratios)
    rows = [
        row("S1", f"connector, end to end ({pages} pages, incl. start-up)", ours),
        row("S1", "bare client: sign and fetch every page, discard it", bare),
        row(
            "S1",
            "connector ÷ bare client (run by run)",
            floor_ratios,
            "×",
            ".2f",
            "≤ 1.15×",
            floor <= 1.15,
        ),
        row(
            "S1",
            "connector CPU per run: user + system, all its processes",
            ours_cpu,
            " s",
            ".2f",
            "≤ 1.4 s",
            statistics.median(ours_cpu) <= 1.4,
        ),
        row("S1", "bare client CPU per run", bare_cpu, " s", ".2f"),
        row("S1", "official SDK, 16 threads, then Parquet", sdk16),
    ]
    if sdk1:
        rows.append(row("S1", "official SDK, sequential, then Parquet", sdk1))
    if cli:
        rows.append(row("S1", "OCI CLI in a shell loop, `--all` per compartment (once)", cli))
        rows.append(
            row(
                "S1",
                "speed-up over the OCI CLI loop",
                [cli[0] / statistics.median(ours)],
                "×",
                ".0f",
            )
        )
    rows += [
        row("S1", "speed-up over SDK + 16 threads", [ratio], "×", ".1f", "≥ 10×", ratio >= 10),
        row(
            "S1",
            "the most any client could show here: SDK ÷ bare client",
            [statistics.median(sdk16) / statistics.median(bare)],
            "×",
            ".1f",
        ),
        row("S1", "network bound: pages × 50 ms ÷ 16", [bound]),
        row("S1", "connector ÷ network bound", [statistics.median(ours) / bound], "×", ".2f"),
    ]
    return rows


# -- S2: throttled at 20 req/s, burst 10, no Retry-After -----------------------------------------


def s2(full: bool, repeat: int) -> list[dict[str, Any]]:
    world = (*S1_WORLD, "--rate", "20", "--burst", "10")
    walls, ratios, shares = [], [], []
    sdk16: list[float] = []
    with tempfile.TemporaryDirectory() as temp, EmulatorProcess(Path(temp), *world) as emulator:
        folder = Path(temp)
        config = connector_config(folder, emulator)
        for _ in range(repeat):
            emulator.reset()
            wall = run_connector(config, memory=False).wall_s
            stats = emulator.stats()
            ok = stats["status"].get("200", 0)
            bound = (ok - 10) / 20
            walls.append(wall)
            ratios.append(wall / bound)
            shares.append(100 * stats["throttled"] / stats["requests"])
        if full:
            for _ in range(2):
                emulator.reset()
                sdk16.append(run_sdk(emulator, folder, 16).wall_s / bound)
    rows = [
        row("S2", "connector wall, throttled", walls),
        row(
            "S2",
            "connector ÷ bound (requests − burst) ÷ rate",
            ratios,
            "×",
            ".3f",
            "≤ 1.15×",
            statistics.median(ratios) <= 1.15,
        ),
        row(
            "S2",
            "429s, share of requests",
            shares,
            " %",
            ".1f",
            "≤ 10 %",
            statistics.median(shares) <= 10,
        ),
    ]
    if sdk16:
        rows.append(row("S2", "official SDK + 16 threads ÷ bound", sdk16, "×", ".2f"))
    return rows


# -- S3: normalize + write only ------------------------------------------------------------------


def recorded_pages(count: int = 100) -> list[Any]:
    from connector.emulator import build_world
    from connector.pages import Page

    world = build_world(seed=12, compartments=180)
    region = world.home_region
    records = [
        (c.id, i.json) for c in world.listable_compartments() for i in world.listing(region, c.id)
    ]
    records *= -(-count * 1000 // len(records))
    pages = []
    fetched = datetime.now(UTC)
    for n in range(count):
        chunk = records[n * 1000 : (n + 1) * 1000]
        body = b"[" + b",".join(j for _, j in chunk) + b"]"
        pages.append(Page(body, region, chunk[0][0], n + 1, fetched, None))
    return pages


def _ours(pages: list[Any], folder: Path, workers: int | str = "auto") -> float:
    """Seconds to normalize and write ``pages`` through the run's own stages (the dispatcher
    and the workers), worker processes already started (in a run they start while discovery
    goes on)."""
    import anyio

    from connector import config
    from connector.lean import quiet_gc
    from connector.oci.auth import Credentials
    from connector.pages import ListingEnd
    from connector.prepare import prepare
    from connector.workers import coordinator

    class NoSigner:
        async def sign(self, method: str, url: str, headers: dict[str, str]) -> None:
            raise AssertionError("no requests in this scenario")

    overrides = [f'output.uri="{folder}"', f"fetch.workers={orjson.dumps(workers).decode()}"]
    settings = config.load(None, overrides)
    context = prepare(settings, Credentials(NoSigner()))
    processes = settings.fetch.worker_processes()
    pool = coordinator.create(context.workers, processes, lambda result: None)

    async def replay(send: Any) -> None:
        """Each listing's pages in order, then its end, as the fetcher sends them."""
        async with send:
            current, count = None, 0
            for page in pages:
                if current is not None and page.item != current:
                    await send.send(ListingEnd(current, count, None))
                    count = 0
                current, count = page.item, count + 1
                await send.send(page)
            if current is not None:
                await send.send(ListingEnd(current, count, None))

    async def timed() -> float:
        await pool.start()  # as a run does while discovery goes on
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(pool.serve)
            with quiet_gc():
                await pool.feed(replay)
            await pool.close()
        await pool.reap()
        return time.perf_counter() - started

    return anyio.run(timed)


def _pandas(pages: list[Any], folder: Path) -> None:
    import pandas as pd

    records = [r for page in pages for r in orjson.loads(page.body)]
    pd.json_normalize(records).to_parquet(folder / "pandas.parquet", compression="zstd")


def _sdk_models(pages: list[Any], folder: Path) -> None:
    import oci
    import pyarrow as pa
    import pyarrow.parquet as pq

    client = oci.core.ComputeClient(
        {"region": "us-ashburn-1"}, signer=oci.auth.signers.SecurityTokenSigner("x", _key())
    )
    rows = []
    for page in pages:
        images = client.base_client.deserialize_response_data(page.body.decode(), "list[Image]")
        rows += [oci.util.to_dict(i) for i in images]
    pq.write_table(pa.Table.from_pylist(rows), folder / "sdk.parquet", compression="zstd")


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cores() -> str:
    from connector import config

    count = config.worker_processes(config.load(None, []))
    return f"{count} processes" if count else "one thread"


def s3(full: bool, repeat: int) -> list[dict[str, Any]]:
    import pickle

    pages = recorded_pages()
    rows_total = sum(len(orjson.loads(p.body)) for p in pages)
    contenders = ["ours", "ours, one thread", "pandas"] + (["sdk"] if full else [])
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    with tempfile.TemporaryDirectory() as temp:
        recorded = Path(temp) / "pages.pickle"
        recorded.write_bytes(pickle.dumps(pages))
        del pages
        for _ in range(repeat):
            for name in contenders:
                out = Path(tempfile.mkdtemp(dir=temp))
                done = subprocess.run(
                    [PYTHON, "-m", "benchmarks.s3_contender", name, str(recorded), str(out)],
                    capture_output=True, text=True, check=True, cwd=ROOT,
                )  # fmt: skip
                rates[name].append(rows_total / float(done.stdout.strip().splitlines()[-1]))
    ratio = statistics.median(rates["ours"]) / statistics.median(rates["pandas"])
    result = [
        row(
            "S3",
            f"connector normalize + write Parquet ({rows_total} rows), workers = auto ({_cores()})",
            rates["ours"],
            " rows/s",
            ",.0f",
        ),
        row(
            "S3",
            "connector with workers = 0 (one thread)",
            rates["ours, one thread"],
            " rows/s",
            ",.0f",
        ),
        row("S3", "pandas.json_normalize + to_parquet", rates["pandas"], " rows/s", ",.0f"),
    ]
    if "sdk" in rates:
        result.append(
            row(
                "S3",
                "SDK model deserialization + to_dict + Parquet",
                rates["sdk"],
                " rows/s",
                ",.0f",
            )
        )
    result.append(row("S3", "connector ÷ pandas", [ratio], "×", ".1f", "≥ 4×", ratio >= 4))
    return result


# -- S4: flat memory -----------------------------------------------------------------------------


def s4(full: bool, repeat: int) -> list[dict[str, Any]]:
    peaks: dict[int, list[float]] = {}
    rows_seen: dict[int, int] = {}
    for compartments in (99, 999):
        world = (
            "--seed",
            "4",
            "--compartments",
            str(compartments),
            "--platform-images",
            "1000",
            "--custom-scale",
            "0",
        )
        with tempfile.TemporaryDirectory() as temp, EmulatorProcess(Path(temp), *world) as emulator:
            config = connector_config(Path(temp), emulator)
            peaks[compartments] = []
            for _ in range(max(1, repeat - 1) if not full else repeat):
                result = run_connector(config)
                peaks[compartments].append(result.peak_tree_rss_mb)
                rows_seen[compartments] = int(result.stdout.split("rows=")[1].split()[0])
    small, large = statistics.median(peaks[99]), statistics.median(peaks[999])
    regions = "us-ashburn-1,eu-frankfurt-1,uk-london-1,ap-tokyo-1"
    with (
        tempfile.TemporaryDirectory() as temp,
        EmulatorProcess(
            Path(temp), "--seed", "4", "--compartments", "2000", "--regions", regions
        ) as emulator,
    ):
        # A real tenancy's shape: thousands of compartments in several regions, platform
        # images once (the default). One measurement unless --full: it takes minutes.
        config = connector_config(
            Path(temp), emulator, platform_images="once", regions=["subscribed"]
        )
        wide = [run_connector(config) for _ in range(repeat if full else 1)]
    wide_peak = statistics.median(r.peak_tree_rss_mb for r in wide)
    wide_rows = int(wide[0].stdout.split("rows=")[1].split()[0])
    return [
        row(
            "S4",
            f"peak memory (PSS), 2,000 compartments x 4 regions, {wide_rows:,} rows",
            [r.peak_tree_rss_mb for r in wide],
            " MB",
            ".0f",
            "≤ 300 MB",
            wide_peak <= 300,
        ),
        row(
            "S4",
            f"peak memory (PSS) of the process tree, {rows_seen[99]:,} rows",
            peaks[99],
            " MB",
            ".0f",
        ),
        row(
            "S4",
            f"peak memory (PSS) of the process tree, {rows_seen[999]:,} rows",
            peaks[999],
            " MB",
            ".0f",
            "≤ 300 MB",
            large <= 300,
        ),
        row(
            "S4",
            "growth from 10× the rows",
            [large - small],
            " MB",
            ".0f",
            "≤ +60 MB",
            large - small <= 60,
        ),
    ]


# -- S5: the shape of a real tenancy, rate-limited per region --------------------------------------

S5_REGIONS = ("us-ashburn-1", "us-phoenix-1", "eu-frankfurt-1", "uk-london-1")


@dataclass(frozen=True, slots=True)
class TenancyShape:
    """A world for S5 and how the emulator serves it."""

    compartments: int = 5000  # listings per region, the root included
    regions: tuple[str, ...] = S5_REGIONS
    platform_images: int = 150
    latency_ms: float = 100.0
    rate: float = 20.0  # requests/s per region, enforced by the emulator
    burst: float = 10.0
    seed: int = 17
    empty_share: float = 0.0
    """The share of compartments holding no custom image (S6: 0.9)."""
    custom_scale: float = 1.0
    cache_mb: float = 1024.0
    """The emulator's memory for generated listings. Four shards keep 4 × 16 listings open in
    each region; the large ones among them (7 % of listings, about 10 MB each) take some 700 MB.
    With less, the emulator generates a large listing again for each of its pages, its latency
    grows with the clients' concurrency (OCI's does not), and S5 would measure the emulator."""

    def emulator_args(self) -> tuple[str, ...]:
        return (
            "--seed", str(self.seed), "--compartments", str(self.compartments - 1),
            "--regions", ",".join(self.regions), "--platform-images", str(self.platform_images),
            "--latency-ms", f"{self.latency_ms:g}", "--jitter", "0.5",
            "--rate", f"{self.rate:g}", "--burst", f"{self.burst:g}",
            "--cache-mb", f"{self.cache_mb:g}",
            *(("--empty-share", f"{self.empty_share:g}") if self.empty_share else ()),
            *(("--custom-scale", f"{self.custom_scale:g}") if self.custom_scale != 1 else ()),
        )  # fmt: skip


def tenancy_run(
    emulator: EmulatorProcess,
    folder: Path,
    shape: TenancyShape,
    shards: int = 1,
    strategy: str = "list",
) -> dict[str, float]:
    """One export of the S5 world (or ``shards`` shard processes in parallel, then the commit)
    and its figures, from the emulator's counters and the processes' own. ``strategy`` is
    ``fetch.strategy`` (S6 compares both)."""
    emulator.reset()
    config = connector_config(
        folder, emulator, shape.regions, platform_images="once", strategy=strategy
    )
    cpu_before = _cpu_seconds(emulator.process.pid)
    if shards == 1:
        runs = [measure(connector_command(config))]
        commit_s = 0.0
    else:
        run_id = f"s5-{time.time_ns()}"
        runs = measure_all(
            [connector_command(config, "run", "--shard", f"{i}/{shards}", "--run-id", run_id)
             for i in range(shards)]
        )  # fmt: skip
        commit = measure(connector_command(config, "commit", "--run-id", run_id))
        runs.append(commit)
        commit_s = commit.wall_s
    for result in runs:
        if result.returncode != 0:
            raise RuntimeError(f"S5 failed with exit {result.returncode}: {result.stdout}")
    emulator_cpu = _cpu_seconds(emulator.process.pid) - cpu_before
    stats = emulator.stats()
    by_region = stats["requests_by_region"]
    throttled = stats["throttled_by_region"]
    searched = stats.get("searches_by_region", {})
    # Each region's successful requests, per service: Search is limited apart (S6).
    served = [by_region.get(r, 0) - throttled.get(r, 0) - searched.get(r, 0) for r in shape.regions]
    served += [searched.get(r, 0) for r in shape.regions]
    # The bound: each region's and service's successful requests at its rate (less the initial
    # burst), in parallel.
    bound = max(max((n - shape.burst) / shape.rate for n in served), 1e-3)
    wall = max(r.wall_s for r in runs[:shards]) + commit_s
    listings = len(stats["listed_compartments"])
    cpu = sum(r.cpu_s for r in runs)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "wall_s": wall,
        "bound_s": bound,
        "ratio": wall / bound,
        "requests": stats["requests"],
        "searches": sum(stats.get("searches_by_region", {}).values()),
        "rows": published_rows(folder),
        "throttled_share": 100 * stats["throttled"] / stats["requests"],
        "listings": listings,
        "pages": pages_listed(stats),
        "cpu_s": cpu,
        "cpu_per_1000_listings_s": 1000 * cpu / listings,
        "cpu_share": 100 * cpu / (wall * (cores or 1)),
        "emulator_cpu_share": 100 * emulator_cpu / (wall * (cores or 1)),
        "peak_pss_mb": max(r.peak_tree_rss_mb for r in runs),
    }


def published_rows(folder: Path) -> int:
    """Rows of the snapshot the run published, as its manifest counts them."""
    (manifest,) = (folder / "lake" / "images").glob("snapshot_date=*/_manifest.json")
    return int(orjson.loads(manifest.read_bytes())["rows"])


def s5_rows(label: str, figures: list[dict[str, float]], shards: int) -> list[dict[str, Any]]:
    def values(key: str) -> list[float]:
        return [f[key] for f in figures]

    ratio_goal, share_goal = (1.10, 5.0) if shards == 1 else (1.15, 10.0)
    first = figures[0]
    name = (
        f"{label}: {first['listings']:,.0f} listings, {first['pages']:,.0f} pages,"
        f" {first['requests']:,.0f} requests"
    )
    ratio, share = statistics.median(values("ratio")), statistics.median(values("throttled_share"))
    pss = statistics.median(values("peak_pss_mb"))
    return [
        row("S5", f"{name}: wall", values("wall_s")),
        row("S5", f"{label}: rate bound (successful requests − burst) ÷ rate, per region",
            values("bound_s")),
        row("S5", f"{label}: wall ÷ bound", values("ratio"), "×", ".3f",
            f"≤ {ratio_goal:.2f}×", ratio <= ratio_goal),
        row("S5", f"{label}: 429s, share of requests", values("throttled_share"), " %", ".1f",
            f"≤ {share_goal:g} %", share <= share_goal),
        row("S5", f"{label}: connector CPU per 1,000 listings", values("cpu_per_1000_listings_s")),
        row("S5", f"{label}: connector CPU share of the machine", values("cpu_share"), " %",
            ".0f"),
        row("S5", f"{label}: emulator CPU share of the machine", values("emulator_cpu_share"),
            " %", ".0f"),
        row("S5", f"{label}: peak memory (PSS) of the process tree"
            + ("" if shards == 1 else "s, all shards together"),
            values("peak_pss_mb"), " MB", ".0f", "≤ 300 MB" if shards == 1 else "",
            pss <= 300 if shards == 1 else None),
    ]  # fmt: skip


def s5(full: bool, repeat: int, shape: TenancyShape | None = None) -> list[dict[str, Any]]:
    """About 250 s a run at full size (20,000 listings at 4 × 20 requests/s): one run of each
    kind unless ``--repeat`` asks for more."""
    shape = shape or TenancyShape()
    runs = repeat
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        with EmulatorProcess(folder, *shape.emulator_args()) as emulator:
            one = [tenancy_run(emulator, folder, shape) for _ in range(runs)]
            four = [tenancy_run(emulator, folder, shape, shards=4) for _ in range(runs)]
    return s5_rows("one process", one, 1) + s5_rows("4 shard processes", four, 4)


# -- S6: Resource Search against listing every compartment --------------------------------------

S6_FULL = TenancyShape(empty_share=0.9)
"""S5's tenancy with nine compartments in ten holding no custom image, as in most tenancies."""
S6_QUICK = replace(S6_FULL, compartments=1000)
"""The default size: 1,000 compartments × 4 regions (about 1 minute for list mode, where the
full size takes S5's 5 minutes); ``--full`` runs S6_FULL."""


def search_pair(
    emulator: EmulatorProcess, folder: Path, shape: TenancyShape
) -> dict[str, dict[str, float]]:
    """``list`` then ``search`` against one emulator, each into a lake of its own; their figures
    (requests: Compute, Identity and Search together, as the emulator counted them)."""
    figures = {}
    for strategy in ("list", "search"):
        lake = folder / strategy
        lake.mkdir(exist_ok=True)
        figures[strategy] = tenancy_run(emulator, lake, shape, strategy=strategy)
    return figures


def s6_rows(pairs: list[dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    def values(strategy: str, key: str) -> list[float]:
        return [pair[strategy][key] for pair in pairs]

    share = [100 * p["search"]["requests"] / p["list"]["requests"] for p in pairs]
    ratio = statistics.median(values("search", "ratio"))
    equal = all(p["search"]["rows"] == p["list"]["rows"] for p in pairs)
    first = pairs[0]
    rows = []
    for strategy in ("list", "search"):
        head = first[strategy]
        rows += [
            row(
                "S6",
                f"{strategy}: {head['listings']:,.0f} listings, {head['pages']:,.0f} pages, "
                f"{head['searches']:,.0f} Search requests: requests",
                values(strategy, "requests"),
                "",
                ",.0f",
            ),
            row("S6", f"{strategy}: wall", values(strategy, "wall_s")),
            row(
                "S6",
                f"{strategy}: rate bound (successful requests − burst) ÷ rate, per region",
                values(strategy, "bound_s"),
            ),
            row(
                "S6",
                f"{strategy}: wall ÷ bound",
                values(strategy, "ratio"),
                "×",
                ".3f",
                "≤ 1.25×" if strategy == "search" else "",
                ratio <= 1.25 if strategy == "search" else None,
            ),
            row("S6", f"{strategy}: rows published", values(strategy, "rows"), "", ",.0f"),
            row("S6", f"{strategy}: connector CPU", values(strategy, "cpu_s")),
            row(
                "S6",
                f"{strategy}: peak memory (PSS) of the process tree",
                values(strategy, "peak_pss_mb"),
                " MB",
                ".0f",
            ),
        ]
    return [
        *rows,
        row("S6", "search requests ÷ list requests", share, " %", ".1f", "≤ 15 %",
            statistics.median(share) <= 15),
        row("S6", "rows: search = list", [float(equal)], "", ".0f", "equal", equal),
        row("S6", "wall: list ÷ search", [p["list"]["wall_s"] / p["search"]["wall_s"]
            for p in pairs], "×", ".1f"),
    ]  # fmt: skip


def s6(full: bool, repeat: int, shape: TenancyShape | None = None) -> list[dict[str, Any]]:
    """List against search on S5's tenancy with 90 % of compartments empty of custom images."""
    shape = shape or (S6_FULL if full else S6_QUICK)
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        with EmulatorProcess(folder, *shape.emulator_args()) as emulator:
            pairs = [search_pair(emulator, folder, shape) for _ in range(repeat)]
    return s6_rows(pairs)


# -- P1: the CPU of a dropped platform image -------------------------------------------------------


def p1(full: bool, repeat: int) -> list[dict[str, Any]]:
    from benchmarks.platform_cost import measure as platform_cost

    figures = platform_cost(pages=400, repeat=repeat)
    before, after = figures["before_us"], figures["after_us"]
    per_page = figures["records_per_page"]
    return [
        row("P1", f"CPU per dropped platform image, converted then dropped ({per_page} a page)",
            before, " µs", ".2f"),
        row("P1", "the same, recognised before conversion (now)", after, " µs", ".2f"),
        row("P1", "converted then dropped ÷ recognised first",
            [statistics.median(before) / statistics.median(after)], "×", ".1f"),
    ]  # fmt: skip


RUNNERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "S1": s1,
    "S2": s2,
    "S3": s3,
    "S4": s4,
    "S5": s5,
    "S6": s6,
    "P1": p1,
}
DEFAULT_REPEAT = {
    "S5": 1,
    "S6": 1,
}  # about 250 s a run at full size: one of each kind, unless asked


# -- E1: the emulator is never the bottleneck -----------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def e1(full: bool, repeat: int) -> list[dict[str, Any]]:
    """Records served per CPU second of the emulator process (one core), 1000-record pages."""
    import anyio

    from connector.emulator import build_world
    from connector.oci import auth
    from connector.oci.client import ClientOptions, OciClient

    world = build_world(seed=12, compartments=180)
    compartments = [c.id for c in world.listable_compartments()]
    rates = []
    with (
        tempfile.TemporaryDirectory() as temp,
        EmulatorProcess(Path(temp), "--seed", "12", *S1_DATA) as emulator,
    ):
        signer = auth.make_signer("api_key", auth.load_profile(emulator.config, "DEFAULT"))

        async def fetch_all() -> int:
            served = 0
            async with OciClient(signer, ClientOptions(concurrency=16)) as client:

                async def walk(compartment: str) -> None:
                    nonlocal served
                    params = {"compartmentId": compartment, "limit": 1000}
                    pages = client.paginate(emulator.url + "/20160918/images", params)
                    async with aclosing(pages):
                        async for paged in pages:
                            served += paged.response.body.count(b'"id":')

                async with anyio.create_task_group() as group:
                    for compartment in compartments:
                        group.start_soon(walk, compartment)
            return served

        for _ in range(repeat):
            before = _cpu_seconds(emulator.process.pid)
            served = anyio.run(fetch_all)
            rates.append(served / (_cpu_seconds(emulator.process.pid) - before))
    median = statistics.median(rates)
    return [
        row(
            "E1",
            "emulator: records served per CPU second",
            rates,
            " rec/s",
            ",.0f",
            "≥ 150k",
            median >= 150_000,
        )
    ]


RUNNERS["E1"] = e1
