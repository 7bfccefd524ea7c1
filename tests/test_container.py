"""The container image, run by a real engine: ``make test-container`` builds it and runs these
against it (``scripts/container_image.py`` sets OCI_IMAGES_TEST_IMAGE and the engine). Without
an image they are skipped: the Dockerfile's static checks are in tests/test_deploy.py, which
runs everywhere."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.emulator import EmulatorServer, build_world
from tests.helpers import DATE, PASSPHRASE, WORLD, arrow_rows, cli_environment, manifest_of
from tests.reference import expected_rows, multiset, normalise_actual

IMAGE = os.environ.get("OCI_IMAGES_TEST_IMAGE", "")
ENGINE = shlex.split(os.environ.get("OCI_IMAGES_TEST_ENGINE", "podman"))
RUN_FLAGS = shlex.split(os.environ.get("OCI_IMAGES_TEST_RUN_FLAGS", ""))
# The image's user (the Dockerfile's USER), which must be able to write the mounted output.
UID = 10001

pytestmark = pytest.mark.skipif(not IMAGE, reason="needs a built image: make test-container")


def container(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``ENGINE run`` of the image on the host's network, root read-only, /tmp a tmpfs (as the
    CronJob runs it); each name in ``env`` is passed as ``-e NAME``, its value through the
    engine's environment, never on a command line."""
    names = [flag for name in (env or {}) for flag in ("-e", name)]
    command = [*ENGINE, "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp"]
    return subprocess.run(
        [*command, *RUN_FLAGS, *names, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ | (env or {}),
        check=False,
    )


def test_runs_as_a_non_root_user_with_the_command_as_entry_point() -> None:
    """The image's configuration: USER 10001, ENTRYPOINT oci-images; `id` inside says so."""
    inspected = subprocess.run(
        [*ENGINE, "image", "inspect", IMAGE], capture_output=True, text=True, check=True
    )
    config = json.loads(inspected.stdout)[0]["Config"]
    assert (f"{UID}:{UID}", ["oci-images"]) == (config["User"], config["Entrypoint"])
    who = container("--entrypoint", "id", IMAGE)
    assert f"uid={UID}(oci-images) gid={UID}(oci-images)" in who.stdout, who.stderr


def test_the_extras_a_batch_job_uses_are_installed() -> None:
    """Principals (oci), oci:// (ocifs), S3 profiles (botocore), Delta and Iceberg tables,
    metrics and traces import; the test tools of the dev group are not in the image."""
    code = (
        "import importlib.util as u, oci, ocifs, botocore, deltalake, pyiceberg, sqlalchemy, "
        "prometheus_client, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http; "
        "print([m for m in ('pytest', 'mypy', 'duckdb', 'moto') if u.find_spec(m)])"
    )
    answer = container("--entrypoint", "python3", IMAGE, "-c", code)
    assert (0, "[]") == (answer.returncode, answer.stdout.strip()), answer.stderr


def test_the_demo_runs_on_a_read_only_root() -> None:
    """`oci-images demo` in the image: its emulator, a run, the published partition."""
    answer = container(IMAGE, "demo", "--output", "/tmp/demo", "--compartments", "20")
    assert 0 == answer.returncode, answer.stderr[-2000:]
    assert "complete (published)" in answer.stdout + answer.stderr


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    """The emulator on the host's loopback, which the container reaches through host networking."""
    with EmulatorServer(build_world(**WORLD)) as started:  # type: ignore[arg-type]
        yield started


def test_an_export_against_the_emulator_on_the_host(server: EmulatorServer, tmp_path: Path) -> None:
    """No config file: OCI_CLI_* with an encrypted key in OCI_CLI_KEY_CONTENT, OCI_IMAGES__
    for the rest, the output a mounted folder. The tenancy is exported exactly, and neither
    the key nor the passphrase is in anything the container printed or wrote."""
    lake = tmp_path / "lake"
    lake.mkdir()
    if os.geteuid() == 0:
        os.chown(lake, UID, UID)
    else:
        lake.chmod(0o777)
    env = cli_environment(server) | {
        "OCI_IMAGES__OCI__ENDPOINT": server.endpoint_template,
        "OCI_IMAGES__OCI__REGIONS": '["subscribed"]',
        "OCI_IMAGES__FETCH__WORKERS": "2",
        "OCI_IMAGES__OUTPUT__URI": "/lake",
        "OCI_IMAGES__OUTPUT__SNAPSHOT_DATE": DATE,
    }
    answer = container("-v", f"{lake}:/lake", IMAGE, "--log-level", "debug", "run", env=env)
    assert 0 == answer.returncode, answer.stderr[-2000:]

    expected = multiset(expected_rows(server.world, "once"))
    assert expected == multiset([normalise_actual(r, "once") for r in arrow_rows(tmp_path)])
    manifest = manifest_of(tmp_path)
    assert ("succeeded", sum(expected.values())) == (manifest["status"], manifest["rows"])
    secrets = [PASSPHRASE, *env["OCI_CLI_KEY_CONTENT"].splitlines()[1:-1]]
    written = [answer.stdout, answer.stderr]
    written += [p.read_bytes().decode("latin-1") for p in lake.rglob("*") if p.is_file()]
    assert [] == [s for s in secrets if any(s in text for text in written)]
