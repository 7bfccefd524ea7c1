"""oci-images-connector: export OCI Compute images (ListImages) into a data lake.

The public API (see ``connector.api``)::

    import connector

    settings = connector.load_config("export.toml")
    outcome = connector.run(settings)

Names are imported when first used, so that ``import connector`` (and the ``oci-images``
command's ``--help``, and its worker processes) load nothing they do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from connector._version import __version__

if TYPE_CHECKING:
    from connector.api import (
        Plan,
        ShardSpec,
        commit,
        diff,
        load_config,
        new_run_id,
        plan,
        resolve_credentials,
        run,
        run_async,
    )
    from connector.config import Settings
    from connector.errors import (
        AuthError,
        ConfigError,
        ConnectorError,
        OciApiError,
        PaginationError,
        PublishError,
        RequestTimeout,
        TransportError,
    )
    from connector.lake.manifest import ListingRecord, Manifest, RunOutcome
    from connector.oci.auth import Credentials
    from connector.pages import ListingError
    from connector.tally import Progress

__all__ = [
    "AuthError",
    "ConfigError",
    "ConnectorError",
    "Credentials",
    "ListingError",
    "ListingRecord",
    "Manifest",
    "OciApiError",
    "PaginationError",
    "Plan",
    "Progress",
    "PublishError",
    "RequestTimeout",
    "RunOutcome",
    "Settings",
    "ShardSpec",
    "TransportError",
    "__version__",
    "commit",
    "diff",
    "load_config",
    "new_run_id",
    "plan",
    "resolve_credentials",
    "run",
    "run_async",
]

_HOMES = {
    "connector.api": (
        "Plan",
        "ShardSpec",
        "commit",
        "diff",
        "load_config",
        "new_run_id",
        "plan",
        "resolve_credentials",
        "run",
        "run_async",
    ),
    "connector.oci.auth": ("Credentials",),
    "connector.config": ("Settings",),
    "connector.errors": (
        "AuthError",
        "ConfigError",
        "ConnectorError",
        "OciApiError",
        "PaginationError",
        "PublishError",
        "RequestTimeout",
        "TransportError",
    ),
    "connector.lake.manifest": ("ListingRecord", "Manifest", "RunOutcome"),
    "connector.pages": ("ListingError",),
    "connector.tally": ("Progress",),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


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
