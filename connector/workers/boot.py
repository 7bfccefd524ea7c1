"""The worker processes' program: ``python -m connector.workers.boot FD [FD ...]``.

The command line forks the first worker from itself instead, which then does what this program
does (``forked``, see ``connector.workers.spawn``); this program serves every other caller, such
as a library user's process, which may run threads that forking would not copy.

It keeps numpy and pandas out (pyarrow imports numpy when it can, and its first ``pa.array``
call imports pandas when that is installed, only to ask whether the argument is a pandas
object: about 0.3 s and 40 MB a process for nothing a worker uses), imports the worker code
once, and forks a worker for each socket it was given but the first, which it serves itself.
It then waits for the others, and exits with failure if any worker failed.

Nothing heavy is imported at the top of this module: ``keep_out`` must come first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from connector.workers.protocol import Readable


NAME = "oci-images-work"
"""A worker process's name (``/proc/PID/comm``, what ``ps -o comm`` and ``pgrep`` show)."""


def preload() -> None:
    """Import the worker code, once, before forking: every worker shares its pages."""
    import connector.workers.normalize
    import connector.workers.page
    import connector.workers.protocol  # noqa: F401


def main(fds: list[int]) -> int:
    from connector import lean

    lean.own_process()
    preload()
    if threading.active_count() != 1:  # forking is only safe without other threads
        raise RuntimeError("worker boot: threads started before forking")
    _become_worker()
    children = []
    for index, fd in enumerate(fds[1:], start=1):
        pid = os.fork()
        if pid == 0:
            _serve_only(fd, index, fds)
        children.append(pid)
    # This process is worker 0: one process fewer, and its imported state is not idle.
    for fd in fds[1:]:
        os.close(fd)
    try:
        serve(fds[0], 0, len(fds))
    finally:
        failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    return 1 if failed else 0


def forked(ours: list[int], theirs: list[int]) -> None:
    """The life of the first worker when the command line forked it (``spawn``): ``main``'s,
    in a process that has pyarrow imported already. It never returns.

    ``ours`` are the command line's ends of the socket pairs, closed here; ``theirs`` the
    workers' ends. ``spawn`` has made it ignore SIGINT and SIGTERM already. The parsing heap's
    settings, which a boot interpreter gets from its environment, are made here (the other
    workers inherit them)."""
    code = 1
    try:
        from connector import lean

        for fd in ours:
            os.close(fd)
        lean.parsing_heap()
        code = main(theirs)
    except Exception as exc:  # the coordinator reports the worker gone; this says why
        print(f"oci-images: worker process failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        _leave(code)


def _leave(code: int) -> NoReturn:
    """End a forked worker without the clean-up of the process it was forked from: whatever
    happens to its last output (stderr a closed pipe), it must never return into that
    process's code."""
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _become_worker() -> None:
    # Ctrl-C (and a scheduler's SIGTERM to the process group) reaches every process; the
    # coordinator decides what happens, and a worker ends when its socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Named apart from the command line it may have been forked from (Linux only).
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(NAME)


def _serve_only(fd: int, index: int, fds: list[int]) -> None:
    """A forked worker: serve its socket, then leave without the parent's clean-up."""
    for other in fds:
        if other != fd:
            os.close(other)
    code = 1
    try:
        serve(fd, index, len(fds))
        code = 0
    finally:
        _leave(code)


def serve(fd: int, index: int, count: int) -> None:
    """A worker process's loop: its setup, then pages in, listing results and finally the
    file list out (see ``connector.workers.protocol``)."""
    from connector.lean import quiet_gc

    with (
        quiet_gc(),
        socket.socket(fileno=fd) as sock,
        sock.makefile("rb", buffering=1 << 20) as incoming,
    ):
        try:
            _serve(sock, incoming, index, count)
        except ConnectionError:
            # The coordinator went away (a run that stopped during discovery, before it needed
            # its workers): no one to tell, and a traceback here would reach the user's terminal.
            return


def _serve(sock: socket.socket, incoming: Readable, index: int, count: int) -> None:
    """``serve``'s conversation; ``ConnectionError`` when the coordinator has gone."""
    from connector.pages import Page
    from connector.workers import protocol
    from connector.workers.page import PageWorker

    first = protocol.read(incoming)
    if not isinstance(first, protocol.Setup):
        return
    try:
        worker = PageWorker(first.setup, index, count)
    except Exception as exc:
        protocol.write(sock, protocol.Failed(f"{type(exc).__name__}: {exc}"))
        return
    protocol.write(sock, protocol.Ready(os.getpid()))
    protocol.heartbeat(sock, first.setup.heartbeat_s / 4)
    while True:
        message = protocol.read(incoming)
        if message is None:  # the coordinator went away, or gave up after a failure
            worker.discard()
            return
        reply: protocol.FromWorker | None = None
        try:
            if isinstance(message, Page):
                reason = worker.page(message)
                reply = protocol.Verdict(message.item, message.number, reason)
            elif isinstance(message, protocol.End):
                reply = protocol.Result(worker.end(message.item, message.pages, message.error))
            elif isinstance(message, protocol.Flush):
                worker.flush()
            elif isinstance(message, protocol.Close):
                reply = protocol.Finished(worker.close(message.donate))
        except Exception as exc:  # reported to the coordinator, which fails the run
            with contextlib.suppress(Exception):
                # Its files may be broken already (a full disk closes them): removing them
                # must not hide the cause, which the coordinator reports.
                worker.discard()
            protocol.write(sock, protocol.Failed(f"{type(exc).__name__}: {exc}"))
            return
        if reply is None:
            continue
        try:
            protocol.write(sock, reply)
        except ConnectionError:
            if not isinstance(message, protocol.Close):
                worker.discard()
            raise
        if isinstance(message, protocol.Close):
            return


if __name__ == "__main__":
    code = main([int(fd) for fd in sys.argv[1:]])
    sys.stderr.flush()
    os._exit(code)  # nothing left to clean up; the interpreter's teardown would take 50 ms
