"""Shared fixtures: emulators on loopback and the official SDK pointed at them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import oci
import pytest
import structlog
from oci._vendor import requests

from connector.emulator import Behaviour, EmulatorServer, World, build_world

SMALL = {
    "seed": 7,
    "compartments": 12,
    "regions": ("us-ashburn-1", "eu-frankfurt-1"),
    "platform_images": 15,
}


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Each test starts from structlog's defaults: a test that ran the CLI in process (which
    routes logs to that test's captured stderr, at its level) must not leak into the next."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(scope="session")
def small_world() -> World:
    """Two regions, 12 ACTIVE compartments plus root, deleted and inaccessible ones."""
    return build_world(**SMALL)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def emulator(
    small_world: World, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmulatorServer]:
    """A well-behaved emulator shared by read-only tests."""
    folder = tmp_path_factory.mktemp("oci")
    with EmulatorServer(small_world, oci_config_dir=folder) as server:
        yield server


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[Callable[..., EmulatorServer]]:
    """Start emulators with their own behaviour (faults, throttling); stopped after the test."""
    started: list[EmulatorServer] = []

    def start(world: World | None = None, **knobs: Any) -> EmulatorServer:
        folder = tmp_path / f"oci{len(started)}"
        server = EmulatorServer(
            world or build_world(**SMALL), Behaviour(**knobs), oci_config_dir=folder
        )  # type: ignore[arg-type]
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


def sdk_config(server: EmulatorServer, profile: str = "DEFAULT") -> dict[str, Any]:
    """The SDK's config dict read from the file the emulator wrote."""
    assert server.config_file is not None
    config: dict[str, Any] = oci.config.from_file(str(server.config_file), profile)
    return config


def sdk_signer(server: EmulatorServer) -> oci.signer.Signer:
    """The official SDK's API-key signer for the emulator's credentials."""
    return oci.signer.Signer.from_config(sdk_config(server))


def signed_get(
    server: EmulatorServer, path: str, params: dict[str, Any] | None = None, **kw: Any
) -> Any:
    """A raw GET signed by the official SDK's signer (for responses the SDK would hide)."""
    return requests.get(server.url + path, params=params, auth=sdk_signer(server), timeout=10, **kw)
