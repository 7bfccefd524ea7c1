"""The one door every deletion under the output goes through.

Deleting is the one irreversible thing the connector does, so it has one function,
``guarded_delete``. It refuses anything that is not strictly inside ``{uri}/_staging/`` or
``{uri}/_trash/`` (or a superseded file of the partition being replaced, listed by the caller,
or a whole partition or run record that ``output.keep_days`` expired, by the rule of
``Expiry``), and on a local disk it refuses to follow a symbolic link out of those folders. A
bug elsewhere then fails loudly instead of removing a sibling team's data.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow.fs as pafs

from connector import logs, names
from connector.errors import ConnectorError
from connector.lake import layout, s3client
from connector.lake.layout import STAGING, TRASH
from connector.names import DATASETS, PARTITION

log = logs.get_logger("connector.lake.door")


class DeletionRefused(ConnectorError):
    """A deletion outside the connector's own folders was attempted; nothing was deleted.

    This is a bug or a hostile input, never an operating condition: the run stops.
    """


@dataclass(frozen=True, slots=True)
class Superseded:
    """Files of a published partition that no manifest in force lists: the previous run's,
    once a new run's manifest replaced it, or a killed commit's copies, rolled back.

    On object stores, where a partition cannot be renamed away, the commit writes the new files
    beside the old ones and then deletes exactly these.
    """

    partition: str
    """``{base}/{dataset}/snapshot_date=YYYY-MM-DD``."""
    files: frozenset[str]
    """Full paths, each inside ``partition``."""


@dataclass(frozen=True, slots=True)
class Expiry:
    """What ``output.keep_days`` lets go: whole partitions of any dataset, and run records,
    dated before ``keep_from``. Made by ``expiry``, which finds the newest complete snapshot
    itself rather than taking a caller's word for it.

    The rule, checked for every deletion: a partition (``{dataset}/snapshot_date=D``, a
    dataset of ``names.DATASETS``) goes only if D is before ``keep_from``, D is not the newest
    complete (``_SUCCESS``) snapshot date of ``images`` (a lake whose runs stopped keeps its
    last good snapshot, and its companions, however old), and no lock of D exists but one the
    caller holds (``held``: a run or commit of D may be writing it). A run record
    (``_runs/RUN_ID.json``) goes only if the snapshot date it records is before ``keep_from``.
    """

    keep_from: str
    """The oldest snapshot date kept (YYYY-MM-DD)."""
    newest_complete: str | None
    """The newest date of ``images`` with ``_SUCCESS`` when the expiry was made."""
    held: frozenset[str] = frozenset()
    """Dates whose lock the caller holds."""


def expiry(fs: pafs.FileSystem, base: str, keep_from: str, held: Iterable[str] = ()) -> Expiry:
    """The ``Expiry`` of the output under ``base``: what is older than ``keep_from`` may go,
    but never the newest complete snapshot of ``images`` (looked up here)."""
    check_base(base)
    names.check_snapshot_date(keep_from)
    root = layout.dataset_root(base, layout.IMAGES)
    complete = [
        entry.base_name.split("=", 1)[1]
        for entry in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
        if PARTITION.fullmatch(entry.base_name)
        and layout.exists(fs, f"{entry.path}/{layout.SUCCESS}")
    ]
    return Expiry(keep_from, max(complete, default=None), frozenset(held))


def guarded_delete(
    fs: pafs.FileSystem,
    base: str,
    target: str,
    *,
    superseded: Superseded | None = None,
    expired: Expiry | None = None,
    missing_ok: bool = True,
) -> None:
    """Delete ``target`` (a folder with all it holds, or a file), if it is ours to delete.

    Allowed: anything strictly inside ``{base}/_staging/`` or ``{base}/_trash/``; with
    ``superseded``, one of the files it lists; with ``expired``, a whole partition or a run
    record its rule lets go. Anything else raises ``DeletionRefused`` and nothing is deleted.
    Every deletion in the connector goes through here.
    """
    check_base(base)
    relative = _inside(base, target)
    parts = relative.split("/")
    if parts[0] in (STAGING, TRASH) and len(parts) >= 2:
        pass
    elif superseded is not None and target in superseded.files:
        _check_superseded(base, superseded, target)
    elif expired is not None:
        _check_expired(fs, base, expired, parts)
    else:
        raise DeletionRefused(
            f"refusing to delete {target!r}: only {base}/{STAGING}/…, {base}/{TRASH}/…, "
            "superseded files of the partition being replaced and expired partitions may be "
            "deleted"
        )
    if isinstance(fs, pafs.LocalFileSystem):
        _delete_local(base, relative, target, missing_ok)
        return
    info = fs.get_file_info(target)
    if info.type == pafs.FileType.NotFound:
        if not missing_ok:
            raise FileNotFoundError(target)
        return
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(target)
    else:
        fs.delete_file(target)


def discard_files(fs: pafs.FileSystem, base: str, targets: Iterable[str]) -> None:
    """``guarded_delete`` each of ``targets`` while a failure is being handled: an error
    deleting one (the store unreachable) is logged, never raised over the failure itself."""
    for target in targets:
        try:
            guarded_delete(fs, base, target)
        except OSError as exc:
            log.warning("discard.failed", path=target, error=str(exc))


def remove_empty_dir(fs: pafs.FileSystem, base: str, target: str) -> bool:
    """Remove ``target`` if it is an empty folder at or below ``_staging`` or ``_trash``.

    Only where that cannot take anything else with it: ``rmdir`` on a local disk (one atomic
    step; checking for emptiness and then deleting would race with another run creating its
    staging there), and on S3 the folder's marker alone (``_remove_marker``). Other object
    stores keep no empty folders. Returns whether it was removed.
    """
    check_base(base)
    relative = _inside(base, target)
    if relative.split("/")[0] not in (STAGING, TRASH):
        raise DeletionRefused(f"refusing to remove {target!r}: not below {STAGING} or {TRASH}")
    if isinstance(fs, pafs.S3FileSystem):
        return _remove_marker(fs, target)
    if not isinstance(fs, pafs.LocalFileSystem):
        return False
    try:
        os.rmdir(target)
    except OSError:  # not empty, already gone, or not a folder
        return False
    return True


def _remove_marker(fs: pafs.S3FileSystem, target: str) -> bool:
    """Delete the zero-byte ``target/`` object pyarrow keeps for a folder, when it is the only
    object under ``target/``; whether it was deleted.

    One DeleteObject of that one key, never a prefix: S3 has no folders, so a run that writes
    below ``target`` between the listing and the delete keeps every object it wrote, and its
    writes need no marker (pyarrow opens a file for writing without looking at its folder, and
    sees a prefix with objects under it as a folder). The worst such a race does is leave the
    folder without its marker. Without botocore the marker stays. An error (the store
    unreachable, the delete not permitted, a botocore setting it cannot read) leaves it too: a
    marker holds nothing, and removing one must never fail what called for it.
    """
    try:
        client = s3client.client(fs)
    except Exception as exc:  # botocore's own configuration (AWS_CONFIG_FILE, a profile) broken
        log.warning("discard.failed", path=target, error=f"{type(exc).__name__}: {exc}")
        return False
    if client is None:
        return False
    import botocore.exceptions

    bucket, _, key = target.partition("/")
    marker = key.rstrip("/") + "/"
    try:
        listed = client.list_objects_v2(Bucket=bucket, Prefix=marker, MaxKeys=2)
        objects = listed.get("Contents", [])
        if [(marker, 0)] != [(o.get("Key"), o.get("Size")) for o in objects]:
            return False  # something else lives there, the marker is not empty, or no marker
        client.delete_object(Bucket=bucket, Key=marker)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False
    return True


def check_base(base: str) -> str:
    """The output base path is absolute-looking, normalized and not a root."""
    stripped = base.rstrip("/")
    if not stripped or stripped in (".", "..") or _has_dot_segments(stripped):
        raise DeletionRefused(f"refusing to work under the output base {base!r}")
    return stripped


def _inside(base: str, target: str) -> str:
    """``target`` relative to ``base``; refuses ``.``/``..``/empty segments and anything outside."""
    prefix = base.rstrip("/") + "/"
    if not target.startswith(prefix) or _has_dot_segments(target[len(prefix) :]):
        raise DeletionRefused(f"refusing to delete {target!r}: it is not inside {base!r}")
    relative = target[len(prefix) :].rstrip("/")
    if not relative:
        raise DeletionRefused(f"refusing to delete the output base {base!r}")
    return relative


def _has_dot_segments(path: str) -> bool:
    parts = path.split("/")
    inner = parts[1:] if path.startswith("/") else parts
    return any(p in ("", ".", "..") for p in inner) or "\x00" in path or "\\" in path


def _check_superseded(base: str, superseded: Superseded, target: str) -> None:
    partition = superseded.partition.rstrip("/")
    parts = _inside(base, partition).split("/")
    plain = len(parts) == 2 and bool(PARTITION.fullmatch(parts[-1]))
    # A table's data files of one date: {dataset}/data/snapshot_date=D (Iceberg's layout).
    table = len(parts) == 3 and parts[1] == "data" and bool(PARTITION.fullmatch(parts[-1]))
    if parts[0] not in DATASETS or not (plain or table):
        raise DeletionRefused(f"refusing to delete in {partition!r}: not a published partition")
    if not target.startswith(partition + "/") or _has_dot_segments(target[len(partition) + 1 :]):
        raise DeletionRefused(f"refusing to delete {target!r}: not inside {partition!r}")


def _check_expired(fs: pafs.FileSystem, base: str, expired: Expiry, parts: list[str]) -> None:
    """Refuse what ``expired``'s rule does not let go (see ``Expiry``)."""
    where = "/".join(parts)
    if len(parts) == 2 and parts[0] == layout.RUNS:
        run_id = parts[1].removesuffix(".json")
        valid = names.RUN_ID.fullmatch(run_id) and ".." not in run_id
        if not parts[1].endswith(".json") or not valid:
            raise DeletionRefused(f"refusing to expire {where!r}: not a run record")
        day = _recorded_date(fs, layout.run_record(base, run_id))
        if day is None or not day < expired.keep_from:
            raise DeletionRefused(
                f"refusing to expire {where!r}: its snapshot date {day} is not before "
                f"{expired.keep_from}"
            )
        return
    if len(parts) != 2 or parts[0] not in DATASETS or not PARTITION.fullmatch(parts[1]):
        raise DeletionRefused(f"refusing to expire {where!r}: not a whole published partition")
    day = parts[1].split("=", 1)[1]
    if not day < expired.keep_from:
        raise DeletionRefused(f"refusing to expire {where!r}: not before {expired.keep_from}")
    if day == expired.newest_complete:
        raise DeletionRefused(
            f"refusing to expire {where!r}: the newest complete snapshot is always kept"
        )
    if day not in expired.held and layout.exists(
        fs, layout.lock_file(base, layout.date_lock_name(day))
    ):
        raise DeletionRefused(f"refusing to expire {where!r}: a run or commit of {day} holds it")


