"""Helpers of the reliability suite: a lake whose published snapshot is compared to a ground
truth, the command line in a subprocess (optionally with a fault injected), and the checks that
follow every fault: the published snapshot is the old one or the new one, equal to its ground
truth; nothing is left in staging; the next run succeeds."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds

from connector.emulator import EmulatorServer, World, build_world
from tests.helpers import DATE
from tests.reference import expected_rows, multiset, normalise_actual

# Injected faults, run inside the command's own process (see ``FAULTS``): disk full at one
# moment of the commit, or SIGKILL at one point of the swap.
FAULTS = r"""
import errno, os, signal, sys
from connector.lake import durable
fault = os.environ["RELIABILITY_FAULT"]

def enospc(path):
    raise OSError(errno.ENOSPC, "No space left on device", path)

write = durable.write_durably
def failing_write(fs, path, data):
    if (fault == "enospc-manifest" and path.endswith("/_manifest.json")) or (
        fault == "enospc-success" and path.endswith(("/_SUCCESS", "/_PARTIAL"))
    ):
        enospc(path)
    return write(fs, path, data)
durable.write_durably = failing_write

if fault == "enospc-data":
    from connector.sinks import RollingFiles
    def no_room(self):
        enospc(self.place.directory)
    RollingFiles._open_next = no_room

exchange = durable.exchange
def killing_exchange(first, second):
    if fault == "kill-before-exchange":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "kill-between-renames":
        return False  # two renames, killed after the first (below)
    done = exchange(first, second)
    if fault == "kill-after-exchange":
        os.kill(os.getpid(), signal.SIGKILL)
    return done
durable.exchange = killing_exchange

rename = os.rename
def killing_rename(source, target):
    rename(source, target)
    if fault == "kill-between-renames" and "/_trash/" in str(target):
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = killing_rename

# On object stores: SIGKILL at each step of the journaled copy (the copies, or the table's
# commit, are done; the manifest is written; the markers are written, before the superseded
# files are deleted).
from connector.lake import durable as durable_module, publisher
write_json = durable_module.write_json
manifest_written = []
def killing_write_json(fs, path, payload):
    published = (
        "/images/snapshot_date=" in path
        and path.endswith("/_manifest.json")
        and "/_staging/" not in path
    )
    if fault == "kill-before-manifest" and published:
        os.kill(os.getpid(), signal.SIGKILL)
    write_json(fs, path, payload)
    if published:
        manifest_written.append(path)
    if fault == "kill-after-manifest" and published:
        os.kill(os.getpid(), signal.SIGKILL)
durable_module.write_json = killing_write_json

delete = publisher.JournaledCopy._delete
def killing_delete(self, partition, relative):
    relative = list(relative)
    markers = any(p.endswith(("_SUCCESS", "_PARTIAL")) for p in relative)
    if fault == "kill-before-cleanup" and manifest_written and not markers:
        os.kill(os.getpid(), signal.SIGKILL)  # the markers are written; the old files remain
    return delete(self, partition, relative)
publisher.JournaledCopy._delete = killing_delete

from connector.cli import main
sys.exit(main(sys.argv[1:]))
"""


REGIONS = ("us-ashburn-1", "eu-frankfurt-1")
COMPANIONS = ("compartments", "changes")

FETCH = {"page_size": 100, "max_attempts": 4}
"""What every case's configuration sets beyond ``tests.helpers.write_config``'s defaults:
pages of 100, so that a kill lands in the middle of a listing; four attempts, so that a hostile
server ends a run in seconds rather than minutes of back-off."""


def build_old_world() -> World:
    """The tenancy published before each case (the snapshot a fault must leave intact)."""
    return build_world(
        seed=1, compartments=10, regions=REGIONS, platform_images=15, custom_scale=0.4
    )


def build_new_world() -> World:
    """The tenancy each case exports over it."""
    return build_world(
        seed=2, compartments=12, regions=REGIONS, platform_images=15, custom_scale=0.4
    )


def command(*args: str, fault: str | None = None) -> list[str]:
    """``oci-images ARGS`` as a subprocess command line (with ``fault`` injected)."""
    if fault is None:
        return [sys.executable, "-m", "connector", "--log-level", "warning", *args]
    return [sys.executable, "-c", FAULTS, "--log-level", "warning", *args]


def cli(
    *args: str, fault: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the command to its end."""
    env = {**os.environ, "RELIABILITY_FAULT": fault or ""}
    return subprocess.run(
        command(*args, fault=fault), capture_output=True, text=True, timeout=timeout, env=env
    )


