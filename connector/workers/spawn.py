"""Starting the worker processes: one fresh interpreter imports the worker code once, then
forks every worker from itself.

The interpreter is new (nothing is inherited from this process, whatever threads it runs),
and it forks before it has started any thread of its own, which is what makes forking safe.
The workers start at once and share the imported modules' pages. This process talks to each
over a socket pair; nothing else (no main-module re-import, no resource tracker) is involved.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass

from connector import lean
from connector.errors import ConnectorError

BOOT_MODULE = "connector.workers.boot"


@dataclass(slots=True)
class Launched:
    """The boot process and this process's end of each worker's socket pair."""

    process: subprocess.Popen[bytes]
    sockets: list[socket.socket]


def launch(count: int) -> Launched:
    """Start ``count`` workers; they wait for their setup on their socket."""
    pairs = [socket.socketpair() for _ in range(count)]
    theirs = [b.fileno() for _, b in pairs]
    for ours, _ in pairs:
        # Room for a whole page (about 1 MB), where the system allows it.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 << 20)
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
