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

import ctypes
import itertools
import os
import secrets
import time
from typing import Any

import orjson
import pyarrow.fs as pafs

from connector import logs
from connector.lake import door

log = logs.get_logger("connector.lake.durable")

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
        door.discard_temporary(temporary)
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
