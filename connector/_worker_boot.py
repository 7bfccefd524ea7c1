"""The worker processes' program: ``python -m connector._worker_boot FD [FD ...]``.

It keeps numpy and pandas out (pyarrow imports numpy when it can, and its first ``pa.array``
call imports pandas when that is installed, only to ask whether the argument is a pandas
object: about 0.3 s and 40 MB a process for nothing a worker uses), imports the worker code
once, and forks one worker per socket it was given. It then waits for them, and exits with
failure if any of them failed.
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
    for index, fd in enumerate(fds):
        pid = os.fork()
        if pid == 0:
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
        children.append(pid)
    for fd in fds:
        os.close(fd)
    failed = 0
    for pid in children:
        _, status = os.waitpid(pid, 0)
        failed += status != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main([int(fd) for fd in sys.argv[1:]]))