def _recorded_date(fs: pafs.FileSystem, path: str) -> str | None:
    """The snapshot date a run record names; None when it cannot be read."""
    try:
        with fs.open_input_stream(path, compression=None) as stream:
            document = orjson.loads(stream.read())
        return names.check_snapshot_date(document["snapshot_date"])
    except (OSError, ValueError, KeyError, TypeError, ConnectorError):
        return None


def _delete_local(base: str, relative: str, target: str, missing_ok: bool) -> None:
    """Delete on a local disk without following a symbolic link anywhere on the way.

    Each folder from the base down to the target must be a real folder (a link planted at
    ``_staging`` or at a run's folder would otherwise carry the deletion elsewhere); the target
    itself, if a link, is unlinked, never followed; ``shutil.rmtree`` does not follow links
    inside the tree.
    """
    current = Path(base)
    for part in relative.split("/")[:-1]:
        current = current / part
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            if missing_ok:
                return
            raise
        if not stat.S_ISDIR(mode):
            raise DeletionRefused(
                f"refusing to delete {target!r}: {current} is a link or not a folder"
            )
    path = Path(target)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=missing_ok)


_TEMPORARY = re.compile(r".+\.tmp-[0-9a-f]{8}")


def is_temporary(path: str) -> bool:
    """Whether ``path`` is named as a durable write's or an exclusive create's temporary file."""
    return _TEMPORARY.fullmatch(os.path.basename(path)) is not None


def discard_temporary(path: str) -> None:
    """Remove the temporary file a durable write left beside its target when it failed, or
    the one an exclusive create linked into place (``NAME.tmp-XXXXXXXX``, local disk only); an
    error doing so is not raised over the failure."""
    if not is_temporary(path):
        raise DeletionRefused(f"refusing to delete {path!r}: not a temporary file")
    with contextlib.suppress(OSError):
        os.unlink(path)
