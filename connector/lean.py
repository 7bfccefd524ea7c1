"""Process economies: modules kept out of a process that never uses them, and a quiet GC.

Keeping modules out:

pyarrow imports numpy at start-up when numpy is installed, and its first ``pa.array`` call
imports pandas when that is installed, only to ask whether the argument is a pandas object.
Neither is used here (pyarrow works without both), and in an environment that has them (an
Airflow worker, say) they cost the CLI about 0.3 s and 50 MB, pandas in the middle of a run.
Only processes that are entirely this tool's (the CLI and its worker processes) call
``keep_out``; a library user's process is left alone.

Likewise structlog imports rich (and pygments) at start-up when rich is installed (pyiceberg,
the ``iceberg`` extra, brings it), for its console's pretty tracebacks: about 75 ms before the
first request, for output this tool never asks for (without rich, structlog renders plain
tracebacks). rich stays importable (pyiceberg uses it to explain a schema mismatch); only
structlog's first import is made without it (``import_without``).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

UNUSED = ("numpy", "pandas")
"""What the CLI's and the workers' processes keep out."""


class _KeepOut:
    """A meta path finder (importlib.abc is not imported for it: that alone takes 30 ms)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"{fullname} is not used by oci-images", name=fullname)
        return None


def keep_out(*names: str) -> None:
    """Make ``names`` unimportable in this process, unless one is already imported."""
    absent = frozenset(n for n in names if n not in sys.modules)
    if absent and not any(isinstance(f, _KeepOut) for f in sys.meta_path):
        sys.meta_path.insert(0, _KeepOut(absent))


def own_process() -> None:
    """Set up a process that is entirely this tool's (the CLI's, the workers'), before pyarrow
    is imported: numpy and pandas kept out, structlog imported without rich, pyarrow's
    allocator returning freed memory at once."""
    global _own
    _own = True
    keep_out(*UNUSED)
    import_without("structlog", "rich", "pygments")
    prompt_allocator()


def is_own_process() -> bool:
    """Whether ``own_process`` set this process up: it is this tool's alone, so that it may
    fork its worker processes from itself (``connector.workers.spawn``)."""
    return _own


_own = False


def settle() -> None:
    """Put what this process holds so far (its modules, classes, functions and settings) out
    of the cyclic GC's reach, in this tool's own process only: it lives as long as the process,
    yet each full collection of a run would walk all of it. Called before the workers are
    forked, whose collections then leave the pages they share with it untouched."""
    if _own:
        gc.freeze()


def import_without(name: str, *hidden: str) -> None:
    """Import ``name`` while ``hidden`` cannot be imported (those already imported excepted),
    then make them importable again."""
    finder = _KeepOut(frozenset(h for h in hidden if h not in sys.modules))
    sys.meta_path.insert(0, finder)
    try:
        __import__(name)
    finally:
        sys.meta_path.remove(finder)


@contextmanager
def quiet_gc(threshold: int = 200_000) -> Iterator[None]:
    """Raise the GC's first threshold while millions of short-lived dicts come and go.

    Parsed records are freed by reference counting; the cyclic collector only wastes time on
    them (measured here: 1.5–2× on parsing). Existing objects are frozen so that the rarer
    full collections do not walk them either.
    """
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(threshold, previous[1], previous[2])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


def prompt_allocator() -> None:
    """Have pyarrow allocate with jemalloc and give freed memory back to the system within a
    second: its default allocator keeps freed pages, about 40 MB a worker over a large run,
    and giving them back at once makes every page's buffers fault in anew, about 0.08 CPU
    seconds an S1 run (``docs/performance.md``, "Memory"). Environment variables, so it must
    run before pyarrow is imported; a choice the user made in the environment is kept. Only for
    processes that are entirely this tool's (the CLI and its workers).
    """
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "dirty_decay_ms:1000,muzzy_decay_ms:0")


MMAP_THRESHOLD = 512 * 1024
"""Blocks at least this large are mapped apart and unmapped when freed (glibc's ``mallopt``).
Smaller ones, the socket's 256 KB read buffers and most page bodies among them, stay on the
heap, where the next response reuses them instead of faulting in fresh pages
(``docs/performance.md``, "Memory")."""

TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
"""Free memory at the heap's top kept for the next blocks (glibc's ``mallopt``): fixing the mmap
threshold also fixes this one at glibc's 128 KB, which would give a freed socket read's memory
back only to fault it in again for the next."""

PARSING_MMAP_THRESHOLD = 32 * 1024 * 1024
PARSING_TRIM_THRESHOLD = 16 * 1024 * 1024
"""glibc's thresholds where pages are parsed (see ``WORKER_MALLOC``)."""

WORKER_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(PARSING_MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(PARSING_TRIM_THRESHOLD),
}
"""glibc's settings for the worker processes, through their environment (``connector.spawn``):
orjson takes a block of about twelve times a page's size for its document and frees it after
the page, so the workers keep such blocks on the heap (mapped apart only from 32 MB, up to
16 MB kept free at its top) instead of mapping and faulting them in again for every page
(``docs/performance.md``, "The heap where pages are parsed")."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def fixed_mmap_threshold() -> None:
    """Keep glibc from holding on to freed page bodies (the fetching process of this tool's
    own only).

    glibc raises its mmap threshold to the largest block freed so far, so page bodies end up
    carved from the heap, whose holes are never given back; a fixed threshold maps the large
    ones apart and unmaps them when freed, and the heap keeps a little free memory at its top
    for the socket's reads (``TRIM_THRESHOLD``). Where pages are parsed, the settings differ
    (``WORKER_MALLOC``, ``parsing_heap``).
    """
    global _tuned
    _tuned = _mallopt({_M_MMAP_THRESHOLD: MMAP_THRESHOLD, _M_TRIM_THRESHOLD: TRIM_THRESHOLD})


def parsing_heap() -> None:
    """The worker processes' settings (``WORKER_MALLOC``) for this process, when it parses the
    pages itself (``fetch.workers = 0``, or a worker forked from the CLI); only where
    ``fixed_mmap_threshold`` has made the allocator this tool's to tune (the CLI), never in a
    library user's process. A setting the user made in the environment is kept.
    """
    if _tuned:
        _mallopt(
            {
                _M_MMAP_THRESHOLD: _user_setting("MALLOC_MMAP_THRESHOLD_", PARSING_MMAP_THRESHOLD),
                _M_TRIM_THRESHOLD: _user_setting("MALLOC_TRIM_THRESHOLD_", PARSING_TRIM_THRESHOLD),
            }
        )


def _user_setting(name: str, default: int) -> int:
    """glibc's setting ``name`` as the user made it in the environment, else ``default`` (the
    command line's ``fixed_mmap_threshold`` overrode the user's mmap threshold in its own
    process; a worker forked from it gets the user's back, as a boot interpreter would)."""
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default


_tuned = False


def _mallopt(settings: dict[int, int]) -> bool:
    """Apply glibc ``mallopt`` settings; False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    for option, value in settings.items():
        mallopt(option, value)
    return True
