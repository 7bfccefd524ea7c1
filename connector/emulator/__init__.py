"""A faithful stand-in for the OCI Compute ListImages and Identity APIs, for tests and demos.

Names are imported on first use, so that ``oci-images --help`` does not pay for aiohttp's
server side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.emulator.app import Behaviour, Emulator, Stats, TokenBucket
    from connector.emulator.data import Compartment, Image, World, build_world
    from connector.emulator.server import Credentials, EmulatorServer, write_oci_config

_HOMES = {
    "Behaviour": "app",
    "Emulator": "app",
    "Stats": "app",
    "TokenBucket": "app",
    "Compartment": "data",
    "Image": "data",
    "World": "data",
    "build_world": "data",
    "Credentials": "server",
    "EmulatorServer": "server",
    "write_oci_config": "server",
}

__all__ = [
    "Behaviour",
    "Compartment",
    "Credentials",
    "Emulator",
    "EmulatorServer",
    "Image",
    "Stats",
    "TokenBucket",
    "World",
    "build_world",
    "write_oci_config",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
