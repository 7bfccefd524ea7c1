"""Network stand-ins on loopback: a TLS front for the emulator and a CONNECT proxy.

They let the tests reach the emulator as a Private Cloud Appliance is reached in practice:
``https://iaas.pca.example.com`` through a corporate proxy, with a certificate from the
appliance's own CA. The proxy maps such names to loopback ports (no DNS is involved), so the
client really opens a tunnel, then verifies the certificate against the name it asked for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from tests.conftest import PrivateCA


class LoopThread:
    """An asyncio loop in a daemon thread, for servers the test's own loop talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()


async def _splice(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
) -> None:
    upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
    await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


@dataclass
class TlsFront:
    """TLS on a loopback port, forwarding the plain bytes to another loopback port."""

    target_port: int
    pki: PrivateCA
    port: int = 0
    connections: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki.cert_file, self.pki.key_file)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            await _splice(reader, writer, "127.0.0.1", self.target_port)

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


@dataclass
class ConnectProxy:
    """An HTTP CONNECT proxy: maps host names to loopback ports, records what it tunnelled.

    With ``credentials`` ("user:password") it answers 407 to a CONNECT without them.
    """

    routes: dict[str, int]
    credentials: str | None = None
    port: int = 0
    tunnels: list[str] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)
        }
        status = self._check(method, target, headers)
        if status != 200:
            self.refused.append((target, status))
            writer.write(f"HTTP/1.1 {status} Refused\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            writer.close()
            return
        host, _, port = target.rpartition(":")
        self.tunnels.append(target)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _splice(reader, writer, "127.0.0.1", self.routes.get(host, int(port)))

    def _check(self, method: str, target: str, headers: dict[str, str]) -> int:
        if method != "CONNECT":
            return 405
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
            if headers.get("proxy-authorization") != expected:
                return 407
        host = target.rpartition(":")[0]
        if host not in self.routes and host not in ("127.0.0.1", "localhost"):
            return 502
        return 200


def started(loop: LoopThread, make: Callable[[], Any]) -> Any:
    """Build a server object and start it on ``loop``."""
    server = make()
    loop.run(server.start())
    return server
