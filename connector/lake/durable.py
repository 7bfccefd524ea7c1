"""Durable writes and the partition swap on a local disk; repair and clean-up at each start.

A rename is atomic, but only durable once the folder holding it is flushed, and a file renamed
into place is only whole once its own data was flushed first. So, on a local disk:

- every data file, the manifest and ``_SUCCESS`` are fsynced before the swap (``fsync_file``,
  ``write_durably``: a temporary file, fsync, rename, fsync of the folder);
- the swap exchanges the staged partition and the published one in one step where the kernel
  can (Linux ``renameat2(RENAME_EXCHANGE)``): a reader never finds the date missing. Elsewhere it
  is two renames (published → ``_trash``, staged → published), each followed by an fsync of the
  folders involved; a crash between them leaves the old partition in ``_trash``, which
  ``repair`` (at the start of ``run`` and of ``commit``) puts back;
- the staging left by dead attempts is removed at the next start, as soon as its owner (the pid
  and machine in its ``_owner.json``) is known to be gone: no waiting for days on a full disk.

Object stores need none of this; there the functions that only make sense on a disk do
nothing. What they need instead concerns whole documents (the manifest, the journal, the run
records, the lock files):

- **A write appears whole or not at all, with one upload.** pyarrow's S3 output stream uploads
  every object, however small, as a multipart upload: the key only comes into being with
  CompleteMultipartUpload, which the client sends after every part was acknowledged. A writer
  killed mid-upload leaves at most an unfinished upload (invisible, removed by the bucket's
  lifecycle rule), never a cut object. Under that, a cut request body is not stored by any S3
  server: a body shorter than its Content-Length, or an ``aws-chunked`` body without its final
  chunk, is an incomplete request (tests/test_s3_store.py checks both against moto, and our own
  upload killed at random moments). A temporary key plus a server-side copy would cost two more
  requests per document and leave keys to clean up after a kill, for no further guarantee.
  Content-MD5 is no help either: moto, for one, does not check it.
- **A read can be torn, so documents are read until they parse** (``read_json``). pyarrow's S3
  input stream asks for the size (HEAD), then for that many bytes (a ranged GET). When the
  object is replaced in between, it returns the new object's first N bytes, N being the old
  one's size: a reader that follows ``_manifest.json`` during a commit, or right after a commit
  was killed while its last request was still in flight on the server, reads a manifest cut
  short although the store only ever held whole ones. Such a read does not parse (a JSON object
  cut anywhere before its closing brace is invalid), so it is read again. Any reader of these
  documents that reads them the same way (HEAD, then ranged GETs) should retry likewise.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
import pyarrow.fs as pafs
import structlog

from connector import names
from connector.lake import door, lock

log = structlog.get_logger("connector.lake.durable")

JOURNAL = "_commit.json"
"""A commit's journal on an object store (``connector.lake.objectstore``): the attempt folder that
holds one is left to ``objectstore.recover``, which finishes or rolls the commit back, even
when its owner is dead."""

STALE_COMPLETED_S = 7 * 86400
"""Finished shards whose run was never committed are kept this long for a late ``commit``."""

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def is_local(fs: pafs.FileSystem) -> bool:
    """Whether ``fs`` is a local disk (renames, fsync and pids mean something there)."""
    return isinstance(fs, pafs.LocalFileSystem)


def fsync_path(path: str, *, directory: bool = False) -> None:
    """Flush a file's (or a folder's) data and metadata to the disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(fs: pafs.FileSystem, path: str) -> None:
    """fsync a finished file on a local disk (any descriptor of the file flushes it)."""
    if is_local(fs):
        fsync_path(path)


def fsync_tree(fs: pafs.FileSystem, root: str) -> None:
    """fsync every file and folder below ``root`` (bottom-up), then ``root`` itself."""
    if not is_local(fs):
        return
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder, directory=True)


