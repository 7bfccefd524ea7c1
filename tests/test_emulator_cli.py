"""``oci-images emulator`` as a user runs it: a subprocess on a free port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import oci
import orjson


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
