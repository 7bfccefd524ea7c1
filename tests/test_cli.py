"""The command line as a user runs it: real subprocesses against the emulator."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from connector import names, schema
from connector.emulator import EmulatorServer, build_world
from tests.helpers import (
    DATE,
    WORLD,
    oci_images,
    screen,
    signalled_run,
    worker_pids,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent


def test_schema_command_matches_the_schema() -> None:
    """`schema --format json` prints the one schema; markdown prints the reference's table."""
    as_json = oci_images("schema", "--format", "json")
    assert 0 == as_json.returncode
    assert schema.describe() == orjson.loads(as_json.stdout)
    assert schema.markdown_table() + "\n" == oci_images("schema").stdout


@pytest.mark.parametrize("dataset", [name for name in names.DATASETS if name != "images"])
def test_schema_command_prints_each_dataset(dataset: str) -> None:
    """`schema --dataset NAME` prints that dataset's columns, in JSON or as the reference's table."""
    columns = schema.DATASETS[dataset]
    as_json = oci_images("schema", "--dataset", dataset, "--format", "json")
    assert 0 == as_json.returncode
    assert schema.describe(columns) == orjson.loads(as_json.stdout)
    assert [c.name for c in columns] == [c["name"] for c in orjson.loads(as_json.stdout)]
    assert (
        schema.markdown_table(columns) + "\n" == oci_images("schema", "--dataset", dataset).stdout
    )


