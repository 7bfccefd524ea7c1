"""Starting the worker processes, which share the worker code's imported pages.

The command line forks the first from itself: its process is this tool's alone
(``lean.own_process``) and has started no thread yet, which is what makes forking safe, and it
has imported pyarrow already, so the workers cost no interpreter and no import of pyarrow of
their own (about 0.25 s of CPU a run). That worker imports the rest of the worker code and
forks the others, while the command line goes on with its own imports. Any other process (a
library user's, which may run threads that a fork would not copy) gets one fresh interpreter
(``connector.workers.boot``) that imports the worker code once, then forks every worker from
itself. Either way this process talks to each worker over a socket pair; nothing else (no
main-module re-import, no resource tracker) is involved.
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

    pid: int

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


@dataclass(slots=True)
class Launched:
    """The worker processes and this process's end of each worker's socket pair."""

    process: Processes
    sockets: list[socket.socket]


class Forked:
    """The first worker, forked from this process: waited for and killed as the boot process
    would be (it waits for the workers it forked in turn)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        """Its exit code, once it has exited; ``TimeoutExpired`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            try:
                done, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            except ChildProcessError:  # reaped already
                done, status = self.pid, 0
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            else:
                time.sleep(0.01)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


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
    """Fork the first worker from this process (the command line's, before its event loop);
    it imports the worker code and forks the others, as the boot interpreter does, so that
    this process goes on to its own imports meanwhile."""
    from connector.workers import boot

    # What is buffered would be written again by a child that flushes it.
    sys.stdout.flush()
    sys.stderr.flush()
    # Ctrl-C or SIGTERM at the moment of the fork must not raise in the child before it ignores
    # them: it would unwind into this process's code. Held back until the child ignores them.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        pid = os.fork()
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        raise _cannot_start(pairs, exc) from None
    if pid == 0:  # the first worker; it never returns
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            boot.forked([ours.fileno() for ours, _ in pairs], [b.fileno() for _, b in pairs])
        finally:
            os._exit(1)
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    for _, theirs in pairs:
        theirs.close()
    return Launched(Forked(pid), [ours for ours, _ in pairs])


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
        raise _cannot_start(pairs, exc) from None
    for _, end in pairs:
        end.close()
    return Launched(process, [ours for ours, _ in pairs])


def _cannot_start(pairs: list[tuple[socket.socket, socket.socket]], exc: OSError) -> ConnectorError:
    """The error when no worker process could be started; every socket of ``pairs`` closed."""
    for pair in pairs:
        for end in pair:
            end.close()
    return ConnectorError(
        f"cannot start worker processes ({exc.strerror}); fetch.workers = 0 runs without"
    )


def abandon(launched: Launched) -> None:
    """Stop workers that will not be used: closing their sockets ends them; wait for that."""
    for sock in launched.sockets:
        sock.close()
    try:
        launched.process.wait(5.0)
    except subprocess.TimeoutExpired:
        launched.process.kill()
        launched.process.wait()
