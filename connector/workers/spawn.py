"""Starting the worker processes, which share the worker code's imported pages.

The command line forks them from itself: its process is this tool's alone
(``lean.own_process``) and has started no thread yet, which is what makes forking safe, and it
has imported pyarrow already, so the workers cost no interpreter and no import of their own
(about 0.25 s of CPU a run). Any other process (a library user's, which may run threads that a
fork would not copy) gets one fresh interpreter (``connector.workers.boot``) that imports the
worker code once, then forks every worker from itself. Either way this process talks to each
worker over a socket pair; nothing else (no main-module re-import, no resource tracker) is
involved.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Protocol

from connector import lean
from connector.errors import ConnectorError

BOOT_MODULE = "connector.workers.boot"


class Processes(Protocol):
    """What the coordinator waits for: the boot process (``subprocess.Popen``), or the workers
    forked from this one (``Forked``)."""

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


@dataclass(slots=True)
class Launched:
    """The worker processes and this process's end of each worker's socket pair."""

    process: Processes
    sockets: list[socket.socket]


class Forked:
    """The workers forked from this process, waited for and killed together, as one boot
    process would be."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._codes: dict[int, int] = {}

    def wait(self, timeout: float | None = None) -> int:
        """Wait until every worker has exited; their worst exit code. ``TimeoutExpired`` if
        one is still running after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for pid in self.pids:
            while pid not in self._codes:
                try:
                    done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
                except ChildProcessError:  # reaped elsewhere
                    done, status = pid, 0
                if done:
                    self._codes[pid] = os.waitstatus_to_exitcode(status)
                elif deadline is not None and time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(f"worker {pid}", timeout or 0.0)
                else:
                    time.sleep(0.01)
        return max(self._codes.values(), key=abs, default=0)

    def kill(self) -> None:
        for pid in self.pids:
            if pid not in self._codes:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def launch(count: int) -> Launched:
    """Start ``count`` workers; they wait for their setup on their socket."""
    pairs = [socket.socketpair() for _ in range(count)]
    for ours, _ in pairs:
        # Room for a whole page (about 1 MB), where the system allows it.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 << 20)
    if lean.is_own_process() and threading.active_count() == 1 and hasattr(os, "fork"):
        return _fork(pairs)
    return _boot(pairs)


def _fork(pairs: list[tuple[socket.socket, socket.socket]]) -> Launched:
    """Fork the workers from this process (the command line's, before its event loop)."""
    from connector.workers import boot

    boot.preload()
    # What is buffered would be written again by every child that flushes it.
    sys.stdout.flush()
    sys.stderr.flush()
    fds = [end.fileno() for pair in pairs for end in pair]
    pids: list[int] = []
    try:
        for index, (_, theirs) in enumerate(pairs):
            pid = os.fork()
            if pid == 0:  # the worker; it never returns
                mine = theirs.fileno()
                boot.fork_worker(mine, index, len(pairs), [fd for fd in fds if fd != mine])
            pids.append(pid)
    except OSError as exc:
        forked = Forked(pids)
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
        forked.wait()
        raise ConnectorError(
            f"cannot start worker processes ({exc.strerror}); fetch.workers = 0 runs without"
        ) from None
    for _, theirs in pairs:
        theirs.close()
    return Launched(Forked(pids), [ours for ours, _ in pairs])


def _boot(pairs: list[tuple[socket.socket, socket.socket]]) -> Launched:
    """One fresh interpreter that imports the worker code and forks the workers."""
    theirs = [b.fileno() for _, b in pairs]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # import what this process does
    for name, value in lean.WORKER_MALLOC.items():  # a setting the user made is kept
        env.setdefault(name, value)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", BOOT_MODULE, *map(str, theirs)],
            pass_fds=theirs,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except OSError as exc:
        for pair in pairs:
            for end in pair:
                end.close()
        raise ConnectorError(
            f"cannot start worker processes ({exc.strerror}); fetch.workers = 0 runs without"
        ) from None
    for _, end in pairs:
        end.close()
    return Launched(process, [ours for ours, _ in pairs])


def abandon(launched: Launched) -> None:
    """Stop workers that will not be used: closing their sockets ends them; wait for that."""
    for sock in launched.sockets:
        sock.close()
    try:
        launched.process.wait(5.0)
    except subprocess.TimeoutExpired:
        launched.process.kill()
        launched.process.wait()
