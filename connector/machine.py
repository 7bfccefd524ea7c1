"""This process and this machine as a lock file or a shared state file records them: the pid
with its start time (so a reused pid is not mistaken for its former owner), the kernel's boot
id and the pid namespace (a pid seen in a file can only be checked from the same machine,
boot and container)."""

from __future__ import annotations

import os


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (``/proc/PID/stat`` field 22)."""
    text = _read_text(f"/proc/{pid}/stat")
    if not text:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def boot_id() -> str:
    """The kernel's id of this boot (Linux), or "" where there is none."""
    return _read_text("/proc/sys/kernel/random/boot_id") or ""


def identity() -> tuple[str, str]:
    """This machine's boot id and pid namespace: equal on both sides only when a pid seen in a
    lock file can be checked here (not after a reboot, not from another container)."""
    boot = boot_id()
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return boot, namespace


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether process ``pid`` exists here and, when ``started`` is known, is the same process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by someone else
    if started is not None:
        now = process_start(pid)
        if now is not None and now != started:
            return False  # the pid was reused by another process
    return True


def process_running(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` (started at ``started``) still runs: alive and not a zombie (an exited
    process its parent has not waited for yet, an orphan's until init does)."""
    if not pid_alive(pid, started):
        return False
    text = _read_text(f"/proc/{pid}/stat")
    if not text:
        return True  # no /proc here: alive is all that is known
    state = text.rsplit(")", 1)[1].split()[:1]
    return state != ["Z"]
