"""Helpers shared by test modules (fixtures are in conftest.py)."""

from __future__ import annotations

import http.server
import itertools
import logging
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
from cryptography.hazmat.primitives import serialization

from connector import Settings, cli, load_config, logs
from connector.emulator import EmulatorServer
from connector.oci import auth
from connector.workers.boot import NAME as WORKER_NAME

ROOT = Path(__file__).resolve().parent.parent
DATE = "2026-11-27"
WORLD = {
    "seed": 21,
    "compartments": 40,
    "regions": ("us-ashburn-1", "eu-frankfurt-1"),
    "platform_images": 20,
    "custom_scale": 0.3,
}


def write_config(
    folder: Path,
    server: EmulatorServer,
    *,
    lake: Path | None = None,
    snapshot_date: str | None = DATE,
    **sections: Mapping[str, Any],
) -> Path:
    """A configuration file in ``folder`` for an export from ``server`` (every subscribed
    region, 8 requests in flight, pages of 1,000) into ``lake`` (``folder / "lake"`` unless
    given) for ``snapshot_date`` (``None``: the run's own, as Airflow's logical date gives it).

    ``sections`` override or add keys, key by key: ``fetch={"workers": 2}`` keeps the other
    fetch keys. The unit, reliability and Airflow tests all write their configurations here;
    each suite passes what it needs beyond that (``tests.reliability.FETCH``, the Airflow
    tests' ``FETCH``). Each call writes a file of its own, so a test may write several in one
    folder and each keeps its settings.
    """
    output: dict[str, Any] = {"uri": str(lake if lake is not None else folder / "lake")}
    if snapshot_date is not None:
        output["snapshot_date"] = snapshot_date
    merged: dict[str, dict[str, Any]] = {
        "oci": {
            "config_file": str(server.config_file),
            "endpoint": server.endpoint_template,
            "regions": ["subscribed"],
        },
        "fetch": {"concurrency": 8, "page_size": 1000},
        "output": output,
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    lines = []
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    path = folder / f"config-{next(_CONFIGS)}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


_CONFIGS = itertools.count()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def run(config: Path, *extra: str) -> int:
    """``oci-images run --config CONFIG EXTRA...`` in this process; its exit code."""
    return cli.main(["--log-level", "warning", "run", "--config", str(config), *extra])


def oci_images(
    *args: str, timeout: float = 120, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m connector ARGS`` in a subprocess from the repository's root, as a user runs
    the command; its output captured as text. ``env`` replaces the environment when given."""
    return subprocess.run(
        [sys.executable, "-m", "connector", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=None if env is None else dict(env),
    )


def partition(folder: Path) -> Path:
    """The published images partition of ``DATE`` in ``folder``'s lake (``write_config``'s
    default output)."""
    return folder / "lake" / "images" / f"snapshot_date={DATE}"


def manifest_of(folder: Path) -> dict[str, Any]:
    """The manifest of that partition."""
    result: dict[str, Any] = orjson.loads((partition(folder) / "_manifest.json").read_bytes())
    return result


def arrow_rows(folder: Path) -> list[dict[str, Any]]:
    """Every published image row of ``folder``'s lake, read back with pyarrow.dataset."""
    dataset = ds.dataset(folder / "lake" / "images", format="parquet", partitioning="hive")
    return dataset.to_table().to_pylist(maps_as_pydicts="strict")


def screen(output: str, width: int = 80) -> list[str]:
    """What a terminal shows after ``output``: carriage returns, erase-line and newlines are
    obeyed, and a row longer than ``width`` wraps onto the next, as a terminal does."""
    rows = [""]
    column = 0
    i = 0
    while i < len(output):
        if output.startswith("\x1b[K", i):
            rows[-1] = rows[-1][:column]
            i += 3
            continue
        char = output[i]
        if char == "\r":
            column = 0
        elif char == "\n":
            rows.append("")
            column = 0
        else:
            if column == width:
                rows.append("")
                column = 0
            row = rows[-1]
            rows[-1] = row[:column] + char + row[column + 1 :]
            column += 1
        i += 1
    return rows


class FakeClock:
    """A clock that moves only when told to: minutes of throttling in no time."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def captured_events(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """The connector's log events at ``level`` and above while the block runs, as the dicts a
    ``logging`` handler receives (structlog's own ``capture_logs`` sees only loggers that use
    structlog's global configuration, which the connector's do not)."""
    events: list[dict[str, Any]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, dict):
                events.append({k: v for k, v in record.msg.items() if not k.startswith("_")})

    root = logging.getLogger(logs.ROOT)
    handler, previous = Capture(level), root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield events
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


def settings_for(
    server: EmulatorServer,
    lake: Path,
    *,
    fetch: Mapping[str, Any] | None = None,
    output: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings for an export through the API (no file) from ``server`` into ``lake``: every
    subscribed region, conversion in a thread, 8 requests in flight, for ``DATE``."""
    return load_config(
        values={
            "oci": {
                "config_file": str(server.config_file),
                "endpoint": server.endpoint_template,
                "regions": ["subscribed"],
            },
            "fetch": {"workers": 0, "concurrency": 8, **(fetch or {})},
            "output": {"uri": str(lake), "snapshot_date": DATE, **(output or {})},
        }
    )


PASSPHRASE = "correct horse battery staple 7"


def encrypted_pem(server: EmulatorServer, passphrase: str = PASSPHRASE) -> str:
    """The emulator's API key, encrypted with ``passphrase``, as PEM text."""
    encryption = serialization.BestAvailableEncryption(passphrase.encode())
    return (
        server.credentials.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        .decode()
        .strip()
    )


def cli_environment(server: EmulatorServer, **extra: str) -> dict[str, str]:
    """The OCI CLI's variables for the emulator's user, with an encrypted key in the content."""
    creds = server.credentials
    return {
        "OCI_CLI_USER": creds.user,
        "OCI_CLI_TENANCY": creds.tenancy,
        "OCI_CLI_FINGERPRINT": creds.fingerprint,
        "OCI_CLI_KEY_CONTENT": encrypted_pem(server),
        "OCI_CLI_PASSPHRASE": PASSPHRASE,
        "OCI_CLI_REGION": server.world.home_region,
        **extra,
    }


MiB = 1 << 20


def gzip_of_zeros(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes, built without holding them all."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MiB)
    parts = [compressor.compress(block) for _ in range(size // MiB)]
    return b"".join([*parts, compressor.flush()])


def signer_for(server: EmulatorServer, profile: str = "DEFAULT") -> auth.RequestSigner:
    assert server.config_file is not None
    return auth.make_signer("api_key", auth.load_profile(server.config_file, profile))


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler for test servers: no access log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on a free loopback port with ``handler``; yields its URL, and
    stops it on leaving."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def signalled_run(
    config: Path,
    staging: Path,
    signum: signal.Signals,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, str]:
    """``oci-images run --config CONFIG`` in a subprocess, sent ``signum`` once it has staged
    a region's folder under ``staging`` (mid-run); its exit code and stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else dict(env),
    )
    deadline = time.monotonic() + 60
    while not list(staging.rglob("region=*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def worker_pids(pid: int, *, children_only: bool = False) -> list[int]:
    """The worker processes (named ``boot.NAME``) of the `oci-images` command ``pid``: every
    one in its process group (a command started in a session of its own), or only its
    children (the first worker, which forks the others)."""
    scope = ["-P", str(pid)] if children_only else ["-g", str(pid)]
    found = subprocess.run(["pgrep", "-x", WORKER_NAME, *scope], capture_output=True, text=True)
    return [int(found_pid) for found_pid in found.stdout.split()]
