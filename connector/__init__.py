"""oci-images-connector: export OCI Compute images (ListImages) into a data lake.

The public API (see ``connector.api``)::

    import connector

    settings = connector.load_config("export.toml")
    outcome = connector.run(settings)

``_HOMES`` below is the one table of public names: ``__all__`` and the lookup are derived from
it, and a test holds the type checker's imports to it. Names are imported when first used, so
that ``import connector`` (and the ``oci-images`` command's ``--help``, and its worker
processes) load nothing they do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connector._version import __version__

_HOMES = {
    "connector.api": (
        "DATASETS",
        "Plan",
        "ShardSpec",
        "check_access",
        "check_run_id",
        "commit",
        "diff",
        "load_config",
        "new_run_id",
        "plan",
        "resolve_credentials",
        "run",
        "run_async",
        "schema_of",
        "snapshots",
        "start_workers",
        "to_ndjson",
    ),
    "connector.config": ("Settings",),
    "connector.errors": (
        "EXIT_CONFIG",
        "EXIT_FAILED",
        "EXIT_OK",
        "EXIT_PARTIAL",
        "AuthError",
        "ConfigError",
        "ConnectorError",
        "OciApiError",
        "PaginationError",
        "PublishError",
        "RequestTimeout",
        "TransportError",
    ),
    "connector.lake.changes": ("ChangeCounts",),
    "connector.lake.manifest": ("ListingRecord", "Manifest", "RunOutcome"),
    "connector.lake.snapshots": ("PublishedSnapshot",),
    "connector.oci.auth": ("Credentials",),
    "connector.oci.diagnose": ("RunAbort",),
    "connector.pages": ("ListingError",),
    "connector.tally": ("Progress",),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

__all__ = ["__version__", *sorted(_HOME)]

if TYPE_CHECKING:  # what the type checker sees of the same table
    from connector.api import DATASETS as DATASETS
    from connector.api import Plan as Plan
    from connector.api import ShardSpec as ShardSpec
    from connector.api import check_access as check_access
    from connector.api import check_run_id as check_run_id
    from connector.api import commit as commit
    from connector.api import diff as diff
    from connector.api import load_config as load_config
    from connector.api import new_run_id as new_run_id
    from connector.api import plan as plan
    from connector.api import resolve_credentials as resolve_credentials
    from connector.api import run as run
    from connector.api import run_async as run_async
    from connector.api import schema_of as schema_of
    from connector.api import snapshots as snapshots
    from connector.api import start_workers as start_workers
    from connector.api import to_ndjson as to_ndjson
    from connector.config import Settings as Settings
    from connector.errors import EXIT_CONFIG as EXIT_CONFIG
    from connector.errors import EXIT_FAILED as EXIT_FAILED
    from connector.errors import EXIT_OK as EXIT_OK
    from connector.errors import EXIT_PARTIAL as EXIT_PARTIAL
    from connector.errors import AuthError as AuthError
    from connector.errors import ConfigError as ConfigError
    from connector.errors import ConnectorError as ConnectorError
    from connector.errors import OciApiError as OciApiError
    from connector.errors import PaginationError as PaginationError
    from connector.errors import PublishError as PublishError
    from connector.errors import RequestTimeout as RequestTimeout
    from connector.errors import TransportError as TransportError
    from connector.lake.changes import ChangeCounts as ChangeCounts
    from connector.lake.manifest import ListingRecord as ListingRecord
    from connector.lake.manifest import Manifest as Manifest
    from connector.lake.manifest import RunOutcome as RunOutcome
    from connector.lake.snapshots import PublishedSnapshot as PublishedSnapshot
    from connector.oci.auth import Credentials as Credentials
    from connector.oci.diagnose import RunAbort as RunAbort
    from connector.pages import ListingError as ListingError
    from connector.tally import Progress as Progress


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'connector' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
