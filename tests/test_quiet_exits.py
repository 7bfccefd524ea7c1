"""Small things a user sees at the edges: a closed stdout, a worker whose run stopped before it
was needed, the summary line's counts, a region left out. Real processes, as a user runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson

from connector.emulator import EmulatorServer
from connector.workers import protocol
from tests.helpers import manifest_of, write_config
from tests.worker_support import setup as worker_setup

ROOT = Path(__file__).resolve().parent.parent


def test_a_closed_stdout_is_no_traceback() -> None:
    """`oci-images schema | head -1`: the reader left before the command wrote; it exits as
    SIGPIPE would have ended it (141), and says nothing on stderr."""
    read, write = os.pipe()
    os.close(read)  # gone before the first write: the write fails, whatever the timing
    try:
        result = subprocess.run(
            [sys.executable, "-m", "connector", "schema", "--format", "json"],
            stdout=write,
            stderr=subprocess.PIPE,
            timeout=60,
            cwd=ROOT,
        )
    finally:
        os.close(write)
    assert (141, b"") == (result.returncode, result.stderr)


def test_head_reads_the_first_line_quietly() -> None:
    """The pipeline as typed: the first line, and nothing on stderr."""
    result = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m connector schema | head -1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert ("", 1) == (result.stderr, len(result.stdout.splitlines()))
    assert result.stdout.startswith("|")


def test_a_worker_whose_run_stopped_before_it_was_ready_says_nothing(tmp_path: Path) -> None:
    """A run aborted during discovery closes its workers' sockets while they start: the worker
    that finds no one to tell it is ready ends quietly (it printed a BrokenPipeError)."""
    ours, theirs = socket.socketpair()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    process = subprocess.Popen(
        [sys.executable, "-m", "connector.workers.boot", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    theirs.close()
    # The setup arrives, then the coordinator is gone before the worker answers Ready.
    ours.sendall(protocol._frame(protocol.Setup(worker_setup(tmp_path))))
    ours.close()
    _, err = process.communicate(timeout=60)
    assert (0, b"") == (process.returncode, err)


def test_the_summary_counts_listings_and_a_skipped_region_says_why(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """The summary line's counts are named for what they count (listings: a compartment in
    each region), and the region whose subscription is not READY is named with the reason."""
    server = make_emulator()
    result = subprocess.run(
        [sys.executable, "-m", "connector", "run", "--config", str(write_config(tmp_path, server))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert 0 == result.returncode, result.stderr
    [summary] = result.stdout.splitlines()
    events = [orjson.loads(line) for line in result.stderr.splitlines()]
    listings = len(manifest_of(tmp_path)["compartments"])
    assert f" listings_ok={listings} listings_failed=0 " in summary
    assert "compartments_ok" not in summary
    pending = next(s for s in server.world.subscriptions if s.status != "READY")
    [skipped] = [e for e in events if e["event"] == "discovery.region_skipped"]
    assert (pending.region_name, pending.status) == (skipped["region"], skipped["subscription"])
    assert f"its subscription is {pending.status}, not READY" in skipped["reason"]