def write_durably(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a whole file so that a crash leaves the old content or the new, never a part.

    Local: a temporary file beside it, fsync, rename over, fsync of the folder. Object stores:
    one upload, which creates the object whole when it completes (see the module docstring).
    """
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not is_local(fs):
        with fs.open_output_stream(path, compression=None) as out:
            out.write(data)
        return
    temporary = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_path(parent, directory=True)


def write_json(fs: pafs.FileSystem, path: str, payload: Any) -> None:
    """``write_durably`` a JSON document."""
    write_durably(fs, path, orjson.dumps(payload, option=orjson.OPT_INDENT_2) + b"\n")


TORN_READ_ATTEMPTS = 8
"""Reads of a document on an object store before one that does not parse is an error: a torn
read needs an overwrite between two requests of one read, so a second one is almost always
whole; the backoff (5 ms doubling, 1.3 s in all) outlasts a burst of overwrites."""


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """Read a JSON document whole (see the module docstring: reads on object stores can be
    torn by a concurrent overwrite, and are then repeated)."""
    for attempt in itertools.count(1):
        try:
            with fs.open_input_stream(path, compression=None) as stream:
                data = stream.read()
            return orjson.loads(data)
        except FileNotFoundError:
            raise
        except (orjson.JSONDecodeError, OSError):
            # OSError: the object shrank or went between the size and the bytes.
            if is_local(fs) or attempt >= TORN_READ_ATTEMPTS:
                raise
            log.debug("read.torn", path=path, attempt=attempt)
            time.sleep(0.005 * 2**attempt)
    raise AssertionError("unreachable")


def exchange(first: str, second: str) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    result = renameat2(
        _AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE
    )
    if result == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem or kernel cannot
        return False
    raise OSError(errno, os.strerror(errno), first)


def swap_in(fs: pafs.FileSystem, base: str, staged: str, published: str, trash: str) -> None:
    """Put the staged partition where the published one is, on a local disk.

    ``staged`` (complete, with manifest and ``_SUCCESS``) must be inside ``_staging``, ``trash``
    inside ``_trash``. Afterwards the old partition is deleted.
    """
    parent = published.rsplit("/", 1)[0]
    os.makedirs(parent, exist_ok=True)
    fsync_tree(fs, staged)
    if os.path.isdir(published) and exchange(staged, published):
        # The old partition now sits at the staged path, inside this run's staging.
        fsync_path(parent, directory=True)
        fsync_path(staged.rsplit("/", 1)[0], directory=True)
        door.guarded_delete(fs, base, staged)
        return
    if os.path.isdir(published):
        os.makedirs(trash.rsplit("/", 1)[0], exist_ok=True)
        os.rename(published, trash)
        fsync_path(trash.rsplit("/", 1)[0], directory=True)
        fsync_path(parent, directory=True)
    os.rename(staged, published)
    fsync_path(parent, directory=True)
    if os.path.isdir(trash):
        door.guarded_delete(fs, base, trash)


def _trash_partitions(fs: pafs.FileSystem, base: str) -> Iterator[tuple[str, str]]:
    """(dataset, path) of every partition waiting in ``_trash`` (any depth)."""
    selector = pafs.FileSelector(f"{base}/{door.TRASH}", allow_not_found=True, recursive=True)
    for entry in fs.get_file_info(selector):
        if entry.type == pafs.FileType.Directory and names.PARTITION.fullmatch(entry.base_name):
            dataset = entry.path.rsplit("/", 2)[-2]
            yield (dataset if dataset in names.DATASETS else "images"), entry.path


def repair(
    fs: pafs.FileSystem, base: str, owner: lock.Owner, held: Iterable[str] = ()
) -> list[str]:
    """Finish or undo interrupted swaps; returns the partitions put back.

    A partition in ``_trash`` whose published place is empty was moved aside by a swap that
    died before its second rename: it goes back. One whose place is filled is leftover of a
    finished swap: it is deleted. Each date is handled under its lock (``held``: the dates this
    process holds already); a date another live run holds is left to that run.
    """
    restored: list[str] = []
    if not is_local(fs):
        return restored
    held_dates = set(held)
    for dataset, path in sorted(_trash_partitions(fs, base)):
        day = path.rsplit("=", 1)[1]
        published = f"{base}/{dataset}/snapshot_date={day}"
        guard: Any = contextlib.nullcontext()
        if day not in held_dates:
            guard = lock.date_lock(fs, base, day, owner)
        try:
            with guard:
                if not os.path.isdir(path):
                    continue
                if os.path.isdir(published):
                    door.guarded_delete(fs, base, path)
                else:
                    os.makedirs(published.rsplit("/", 1)[0], exist_ok=True)
                    os.rename(path, published)
                    fsync_path(published.rsplit("/", 1)[0], directory=True)
                    restored.append(f"{dataset}/snapshot_date={day}")
                    log.warning("publish.restored", partition=published)
        except lock.LockHeld:
            continue
    _remove_empty_folders(fs, base, door.TRASH)
    return restored


def referenced_attempts(fs: pafs.FileSystem, base: str, run_id: str) -> dict[str, tuple[str, int]]:
    """The attempts that a finished shard of ``run_id`` points to: attempt → (the shard
    manifest's path, the run's shard count)."""
    folder = f"{base}/{door.STAGING}/{run_id}/shards"
    attempts: dict[str, tuple[str, int]] = {}
    for entry in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        if not entry.base_name.endswith(".json"):
            continue
        try:
            with fs.open_input_stream(entry.path, compression=None) as stream:
                manifest = orjson.loads(stream.read())
            attempt = manifest["attempt"]
            count = int((manifest.get("shard") or {}).get("count", 1))
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if isinstance(attempt, str):
            attempts[attempt] = (entry.path, count)
    return attempts


def clean_dead_staging(fs: pafs.FileSystem, base: str, *, now: float | None = None) -> list[str]:
    """Remove the staging of attempts whose owner is gone; returns what was removed.

    Kept: attempts whose owner may still run (alive, or on another machine before its expiry),
    and the finished shards of a sharded run, which wait for ``commit`` (for a week at most;
    a retried shard replaces its own). A whole run (one shard) commits itself: if its owner
    died, nobody will, and it goes with its manifest. An attempt folder with no readable owner
    file is removed once a minute old (its process died before writing it, or a straggler
    wrote into it after its owner removed it); on object stores, which keep no folder times,
    its age is its newest file's. A dead commit's
    folder holding its journal (object stores) stays for ``objectstore.recover``, which
    finishes or rolls back that commit under the date's lock and then removes it.
    """
    moment = now or time.time()
    removed: list[str] = []
    by_run: dict[str, dict[str, tuple[str, int]]] = {}
    for run_id, attempt, folder in list(lock.iter_attempts(fs, base)):
        if run_id not in by_run:
            by_run[run_id] = referenced_attempts(fs, base, run_id)
        info = fs.get_file_info(folder)
        changed = info.mtime.timestamp() if info.mtime else None
        owner = lock.attempt_owner(fs, folder)
        if owner is None and changed is None:
            changed = _newest_object(fs, folder)  # object stores keep no folder times
        age = moment - changed if changed is not None else 0.0
        dead = (
            owner.state(moment) == "dead"
            if owner is not None
            else changed is not None and age > lock.UNREADABLE_GRACE_S
        )
        referenced = by_run[run_id].get(attempt)
        if referenced is not None:
            manifest, count = referenced
            if count > 1 and age <= STALE_COMPLETED_S:
                continue
            if count > 1 or dead:
                door.guarded_delete(fs, base, manifest)
                door.guarded_delete(fs, base, folder)
                del by_run[run_id][attempt]
                removed.append(f"{run_id}/{attempt}")
            continue
        if dead:
            if fs.get_file_info(f"{folder}/{JOURNAL}").type == pafs.FileType.File:
                continue  # a killed commit: objectstore.recover repairs it, then it goes
            door.guarded_delete(fs, base, folder)
            removed.append(f"{run_id}/{attempt}")
    for run_id in by_run:
        run_dir = f"{base}/{door.STAGING}/{run_id}"
        door.remove_empty_dir(fs, base, f"{run_dir}/shards")
        door.remove_empty_dir(fs, base, run_dir)
    if removed:
        log.info("staging.cleaned", removed=removed)
    return removed


def _newest_object(fs: pafs.FileSystem, folder: str) -> float | None:
    """When the newest file below ``folder`` was written (epoch seconds); None if none is."""
    selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
    times = [i.mtime.timestamp() for i in fs.get_file_info(selector) if i.mtime is not None]
    return max(times, default=None)


def _remove_empty_folders(fs: pafs.FileSystem, base: str, top: str) -> None:
    """Remove empty folders below ``{base}/{top}`` and ``top`` itself (local disk only)."""
    root = f"{base}/{top}"
    if not is_local(fs) or not os.path.isdir(root):
        return
    for folder, _dirs, _files in os.walk(root, topdown=False):
        door.remove_empty_dir(fs, base, folder)
