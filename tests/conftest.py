"""Shared fixtures: emulators on loopback and the official SDK pointed at them."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import oci
import pytest
import structlog
from oci._vendor import requests

from connector import logs
from connector.emulator import Behaviour, EmulatorServer, World, build_world

if TYPE_CHECKING:
    from tests.lake_support import S3Server

# tests/airflow run under real Airflow, in its own environment (`make test-airflow`).
if importlib.util.find_spec("airflow") is None:
    collect_ignore = ["airflow"]

SMALL = {
    "seed": 7,
    "compartments": 12,
    "regions": ("us-ashburn-1", "eu-frankfurt-1"),
    "platform_images": 15,
    "dataset": "awkward",  # build_world's default too; the CLI and the demo use "realistic"
}


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Each test starts with the connector a quiet library: a test that ran the CLI in process
    (which routes logs to that test's captured stderr, at its level) must not leak into the
    next."""
    yield
    logs.reset()
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """moto's S3 server on loopback, one for the whole test session."""
    from tests.lake_support import start_s3

    yield from start_s3()


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
            world or build_world(**SMALL),  # type: ignore[arg-type]
            Behaviour(**knobs),
            oci_config_dir=folder,
        )
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


@dataclass(frozen=True)
class PrivateCA:
    """A private certificate authority and a server certificate it signed, as PEM files."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_private_ca(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> PrivateCA:
    """Generate a CA and a leaf certificate for ``hosts`` (IP addresses or DNS names)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Test Private CA"))
        .issuer_name(name("Test Private CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = PrivateCA(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@pytest.fixture
def private_ca(tmp_path: Path) -> PrivateCA:
    """A private CA and a certificate for 127.0.0.1 and localhost that it signed."""
    return make_private_ca(tmp_path / "tls")