def test_run_succeeds_with_summary_and_json_logs(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Exit 0; stdout is one summary line; stderr (not a TTY) is JSON lines with stable keys."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    result = oci_images("run", "--config", str(write_config(tmp_path, server)))
    assert 0 == result.returncode, result.stderr
    [summary] = result.stdout.splitlines()
    assert summary.startswith("complete (published): rows=")
    files = sorted((tmp_path / "lake" / "images").rglob("*.parquet"))
    assert 2 == len({f.parent.name for f in files})  # one directory per region
    for key in (
        "rows=",
        f"files={len(files)} ",
        "listings_ok=82",
        "listings_failed=0",
        "requests=",
        "retries=",
        "throttled=",
        "rows_per_s=",
        "elapsed_s=",
    ):
        assert key in summary
    events = [orjson.loads(line) for line in result.stderr.splitlines()]
    assert {"run.start", "discovery.compartments", "run.published"} <= {e["event"] for e in events}
    assert all({"event", "level", "timestamp"} <= e.keys() for e in events)
    assert all(e["run_id"] for e in events if e["event"] in ("run.start", "run.published"))


def test_exit_3_partial(make_emulator: Callable[..., EmulatorServer], tmp_path: Path) -> None:
    """Exit 3 when a compartment fails (above the ratio floor); the summary says nothing was
    published."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    missing = "ocid1.compartment.oc1..aaaaaaaamissing"
    config = write_config(
        tmp_path,
        server,
        scope={"compartments": [server.world.tenancy_id, missing]},
        output={"min_complete_ratio": 0.4},
    )
    result = oci_images("run", "--config", str(config))
    assert 3 == result.returncode
    assert result.stdout.startswith("partial (not published):")
    assert "listings_failed=2" in result.stdout
    assert "nothing published" in result.stderr


def test_exit_1_when_the_service_is_unreachable(
    tmp_path: Path, make_emulator: Callable[..., EmulatorServer]
) -> None:
    """Exit 1 at once, with the reason, the host and what to check, when nothing listens where
    the service should be (one round of attempts, not a retry loop); nothing is published."""
    server = make_emulator()
    config = write_config(
        tmp_path, server, oci={"endpoint": "http://127.0.0.1:9/{region}"}, fetch={"max_attempts": 8}
    )
    started = time.monotonic()
    result = oci_images("run", "--config", str(config))
    assert 1 == result.returncode
    assert "oci-images: 127.0.0.1:9: the connection was refused" in result.stderr
    assert "check oci.endpoint" in result.stderr
    assert time.monotonic() - started < 15
    assert not (tmp_path / "lake" / "images").exists()


def test_exit_2_names_the_key(tmp_path: Path) -> None:
    """Exit 2 for a bad value, naming it, before anything else happens."""
    config = tmp_path / "bad.toml"
    config.write_text("[fetch]\nconcurrency = -1\n")
    result = oci_images("run", "--config", str(config))
    assert 2 == result.returncode
    assert "fetch.concurrency" in result.stderr
    assert "" == result.stdout


def test_exit_2_for_usage_errors() -> None:
    """A malformed --shard or a missing --run-id is a usage error."""
    assert 2 == oci_images("run", "--config", "x.toml", "--shard", "5/2").returncode
    assert 2 == oci_images("bogus").returncode


def test_secrets_never_reach_the_logs(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """A failing run at debug level logs no key, token, signature or Authorization header."""
    server = make_emulator(build_world(**WORLD), fault_rate=0.3)  # type: ignore[arg-type]
    config = write_config(
        tmp_path,
        server,
        oci={"profile": "SESSION", "auth": "security_token"},
        fetch={"max_attempts": 2, "page_size": 100},
        output={"min_complete_ratio": 0.0},  # failed listings: exit 3, whatever their share
    )
    result = oci_images("--log-level", "debug", "run", "--config", str(config))
    assert result.returncode in (0, 3)
    assert "request.retry" in result.stderr
    assert server.config_file is not None
    token = (server.config_file.parent / "token").read_text()
    pem_body = server.credentials.private_pem().decode().splitlines()[1]
    output = result.stdout + result.stderr
    for secret in (token, token[:40], pem_body, "Signature algorithm", 'signature="'):
        assert secret not in output


def test_killed_run_leaves_published_partition_intact(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """SIGKILL in the middle of a run leaves the previous partition as it was, with no debris."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    config = write_config(tmp_path, server, fetch={"concurrency": 2, "page_size": 20})
    assert 0 == oci_images("run", "--config", str(config)).returncode
    partition = tmp_path / "lake" / "images" / f"snapshot_date={DATE}"
    before = {p.relative_to(partition): p.read_bytes() for p in partition.rglob("*") if p.is_file()}
    server.emulator.behaviour.latency_ms = 30
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    staging = tmp_path / "lake" / "_staging"
    while (
        not list(staging.rglob("*.parquet"))
        and not list(staging.rglob("region=*"))
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    time.sleep(0.3)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    after = {p.relative_to(partition): p.read_bytes() for p in partition.rglob("*") if p.is_file()}
    assert before == after
    assert sorted(p.name for p in (tmp_path / "lake" / "images").iterdir()) == [
        f"snapshot_date={DATE}"
    ]
    assert not any(partition.rglob("*.filtering"))


@pytest.mark.parametrize("module", [["-m", "connector"], ["-m", "connector.cli"]])
def test_entry_points(module: list[str]) -> None:
    """`python -m connector` and the module itself print help."""
    result = subprocess.run(
        [sys.executable, *module, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert 0 == result.returncode
    for command in ("run", "demo", "emulator", "schema", "plan", "commit"):
        assert command in result.stdout


def test_interrupted_run_cleans_up(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Ctrl-C mid-run: exit 130, the staging area is removed, nothing is published."""
    server = make_emulator(build_world(**WORLD), latency_ms=30)  # type: ignore[arg-type]
    config = write_config(tmp_path, server, fetch={"concurrency": 2, "page_size": 20})
    staging = tmp_path / "lake" / "_staging"
    code, err = signalled_run(config, staging, signal.SIGINT, timeout=30)
    assert 130 == code, err
    assert "nothing published" in err
    assert not (tmp_path / "lake" / "images").exists()
    assert not list(staging.glob("*"))


@pytest.mark.parametrize(
    ("placement", "fmt"),
    [
        (["--log-format", "json", "--log-level", "debug", "run", "--config", "CONFIG"], "json"),
        (["run", "--config", "CONFIG", "--log-format", "console", "--log-level", "debug"],
         "console"),
        (["--log-level", "error", "--log-format", "console", "run", "--config", "CONFIG",
          "--log-level", "debug", "--log-format", "json"], "json"),
    ],
    ids=["before", "after", "after-wins"],
)  # fmt: skip
def test_global_options_before_or_after_the_command(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, placement: list[str], fmt: str
) -> None:
    """--log-format and --log-level work before the command and after it, as people type them;
    given in both places, the one after the command wins."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    config = str(write_config(tmp_path, server))
    result = oci_images(*[config if a == "CONFIG" else a for a in placement])
    assert 0 == result.returncode, result.stderr
    lines = result.stderr.splitlines()
    assert any("listing.done" in line for line in lines)  # debug level: listing.done is logged
    if fmt == "json":
        assert all(orjson.loads(line)["event"] for line in lines)
    else:
        assert not any(line.startswith("{") for line in lines)


def test_the_progress_bar_on_a_terminal(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """On an 80-column terminal (a real pseudo-terminal): the bar shows elapsed time, ETA and
    rows/s, never wraps, and the retry warnings printed meanwhile sit whole on their own rows,
    with no torn copy of the bar left behind."""
    import fcntl
    import pty
    import struct
    import termios

    server = make_emulator(
        build_world(seed=5, compartments=60, regions=("us-ashburn-1",)),
        latency_ms=40.0,
        fault_rate=0.1,
    )
    config = write_config(tmp_path, server, fetch={"concurrency": 2})
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "run", "--config", str(config), "--log-level",
         "debug", "--log-format", "console"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal, cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1", "TERM": "xterm"},
    )  # fmt: skip
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert 0 == process.wait(timeout=120)
    os.close(controller)
    text = re.sub(r"\x1b\[[0-9;]*m", "", output.decode().replace("\r\n", "\n"))
    bars = [part for part in text.split("\r\x1b[K") if part.startswith("[")]
    assert bars, "no progress bar was drawn"
    for bar in bars:
        line = bar.split("\n")[0]
        assert len(line) <= 79
    assert any("ETA" in b and "rows/s" in b for b in bars)
    rows = screen(text, width=80)
    retries = [row for row in rows if "request.retry" in row]
    assert retries, "the emulator's faults should have caused retries"
    for row in rows:
        assert len(row) <= 80
        if "request.retry" in row:  # a whole log line, never the tail of a bar
            assert not row.startswith("[")
    assert not any(row.startswith("[") for row in rows)  # the bar is gone at the end


def test_exit_2_for_credentials_leaves_no_worker_behind(tmp_path: Path) -> None:
    """The workers start once the configuration is valid, before the credentials load (they
    import pyarrow meanwhile); credentials that cannot load still exit 2, naming the problem,
    and the workers are gone by the time the command returns. Its processes are told apart
    from any other run's on the machine by their process group (a session of its own)."""
    profile = tmp_path / "oci-config"
    profile.write_text(
        "[DEFAULT]\nuser=ocid1.user.oc1..u\nfingerprint=aa:bb\ntenancy=ocid1.tenancy.oc1..t\n"
        f"region=us-ashburn-1\nkey_file={tmp_path / 'missing.pem'}\n"
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f'[oci]\nconfig_file = "{profile}"\n[fetch]\nworkers = 2\n'
        f'[output]\nuri = "{tmp_path / "lake"}"\n'
    )
    # Output to a file: a pipe would make the wait last until every process holding it ended.
    with (tmp_path / "stderr").open("w+") as stderr:
        command = subprocess.Popen(
            [sys.executable, "-m", "connector", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=ROOT,
            start_new_session=True,
        )
        code = command.wait(timeout=60)
        assert [] == worker_pids(command.pid)
        stderr.seek(0)
        assert 2 == code
        assert "missing.pem" in stderr.read()


@pytest.mark.parametrize(("workers", "parses_here"), [(0, True), (1, False)])
def test_the_run_tunes_the_heap_where_it_parses(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    parses_here: bool,
) -> None:
    """Without worker processes the CLI's own process parses the pages and takes the workers'
    heap settings (``lean.parsing_heap``); with them it only fetches and keeps its own."""
    from connector import cli, lean

    calls: list[None] = []
    monkeypatch.setattr(lean, "parsing_heap", lambda: calls.append(None))
    server = make_emulator(build_world(seed=5, compartments=3))
    path = write_config(tmp_path, server, fetch={"workers": workers})
    assert 0 == cli.main(["--log-level", "warning", "run", "--config", str(path)])
    assert calls == ([None] if parses_here else [])
