"""Names checked before they become paths.

Anything that ends up in a path is checked first: run ids (from the command line, Airflow or
the API), region names (from the config and from ListRegionSubscriptions), snapshot dates and
each path component built from them. A value that fails is refused with the rule it broke; it is
never "cleaned up" into something else, because a run id that silently changes cannot be
committed by the id the user knows.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date
from pathlib import Path

from connector.errors import ConfigError, ConnectorError

DATASETS = ("images", "compartments", "changes")
"""The datasets a commit publishes, one folder each under the output URI: the one list of their
names (``connector.schema.DATASETS`` pairs each with its columns; the ``schema`` command's
``--dataset`` choices are these)."""

PARTITION_COLUMNS = ("snapshot_date", "region")
"""The columns ``images`` is partitioned by, outermost first: folder names in plain files
(``snapshot_date=D/region=R/``, Hive style, and not inside the files, so a Hive-aware reader
sees each once), partition fields in Delta and Iceberg tables. The companion datasets are
partitioned by ``snapshot_date`` alone."""

RUN_ID_MAX = 128
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""Letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit (so never ``_locks``
or a hidden name), at most ``RUN_ID_MAX`` characters, and no ``..`` anywhere."""

REGION_MAX = 64
REGION = re.compile(r"[a-z]{2,4}(?:-[a-z]+){1,3}-[0-9]{1,3}")
"""A region identifier as OCI spells them in every realm: us-ashburn-1, us-gov-ashburn-1,
eu-dcc-milan-1, us-langley-1 (the same grammar as ``connector.oci.regions`` uses)."""

SNAPSHOT_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
PARTITION = re.compile(r"snapshot_date=[0-9]{4}-[0-9]{2}-[0-9]{2}")
COMPONENT_MAX = 255
_FORBIDDEN_IN_COMPONENT = re.compile(r"[\x00-\x1f\x7f/\\]")


class UnsafeNameError(ConnectorError):
    """A name that came from outside (the service, a manifest) cannot be used in a path."""


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
    if "\x00" in text:
        # No filesystem takes one: Python's own calls would raise ValueError deep in a run.
        raise ConfigError(key, "contains a NUL character")
    if "://" in text:
        scheme, _, rest = text.partition("://")
        if scheme == "file":
            return _check_local_output(rest or "/", key, uri)
        if not rest.split("/", 1)[0]:
            raise ConfigError(
                key, f"{uri!r} names no bucket or container: {scheme}://bucket/prefix"
            )
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
