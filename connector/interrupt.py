"""SIGINT and SIGTERM: the run stops, removes its own staging, publishes nothing, exits 130/143.

The command line installs plain handlers (``handle_signals``) that only note the signal; the
run's task group is then cancelled from inside the event loop (``cancel_on_signal``), so every
clean-up path runs as it does for any failure, and no ``KeyboardInterrupt`` ever surfaces from
inside a task group as an exception group. The commit checks the note just before its swap
(``check``): a signal that arrives before the swap stops it; one that arrives during the swap
(two renames, or one exchange, and a few fsyncs) is honoured once the swap is complete, so the
published partition is the old one or the new one, never neither.

A second signal restores the default action: a user pressing Ctrl-C twice gets out at once, and
the next start removes what was left (the attempt's owner is then gone).

Airflow sends SIGTERM to stop a task; a library call (``connector.run``) leaves signals to its
host, and its clean-up runs when the host's own handler raises into it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import anyio

from connector import logs
from connector.errors import ConnectorError

log = logs.get_logger("connector.interrupt")

_received: int | None = None
POLL_S = 0.05
"""How often the running event loop looks for a noted signal."""


class Interrupted(ConnectorError):
    """SIGINT or SIGTERM stopped the run: nothing was published, its staging was removed."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; nothing published, this run's staging removed")


def received() -> int | None:
    """The signal noted since the handlers were installed, if any."""
    return _received


def check() -> None:
    """Raise ``Interrupted`` if a signal was noted (the last point a commit can stop)."""
    if _received is not None:
        raise Interrupted(_received)


def _note(signum: int, _frame: FrameType | None) -> None:
    global _received
    if _received is None:
        _received = signum
        # A second signal acts at once (the default action).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Note SIGINT and SIGTERM instead of acting on them (main thread only; elsewhere a no-op)."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {s: signal.signal(s, _note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


async def cancel_on_signal(scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` as soon as a signal has been noted (run it in the scope's task group)."""
    # Polled: a signal handler may run between any two bytecodes of the event loop itself, so it
    # only sets a flag; setting an event there could corrupt the loop's state.
    while _received is None:  # noqa: ASYNC110
        await anyio.sleep(POLL_S)
    log.warning("run.interrupted", signal=signal.Signals(_received).name)
    scope.cancel()
