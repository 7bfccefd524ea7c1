"""``oci-images emulator`` as a user runs it: a subprocess on a free port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import oci
import orjson
import pytest

from tests.conftest import make_private_ca


def test_emulator_command_serves_the_sdk(tmp_path: Path) -> None:
    """It announces the bound port, writes a working OCI config and the ground truth."""
    truth = tmp_path / "truth.ndjson"
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "emulator", "--port", "0", "--compartments", "5",
         "--regions", "us-phoenix-1,uk-london-1", "--oci-config-dir", str(tmp_path / "oci"), "--truth", str(truth)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ")
        assert not url.endswith(":0")
        config = oci.config.from_file(str(tmp_path / "oci" / "config"))
        assert config["region"] == "us-phoenix-1"
        lines = [orjson.loads(x) for x in truth.read_bytes().splitlines()]
        listings = {(x["region"], x["compartment_id"]): x["images"] for x in lines}
        tenancy = config["tenancy"]
        client = oci.core.ComputeClient(config, service_endpoint=f"{url}/uk-london-1")
        result = oci.pagination.list_call_get_all_results(client.list_images, tenancy, limit=10)
        expected = listings[("uk-london-1", None)] + listings[("uk-london-1", tenancy)]
        assert [r["id"] for r in expected] == [i.id for i in result.data]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_emulator_command_pca_over_https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--flavor pca --tls-cert/--tls-key: HTTPS that the SDK verifies with the private CA."""
    tls = make_private_ca(tmp_path / "tls")
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "emulator", "--port", "0", "--compartments", "3",
         "--flavor", "pca", "--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file),
         "--oci-config-dir", str(tmp_path / "oci")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on https://127.0.0.1:")
        url = line.removeprefix("listening on ")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
        config = oci.config.from_file(str(tmp_path / "oci" / "config"))
        client = oci.core.ComputeClient(config, service_endpoint=url)
        images = client.list_images(config["tenancy"], limit=1000).data
        assert images
        assert images[0].compartment_id == ""
        with pytest.raises(oci.exceptions.ServiceError) as info:
            client.list_images(config["tenancy"], sort_by="DISPLAYNAME")
        assert (400, "InvalidParameter") == (info.value.status, info.value.code)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_tls_certificate_without_key_exits_2(tmp_path: Path) -> None:
    """--tls-cert without --tls-key is a usage error, before anything is served."""
    tls = make_private_ca(tmp_path / "tls")
    result = subprocess.run(
        [sys.executable, "-m", "connector", "emulator", "--port", "0", "--tls-cert", str(tls.cert_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--tls-key" in result.stderr


def _start(oci_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    """The emulator command on a free port (the demo's regions by default), and what it
    printed on stdout up to the end of its ``[oci]`` block."""
    process = subprocess.Popen(
        [sys.executable, "-m", "connector", "emulator", "--port", "0", "--compartments", "2",
         "--platform-images", "3", "--oci-config-dir", str(oci_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    lines = [process.stdout.readline().rstrip("\n")]
    while not lines[-1].startswith("profile") and lines[-1]:
        lines.append(process.stdout.readline().rstrip("\n"))
    return process, lines


def test_emulator_prints_a_block_that_exports_and_keeps_its_key(tmp_path: Path) -> None:
    """The [oci] block printed after "listening on", pasted into a configuration, exports both
    of the demo's regions; a restart with the same --oci-config-dir keeps key.pem, so the
    fingerprint in the config (and a client's copy of it) stays valid."""
    from connector import cli

    oci_dir = tmp_path / "oci"
    process, lines = _start(oci_dir)
    try:
        assert lines[0].startswith("listening on http://127.0.0.1:")
        block = "\n".join(lines[1:])
        url = lines[0].removeprefix("listening on ")
        assert block.startswith("[oci]\n")
        assert f'endpoint = "{url}/{{region}}"' in block
        assert 'regions = ["us-ashburn-1", "eu-frankfurt-1"]' in block
        assert f'config_file = "{oci_dir.resolve() / "config"}"' in block
        config = tmp_path / "export.toml"
        config.write_text(f'{block}\n[output]\nuri = "{tmp_path / "lake"}"\n')
        assert cli.main(["--log-level", "error", "run", "--config", str(config)]) == 0
        regions = {p.name for p in (tmp_path / "lake" / "images").glob("*/region=*")}
        assert regions == {"region=us-ashburn-1", "region=eu-frankfurt-1"}
    finally:
        process.terminate()
        process.wait(timeout=10)
    first_key = (oci_dir / "key.pem").read_bytes()
    first = oci.config.from_file(str(oci_dir / "config"))
    process, lines = _start(oci_dir, "--regions", "us-phoenix-1")
    try:
        assert 'regions = ["us-phoenix-1"]' in lines
        assert (oci_dir / "key.pem").read_bytes() == first_key
        client = oci.core.ComputeClient(first, service_endpoint=lines[0].split()[-1])
        assert client.list_images(first["tenancy"], limit=5).data
    finally:
        process.terminate()
        process.wait(timeout=10)
