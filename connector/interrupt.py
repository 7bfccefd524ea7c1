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

A library call (``connector.run``) leaves signals to its host, and its clean-up runs when the
host's own handler raises into it. A host that handles the signal itself and only tells the run
to stop, as Airflow 3's task runner does (SIGTERM calls the operator's ``on_kill`` and returns),
notes it with ``request`` inside ``noting`` and runs the work under ``until_noted``: the run
then stops exactly as the command's does.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

import anyio

from connector import logs
from connector.errors import ConnectorError, first_cause

log = logs.get_logger("connector.interrupt")

_received: int | None = None
POLL_S = 0.05
"""How often the running event loop looks for a noted signal."""
T = TypeVar("T")


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


def request(signum: int = signal.SIGTERM) -> None:
    """Note a stop the host asks for (from its own signal handler, or another thread): the run
    stops as if the command had received ``signum``. Safe in a signal handler: it only sets a
    flag, which the running event loop polls."""
    global _received
    if _received is None:
        _received = signum


@contextmanager
def noting() -> Iterator[None]:
    """A host's stretch of work that ``request`` may stop: no stop noted when it begins (an
    earlier task's, in the same process), none left when it ends. No handler is installed."""
    global _received
    _received = None
    try:
        yield
    finally:
        _received = None


async def until_noted(work: Callable[[], Awaitable[T]]) -> T | None:
    """Run ``work``; once a signal or a ``request`` is noted, cancel it (its clean-up runs, as
    for any failure) and return None. The work's own error is raised as itself, not inside the
    task group's exception group."""
    result: T | None = None
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(cancel_on_signal, group.cancel_scope)
            result = await work()
            group.cancel_scope.cancel()
    except BaseExceptionGroup as failure:
        # The run's own error, before a worker that only went away because of it.
        cause = first_cause(failure)
        if cause is None:
            raise
        raise cause from None
    return result


async def cancel_on_signal(scope: anyio.CancelScope) -> None:
    """Cancel ``scope`` as soon as a signal has been noted (run it in the scope's task group)."""
    # Polled: a signal handler may run between any two bytecodes of the event loop itself, so it
    # only sets a flag; setting an event there could corrupt the loop's state.
    while _received is None:  # noqa: ASYNC110
        await anyio.sleep(POLL_S)
    log.warning("run.interrupted", signal=signal.Signals(_received).name)
    scope.cancel()
