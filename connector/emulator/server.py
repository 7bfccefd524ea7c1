"""Running the emulator: credentials, an OCI config file, and a server in a thread or in front.

``EmulatorServer`` is what tests, the demo and benchmarks use in-process: it serves from its own
thread and event loop, so synchronous clients (the official SDK) and the connector's own event
loop can both talk to it. ``serve_forever`` is the ``oci-images emulator`` command.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connector.emulator.app import Behaviour, Emulator
from connector.emulator.data import World, ocid
from connector.oci import signing


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key the emulator accepts, and the session token issued for it."""

    tenancy: str
    user: str
    private_key: rsa.RSAPrivateKey
    security_token: str

    @property
    def fingerprint(self) -> str:
        """The key's OCI fingerprint."""
        return signing.fingerprint(self.private_key.public_key())

    @property
    def key_id(self) -> str:
        """The keyId of API-key signatures: tenancy/user/fingerprint."""
        return f"{self.tenancy}/{self.user}/{self.fingerprint}"

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def issue_credentials(emulator: Emulator, key: rsa.RSAPrivateKey | None = None) -> Credentials:
    """Register an API key (a new one unless ``key`` is given) and a session token for the
    emulator's tenancy."""
    user = ocid("user", random.Random(f"user/{emulator.world.seed}"))
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"sub": user, "tenant": emulator.world.tenancy_id, "exp": int(time.time()) + 86400}
    token = ".".join(
        (
            _b64url(orjson.dumps({"alg": "RS256", "typ": "JWT"})),
            _b64url(orjson.dumps(claims)),
            _b64url(os.urandom(32)),
        )
    )
    creds = Credentials(emulator.world.tenancy_id, user, key, token)
    emulator.register_key(creds.key_id, key.public_key())
    emulator.register_key(f"ST${token}", key.public_key())
    return creds


def kept_key(directory: str | Path) -> rsa.RSAPrivateKey | None:
    """The RSA key a previous start left in ``directory/key.pem``, if any: reusing it keeps
    the fingerprint, so a configuration or a client set up against an earlier start still
    signs requests the emulator accepts. None when there is none or it is not an RSA key."""
    path = Path(directory).expanduser() / "key.pem"
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return key if isinstance(key, rsa.RSAPrivateKey) else None


def oci_block(endpoint_template: str, regions: Sequence[str], config_file: Path | None) -> str:
    """The ``[oci]`` section that points a configuration at this emulator, ready to paste."""
    quoted = ", ".join(f'"{r}"' for r in regions)
    lines = [
        "[oci]",
        f'endpoint = "{endpoint_template}"',
        f"regions = [{quoted}]",
    ]
    if config_file is None:
        lines.append("# config_file: start the emulator with --oci-config-dir DIR to write one")
    else:
        lines.append(f'config_file = "{config_file}"')
    lines.append('profile = "DEFAULT"')
    return "\n".join(lines)


def write_oci_config(directory: str | Path, creds: Credentials, region: str) -> Path:
    """Write ``key.pem``, ``token`` and an OCI ``config`` (profiles DEFAULT and SESSION)."""
    folder = Path(directory).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "key.pem"
    key_file.write_bytes(creds.private_pem())
    key_file.chmod(0o600)
    token_file = folder / "token"
    token_file.write_text(creds.security_token)
    token_file.chmod(0o600)
    config = folder / "config"
    config.write_text(
        "[DEFAULT]\n"
        f"user={creds.user}\n"
        f"fingerprint={creds.fingerprint}\n"
        f"key_file={key_file}\n"
        f"tenancy={creds.tenancy}\n"
        f"region={region}\n"
        "\n"
        "[SESSION]\n"
        f"fingerprint={creds.fingerprint}\n"
        f"key_file={key_file}\n"
        f"tenancy={creds.tenancy}\n"
        f"region={region}\n"
        f"security_token_file={token_file}\n"
    )
    config.chmod(0o600)
    return config


class EmulatorServer:
    """The emulator served on loopback from a background thread; a context manager."""

    def __init__(
        self,
        world: World,
        behaviour: Behaviour | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        oci_config_dir: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        """Serve ``world``; with ``tls_cert`` (a PEM chain) and ``tls_key``, over HTTPS."""
        self.emulator = Emulator(world, behaviour, seed=world.seed)
        self.ssl_context = tls_context(tls_cert, tls_key)
        self.credentials = issue_credentials(self.emulator)
        self.host = host
        self.port = port
        self.config_file: Path | None = None
        if oci_config_dir is not None:
            self.config_file = write_oci_config(oci_config_dir, self.credentials, world.home_region)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def world(self) -> World:
        """The data being served."""
        return self.emulator.world

    @property
    def scheme(self) -> str:
        """``https`` when serving with a certificate, else ``http``."""
        return "http" if self.ssl_context is None else "https"

    @property
    def url(self) -> str:
        """Base URL of the home region (served at the root)."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def endpoint_template(self) -> str:
        """An endpoint template addressing any region: ``http://host:port/{region}``."""
        return self.url + "/{region}"

    @property
    def search_template(self) -> str:
        """Resource Search as a service of its own (its own rate limit): ``.../{region}/query``."""
        return f"{self.endpoint_template}/query"

    def region_url(self, region: str) -> str:
        """Base URL of one region."""
        return f"{self.url}/{region}"

    def stats(self) -> dict[str, Any]:
        """The counters, as the stats endpoint serves them."""
        snapshot: dict[str, Any] = self.call(lambda: self.emulator.stats.as_dict())
        return snapshot

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the server's loop thread, where its state lives."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(_call(function), self._loop)
        return future.result(timeout=10)

    def start(self) -> EmulatorServer:
        """Start serving; returns once connections are accepted."""
        self._thread = threading.Thread(target=self._run, name="oci-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._error is not None:
            raise RuntimeError(f"emulator failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = await start_runner(self.emulator, self.host, self.port, self.ssl_context)
        self.port = bound_port(runner)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()


async def _call(function: Callable[[], Any]) -> Any:
    return function()


def tls_context(cert: str | Path | None, key: str | Path | None) -> ssl.SSLContext | None:
    """A server TLS context from PEM files, or None for plain HTTP; both files or neither."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("serving TLS needs both a certificate and its private key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


async def start_runner(
    emulator: Emulator, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Bind and start serving the emulator's application (over TLS with ``ssl_context``)."""
    # Stalled handlers are cut off quickly on shutdown rather than waited for.
    runner = web.AppRunner(
        emulator.app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=ssl_context)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the runner's first site actually bound (meaningful with port 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise RuntimeError("the emulator is not bound to any socket")


async def serve_forever(
    emulator: Emulator,
    host: str,
    port: int,
    announce: Callable[[str], None],
    ssl_context: ssl.SSLContext | None = None,
    config_file: Path | None = None,
) -> None:
    """Serve until cancelled, announcing the bound URL once connections are accepted, then the
    ``[oci]`` block that points a configuration at it (``config_file``: the OCI config written
    for it, if any)."""
    runner = await start_runner(emulator, host, port, ssl_context)
    scheme = "http" if ssl_context is None else "https"
    try:
        url = f"{scheme}://{host}:{bound_port(runner)}"
        announce(f"listening on {url}")
        announce(oci_block(url + "/{region}", emulator.world.regions, config_file))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
