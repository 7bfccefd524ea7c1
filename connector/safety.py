"""Names checked before they become paths, and the one door every deletion goes through.

Anything that ends up in a path is checked first: run ids (from the command line, Airflow or
the API), region names (from the config and from ListRegionSubscriptions), snapshot dates and
each path component built from them. A value that fails is refused with the rule it broke; it is
never "cleaned up" into something else, because a run id that silently changes cannot be
committed by the id the user knows.

Deleting is the one irreversible thing the connector does, so it has one function,
``guarded_delete``. It refuses anything that is not strictly inside ``{uri}/_staging/`` or
``{uri}/_trash/`` (or a superseded file of the partition being replaced, listed by the caller),
and on a local disk it refuses to follow a symbolic link out of those folders. A bug elsewhere
then fails loudly instead of removing a sibling team's data.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow.fs as pafs
import structlog

from connector.errors import ConfigError, ConnectorError

log = structlog.get_logger("connector.safety")

STAGING = "_staging"
TRASH = "_trash"
DATASETS = ("images", "compartments", "changes")
"""The datasets a commit publishes, one folder each under the output URI."""

RUN_ID_MAX = 128
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""Letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit (so never ``_locks``
or a hidden name), at most ``RUN_ID_MAX`` characters, and no ``..`` anywhere."""

REGION_MAX = 64
REGION = re.compile(r"[a-z]{2,4}(?:-[a-z]+){1,3}-[0-9]{1,3}")
"""A region identifier as OCI spells them in every realm: us-ashburn-1, us-gov-ashburn-1,
eu-dcc-milan-1, us-langley-1 (the same grammar as ``connector.regions`` uses)."""

SNAPSHOT_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
PARTITION = re.compile(r"snapshot_date=[0-9]{4}-[0-9]{2}-[0-9]{2}")
COMPONENT_MAX = 255
_FORBIDDEN_IN_COMPONENT = re.compile(r"[\x00-\x1f\x7f/\\]")


class UnsafeNameError(ConnectorError):
    """A name that came from outside (the service, a manifest) cannot be used in a path."""


class DeletionRefused(ConnectorError):
    """A deletion outside the connector's own folders was attempted; nothing was deleted.

    This is a bug or a hostile input, never an operating condition: the run stops.
    """


# -- names ---------------------------------------------------------------------------------------


def check_run_id(value: object, key: str = "--run-id") -> str:
    """``value`` if it is a safe run id; ``ConfigError(key)`` saying why not otherwise."""
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {type(value).__name__}")
    if not value:
        raise ConfigError(key, "must not be empty")
    if len(value) > RUN_ID_MAX:
        raise ConfigError(key, f"must be at most {RUN_ID_MAX} characters, got {len(value)}")
    if ".." in value or not RUN_ID.fullmatch(value):
        raise ConfigError(
            key,
            f"{_shown(value)} is not a safe run id: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, with no '..' (it becomes a folder name)",
        )
    return value


def run_id_from(text: str) -> str:
    """A valid run id derived from any text (an Airflow run id such as
    ``scheduled__2026-11-27T00:00:00+00:00``): unsafe characters become ``-`` and, when anything
    had to change, a short hash of the original keeps distinct inputs distinct."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    if cleaned == text and cleaned and len(cleaned) <= RUN_ID_MAX:
        return check_run_id(cleaned)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    head = cleaned[: RUN_ID_MAX - len(digest) - 1] or "run"
    return check_run_id(f"{head}-{digest}")


def is_region(value: object) -> bool:
    """Whether ``value`` follows the region grammar."""
    return isinstance(value, str) and len(value) <= REGION_MAX and bool(REGION.fullmatch(value))


def check_region(value: object, *, key: str | None = None) -> str:
    """``value`` if it is a region name. From the config (``key`` given) a bad one is a
    ``ConfigError``; from the service it is an ``UnsafeNameError`` (it would become a path)."""
    if is_region(value):
        assert isinstance(value, str)
        return value
    if key is not None:
        raise ConfigError(key, f"{_shown(value)} is not a region name like us-ashburn-1")
    raise UnsafeNameError(
        f"the service named a region {_shown(value)}, which is not a region name like "
        "us-ashburn-1; refusing to use it in a path"
    )


def check_snapshot_date(value: object, key: str = "output.snapshot_date") -> str:
    """``value`` if it is a real calendar date written YYYY-MM-DD."""
    if isinstance(value, str) and SNAPSHOT_DATE.fullmatch(value):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ConfigError(key, f"must be a date YYYY-MM-DD, got {_shown(value)}")


def check_component(value: object, what: str = "path component") -> str:
    """``value`` if it can be one folder or file name on every store: not empty, not ``.`` or
    ``..``, no separator, no control character, at most 255 bytes of UTF-8."""
    if not isinstance(value, str) or not value or value in (".", ".."):
        raise UnsafeNameError(f"{what} {_shown(value)} cannot be a file or folder name")
    if _FORBIDDEN_IN_COMPONENT.search(value):
        raise UnsafeNameError(f"{what} {_shown(value)} contains a separator or control character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafeNameError(f"{what} {_shown(value)} is not valid Unicode text") from None
    if size > COMPONENT_MAX:
        raise UnsafeNameError(f"{what} is {size} bytes long; at most {COMPONENT_MAX} are allowed")
    return value


def check_relative(path: str, what: str = "path") -> str:
    """A relative path (as manifests list files) whose every component is safe."""
    if path.startswith("/"):
        raise UnsafeNameError(f"{what} {_shown(path)} must be relative")
    for part in path.split("/"):
        check_component(part, what)
    return path


def join(base: str, *components: str) -> str:
    """``base/c1/c2...`` after checking each component."""
    for component in components:
        check_component(component)
    return "/".join((base.rstrip("/"), *components))


def check_output_uri(uri: object, key: str = "output.uri") -> str:
    """Refuse an output that is empty or the root of a filesystem or of a store.

    Everything the connector writes and deletes lives below the output; with ``/`` or ``""`` that
    would be a whole disk (or the working directory, for ``""``, which nobody means).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError(key, "must not be empty: name a folder or a bucket path for the lake")
    text = uri.strip()
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme == "file":
            return _check_local_output(rest or "/", key, uri)
        if not rest.strip("/"):
            raise ConfigError(key, f"{uri!r} names no bucket or container")
        return uri
    return _check_local_output(text, key, uri)


