"""The emulator at a real tenancy's shape: start-up time and memory, and records served per CPU
second, measured from outside its process.

    python -m benchmarks.emulator_scale                       5,000 compartments x 4 regions
    python -m benchmarks.emulator_scale --compartments 500 --listings 200     a quick look

Start-up is the wall time from launching ``oci-images emulator`` to its "listing on" line;
memory is the process's RSS then and its peak (VmHWM) at the end. Records per CPU second divide
the records served by the emulator's CPU time (user + system) while serving them: first on a
cold cache (each listing generated on demand), then again (served from the cache where it
still holds them). The client is the official SDK's signer on 8 threads, in this process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import oci
import orjson
from oci._vendor import requests

REGIONS = "us-ashburn-1,eu-frankfurt-1,uk-london-1,us-phoenix-1"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) / 1024
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compartments", type=int, default=5000)
    parser.add_argument("--regions", default=REGIONS)
    parser.add_argument("--platform-images", type=int, default=150)
    parser.add_argument("--listings", type=int, default=2000, help="listings fetched per pass")
    parser.add_argument("--dataset", default="realistic")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temp:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "connector", "emulator", "--port", "0",
             "--compartments", str(args.compartments), "--regions", args.regions,
             "--platform-images", str(args.platform_images), "--dataset", args.dataset,
             "--oci-config-dir", f"{temp}/oci"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            startup = time.perf_counter() - started
            url = line.removeprefix("listening on ")
            at_start = memory_mb(process.pid)
            print(f"start-up: {startup:.2f} s, RSS {at_start['VmRSS']:.0f} MB")
            config = oci.config.from_file(f"{temp}/oci/config")
            identity = oci.identity.IdentityClient(config, service_endpoint=url)
            comps = oci.pagination.list_call_get_all_results(
                identity.list_compartments,
                config["tenancy"],
                compartment_id_in_subtree=True,
                access_level="ACCESSIBLE",
                lifecycle_state="ACTIVE",
                limit=1000,
            ).data
            ids = [config["tenancy"]] + [c.id for c in comps]
            regions = args.regions.split(",")
            listings = [(r, c) for c in ids for r in regions][: args.listings]
            signer = oci.signer.Signer.from_config(config)
            session = requests.Session()

            def walk(listing: tuple[str, str]) -> int:
                region, compartment = listing
                served, page = 0, None
                while True:
                    params = {"compartmentId": compartment, "limit": "1000"}
                    if page:
                        params["page"] = page
                    response = session.get(
                        f"{url}/{region}/20160918/images", params=params, auth=signer, timeout=60
                    )
                    response.raise_for_status()
                    served += len(orjson.loads(response.content))
                    page = response.headers.get("opc-next-page")
                    if not page:
                        return served

            for label in ("cold", "again"):
                before, wall = cpu_seconds(process.pid), time.perf_counter()
                with ThreadPoolExecutor(8) as pool:
                    served = sum(pool.map(walk, listings))
                cpu = cpu_seconds(process.pid) - before
                wall = time.perf_counter() - wall
                print(
                    f"{label}: {len(listings)} listings, {served:,} records in {wall:.1f} s; "
                    f"emulator CPU {cpu:.2f} s = {served / cpu:,.0f} records per CPU second"
                )
            final = memory_mb(process.pid)
            print(f"memory: RSS {final['VmRSS']:.0f} MB, peak {final['VmHWM']:.0f} MB")
        finally:
            process.terminate()
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
