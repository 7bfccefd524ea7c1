"""The worker processes' program: ``python -m connector._worker_boot FD [FD ...]``.

It keeps numpy and pandas out (pyarrow imports numpy when it can, and its first ``pa.array``
call imports pandas when that is installed, only to ask whether the argument is a pandas
object: about 0.3 s and 40 MB a process for nothing a worker uses), imports the worker code
once, and forks a worker for each socket it was given but the first, which it serves itself.
It then waits for the others, and exits with failure if any worker failed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def main(fds: list[int]) -> int:
    from connector import lean

    lean.keep_out("numpy", "pandas")
    import connector.normalize  # noqa: F401  (loaded once, shared by every worker)
    from connector import workers

    # Ctrl-C reaches the whole process group; the coordinator decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if threading.active_count() != 1:  # forking is only safe without other threads
        raise RuntimeError("worker boot: threads started before forking")
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
        workers.serve_fd(fds[0], 0, len(fds))
    finally:
        failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    return 1 if failed else 0


def _serve_only(fd: int, index: int, fds: list[int]) -> None:
    """A forked worker: serve its socket, then leave without the parent's clean-up."""
    from connector import workers

    for other in fds:
        if other != fd:
            os.close(other)
    code = 1
    try:
        workers.serve_fd(fd, index, len(fds))
        code = 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    code = main([int(fd) for fd in sys.argv[1:]])
    sys.stderr.flush()
    os._exit(code)  # nothing left to clean up; the interpreter's teardown would take 50 ms