def start(*args: str) -> subprocess.Popen[str]:
    """Start the command; it is a process group of its own (its workers with it)."""
    return subprocess.Popen(
        command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for_requests(server: EmulatorServer, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while server.stats()["requests"] < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests in {timeout} s"
        time.sleep(0.01)


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL the command and every process it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


def truth(world: World, platform: str = "once") -> Counter[bytes]:
    """The rows a complete export of ``world`` publishes."""
    return multiset(expected_rows(world, platform))


class Lake:
    """The output folder under test."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def partition(self) -> Path:
        return self.root / "images" / f"snapshot_date={DATE}"

    def published(self, platform: str = "once") -> Counter[bytes] | None:
        """The published snapshot's rows (None if none is published), after checking that it is
        whole: a manifest, its marker, and exactly the files and rows the manifest lists; and
        that its companions are the same run's, whole (``companions_agree``)."""
        if not self.partition.exists():
            for name in COMPANIONS:
                assert not (self.root / name / f"snapshot_date={DATE}").exists(), (
                    f"{name} is published for a date whose images are not"
                )
            return None
        manifest = orjson.loads((self.partition / "_manifest.json").read_bytes())
        self.companions_agree(manifest)
        marker = "_PARTIAL" if manifest["status"] == "partial" else "_SUCCESS"
        assert (self.partition / marker).exists(), f"{marker} missing"
        listed = sorted(f["path"] for f in manifest["files"])
        on_disk = sorted(str(p.relative_to(self.partition)) for p in self.partition.rglob("part-*"))
        assert listed == on_disk, "the partition holds files its manifest does not list"
        dataset = ds.dataset(self.root / "images", format="parquet", partitioning="hive")
        rows = dataset.to_table().to_pylist(maps_as_pydicts="strict")
        assert manifest["rows"] == len(rows)
        return multiset([normalise_actual(r, platform) for r in rows])

    def companions_agree(self, images: dict[str, Any]) -> None:
        """Every companion the images manifest names is published by the same run, with its
        marker and exactly the data files its manifest lists (one commit point for the date)."""
        for name in COMPANIONS:
            folder = self.root / name / f"snapshot_date={DATE}"
            if name not in images.get("datasets", {}):
                continue
            manifest = orjson.loads((folder / "_manifest.json").read_bytes())
            if images["run_id"] != manifest["run_id"]:
                # Only a commit killed past its commit point (the images swap) leaves a
                # companion behind, and its journal is there for the next start to finish it.
                journals = self.root.glob("_staging/*/*/_commit.json")
                runs = {orjson.loads(j.read_bytes())["run_id"] for j in journals}
                assert images["run_id"] in runs, f"{name} names another run"
            assert (folder / "_SUCCESS").exists(), f"{name} has no marker"
            listed = sorted(f["path"] for f in manifest["files"])
            on_disk = sorted(p.name for p in folder.iterdir() if not p.name.startswith("_"))
            assert listed == on_disk, f"{name} holds files its manifest does not list"

    def leftovers(self) -> list[str]:
        """What is left in _staging and _trash (nothing, once a run has ended either way)."""
        found = []
        for top in ("_staging", "_trash"):
            folder = self.root / top
            if folder.exists():
                found += [str(p.relative_to(self.root)) for p in folder.rglob("*") if p.is_file()]
        return found

    def record(self, run_id: str) -> dict[str, Any]:
        record: dict[str, Any] = orjson.loads((self.root / "_runs" / f"{run_id}.json").read_bytes())
        return record


def summary_run_id(stdout: str) -> str:
    """The run id of a summary line."""
    return stdout.strip().rsplit("run_id=", 1)[1].split()[0]
