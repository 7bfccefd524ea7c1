"""Real filesystems under the output, mounted for the test (root and ``mount -t tmpfs``; the
tests are skipped where mounting is not allowed): a second filesystem inside the output is
refused before any request (exit 2, naming output.uri), and a full disk ends in one line
naming the cause, no traceback.

A publish renames staged partitions into place; a rename cannot cross filesystems (EXDEV),
so a ``_staging`` or a partition on another mount used to fail every run at the swap, after
all the fetching.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connector.emulator import EmulatorServer
from tests.helpers import DATE, oci_images, write_config


def _mount(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={size}",
            f"oci-test-{uuid.uuid4().hex[:8]}",
            str(folder),
        ],
        capture_output=True,
    )
    return done.returncode == 0


@pytest.fixture
def mount() -> Iterator[Callable[[Path, str], None]]:
    """Mount a tmpfs of ``size`` at a folder, unmounted after the test; skip if not allowed."""
    mounted: list[Path] = []

    def at(folder: Path, size: str = "16m") -> None:
        if not _mount(folder, size):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(folder)

    yield at
    for folder in reversed(mounted):
        with contextlib.suppress(OSError):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [x for x in result.stderr.splitlines() if x.startswith("oci-images:")]
    assert 1 == len(lines), result.stderr
    return lines[0]


@pytest.mark.parametrize("where", ["_staging", "images", f"images/snapshot_date={DATE}"])
def test_a_second_filesystem_inside_the_output_exits_2_before_any_request(
    emulator: EmulatorServer, tmp_path: Path, mount: Callable[[Path, str], None], where: str
) -> None:
    """A tmpfs at ``_staging``, at the dataset's folder or at a partition: exit 2 naming
    output.uri and the folder, nothing fetched."""
    lake = tmp_path / "lake"
    mount(lake / where, "16m")
    config = write_config(tmp_path, emulator, lake=lake)
    before = emulator.stats()["requests"]
    result = oci_images("run", "--config", str(config))
    assert 2 == result.returncode, result.stderr
    line = _one_line(result)
    assert line.startswith("oci-images: configuration error: output.uri: "), line
    assert "another filesystem" in line, line
    assert where.split("/")[-1] in line, line
    assert before == emulator.stats()["requests"]


def test_the_whole_output_on_its_own_filesystem_is_fine(
    emulator: EmulatorServer, tmp_path: Path, mount: Callable[[Path, str], None]
) -> None:
    """The output itself a mount (the usual case): published."""
    lake = tmp_path / "lake"
    mount(lake, "64m")
    config = write_config(tmp_path, emulator, lake=lake)
    result = oci_images("run", "--config", str(config))
    assert 0 == result.returncode, result.stderr
    assert (lake / "images" / f"snapshot_date={DATE}" / "_SUCCESS").exists()


def _fill(folder: Path) -> None:
    """Fill the filesystem of ``folder`` to the last byte."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as filler:
        while True:
            filler.write(bytes(1 << 16))
            filler.flush()
    with contextlib.suppress(OSError), open(folder / "filler-tail", "wb") as tail:
        while True:
            tail.write(b"x")
            tail.flush()


def test_a_full_disk_before_the_run_is_one_line(
    emulator: EmulatorServer, tmp_path: Path, mount: Callable[[Path, str], None]
) -> None:
    """No room for even the probe (or the lock): one line naming the cause, no traceback,
    nothing fetched."""
    lake = tmp_path / "lake"
    mount(lake, "1m")
    (lake / "_staging" / "_locks").mkdir(parents=True)
    _fill(lake)
    config = write_config(tmp_path, emulator, lake=lake)
    before = emulator.stats()["requests"]
    result = oci_images("run", "--config", str(config))
    assert result.returncode in (1, 2), result.stderr
    assert "No space left on device" in _one_line(result)
    assert before == emulator.stats()["requests"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_disk_that_fills_while_pages_are_written_names_the_cause(
    emulator: EmulatorServer,
    tmp_path: Path,
    mount: Callable[[Path, str], None],
    workers: int,
) -> None:
    """A 100 KB output fills while the worker writes its files: exit 1, one line naming
    "No space left on device" (not "worker 0 went away"), no traceback from any process,
    nothing published."""
    lake = tmp_path / "lake"
    mount(lake, "100k")
    config = write_config(tmp_path, emulator, lake=lake, fetch={"workers": workers})
    result = oci_images("run", "--config", str(config))
    assert 1 == result.returncode, result.stderr
    line = _one_line(result)
    assert "No space left on device" in line, line
    assert "went away" not in line, line
    assert not (lake / "images" / f"snapshot_date={DATE}").exists()


def test_a_read_only_output_exits_2_before_any_request(
    emulator: EmulatorServer, tmp_path: Path, mount: Callable[[Path, str], None]
) -> None:
    """The output mounted read-only: exit 2 naming output.uri and the cause."""
    lake = tmp_path / "lake"
    mount(lake, "1m")
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(lake)], capture_output=True)
    assert 0 == remounted.returncode, remounted.stderr
    config = write_config(tmp_path, emulator, lake=lake)
    before = emulator.stats()["requests"]
    result = oci_images("run", "--config", str(config))
    assert 2 == result.returncode, result.stderr
    line = _one_line(result)
    assert "output.uri" in line, line
    assert "Read-only file system" in line, line
    assert before == emulator.stats()["requests"]
