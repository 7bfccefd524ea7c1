"""Process economies: glibc's settings for the fetching process and for parsing."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from connector import lean

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt",
)

FAULTS = """
import resource, sys
from connector import lean

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = b"x" * (4 << 20)  # a block like orjson's document for a page, touched
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

lean.fixed_mmap_threshold()
faults()
mapped = faults()
lean.parsing_heap()
faults()
print(mapped, faults())
"""


@glibc
def test_a_freed_block_is_reused_where_pages_are_parsed() -> None:
    """With the fetching process's threshold a 4 MB block is a new mapping each time (1,024
    pages to fault in); with ``parsing_heap`` the next one reuses the memory of the last."""
    done = subprocess.run(
        [sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True
    )
    mapped, reused = map(int, done.stdout.split())
    assert mapped > 900
    assert reused < 100


def test_parsing_heap_leaves_a_library_users_process_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a process whose allocator this tool already tunes (the CLI's) gets the settings."""
    calls: list[dict[int, int]] = []

    def record(settings: dict[int, int]) -> bool:
        calls.append(settings)
        return True

    monkeypatch.setattr(lean, "_mallopt", record)
    monkeypatch.setattr(lean, "_tuned", False)
    lean.parsing_heap()
    assert calls == []
    lean.fixed_mmap_threshold()
    lean.parsing_heap()
    thresholds = sorted(calls[-1].values())
    assert thresholds == [lean.PARSING_TRIM_THRESHOLD, lean.PARSING_MMAP_THRESHOLD]
    assert str(lean.PARSING_MMAP_THRESHOLD) == lean.WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"]


FETCHING = """
import resource
from connector import lean

def faults(size):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = b"x" * size  # a socket read's buffer, or a page body, touched
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

lean.fixed_mmap_threshold()
for size in (256 << 10, 4 << 20):
    faults(size)
    print(faults(size))
"""


@glibc
def test_the_fetching_process_reuses_socket_reads_and_maps_large_bodies_apart() -> None:
    """asyncio reads 256 KB at a time: such blocks stay on the heap, where the next reuses the
    last one's memory; a block of 4 MB is mapped apart and given back when freed."""
    done = subprocess.run(
        [sys.executable, "-c", FETCHING], capture_output=True, text=True, check=True
    )
    read, body = map(int, done.stdout.split())
    assert read < 16
    assert body > 900


def test_settle_freezes_this_tools_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the command line holds is put out of the collector's reach; a library user's
    process (Airflow's, say) keeps its collector as it was."""
    import gc

    frozen = gc.get_freeze_count()
    monkeypatch.setattr(lean, "_own", False)
    lean.settle()
    assert frozen == gc.get_freeze_count()
    monkeypatch.setattr(lean, "_own", True)
    try:
        lean.settle()
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