def _check_local_output(text: str, key: str, uri: str) -> str:
    path = Path(text).expanduser()
    resolved = path.resolve()
    if resolved == Path(resolved.anchor):
        raise ConfigError(key, f"{uri!r} is the root of a filesystem; name a folder below it")
    return uri


def _shown(value: object) -> str:
    """A value for an error message: repr, cut short, so a hostile value cannot flood a log."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- deletion ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Superseded:
    """Files of a published partition that its replacement no longer lists.

    On object stores, where a partition cannot be renamed away, the commit writes the new files
    beside the old ones and then deletes exactly these.
    """

    partition: str
    """``{base}/{dataset}/snapshot_date=YYYY-MM-DD``."""
    files: frozenset[str]
    """Full paths, each inside ``partition``."""


def guarded_delete(
    fs: pafs.FileSystem,
    base: str,
    target: str,
    *,
    superseded: Superseded | None = None,
    missing_ok: bool = True,
) -> None:
    """Delete ``target`` (a folder with all it holds, or a file), if it is ours to delete.

    Allowed: anything strictly inside ``{base}/_staging/`` or ``{base}/_trash/``; or, with
    ``superseded``, one of the files it lists. Anything else raises ``DeletionRefused`` and
    nothing is deleted. Every deletion in the connector goes through here.
    """
    check_base(base)
    relative = _inside(base, target)
    parts = relative.split("/")
    if parts[0] in (STAGING, TRASH) and len(parts) >= 2:
        pass
    elif superseded is not None and target in superseded.files:
        _check_superseded(base, superseded, target)
    else:
        raise DeletionRefused(
            f"refusing to delete {target!r}: only {base}/{STAGING}/…, {base}/{TRASH}/… and "
            "superseded files of the partition being replaced may be deleted"
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

    Only where that is one atomic step (``rmdir`` on a local disk): checking for emptiness and
    then deleting would race with another run creating its staging there. Object stores keep no
    empty folders anyway. Returns whether it was removed.
    """
    check_base(base)
    relative = _inside(base, target)
    if relative.split("/")[0] not in (STAGING, TRASH):
        raise DeletionRefused(f"refusing to remove {target!r}: not below {STAGING} or {TRASH}")
    if not isinstance(fs, pafs.LocalFileSystem):
        return False
    try:
        os.rmdir(target)
    except OSError:  # not empty, already gone, or not a folder
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
    dataset_and_date = _inside(base, partition).split("/")
    if (
        len(dataset_and_date) != 2
        or dataset_and_date[0] not in DATASETS
        or not PARTITION.fullmatch(dataset_and_date[1])
    ):
        raise DeletionRefused(f"refusing to delete in {partition!r}: not a published partition")
    if not target.startswith(partition + "/") or _has_dot_segments(target[len(partition) + 1 :]):
        raise DeletionRefused(f"refusing to delete {target!r}: not inside {partition!r}")


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


# -- permissions ---------------------------------------------------------------------------------


def warn_if_exposed(path: str | os.PathLike[str], what: str) -> str | None:
    """Warn, as the OCI CLI does, when a key or config file is readable by group or others.

    Returns the warning (None when the permissions are fine, the file is missing, or the
    platform has no POSIX permissions). The content is never read here.
    """
    if os.name != "posix":
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    message = (
        f"permissions on {what} {os.fspath(path)} are too open "
        f"({stat.filemode(mode)}): it is readable or writable by group or others; "
        f"fix with: chmod 600 {os.fspath(path)}"
    )
    log.warning("permissions.too_open", file=os.fspath(path), what=what, mode=oct(mode & 0o777))
    return message
