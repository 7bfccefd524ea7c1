"""What a user of the official SDK would write: list each compartment, then write Parquet.

Run as its own process by the benchmark runner, so that its time and peak RSS are its own:

    python -m benchmarks.sdk_baseline --oci-config DIR/config --endpoint URL --threads 16 --out F
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import oci
import pyarrow as pa
import pyarrow.parquet as pq


def list_compartment(client: oci.core.ComputeClient, compartment_id: str) -> list[dict[str, Any]]:
    result = oci.pagination.list_call_get_all_results(
        client.list_images, compartment_id, limit=1000
    )
    return [oci.util.to_dict(image) for image in result.data]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--oci-config", required=True)
    parser.add_argument("--endpoint", required=True, help="the region's base URL")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    config = oci.config.from_file(args.oci_config)
    identity = oci.identity.IdentityClient(config, service_endpoint=args.endpoint)
    compartments = [config["tenancy"]] + [
        c.id
        for c in oci.pagination.list_call_get_all_results(
            identity.list_compartments,
            config["tenancy"],
            compartment_id_in_subtree=True,
            access_level="ACCESSIBLE",
            lifecycle_state="ACTIVE",
            limit=1000,
        ).data
    ]
    # The SDK's retry strategy is on by default for list calls in recent versions; keep it.
    if args.threads == 1:
        client = oci.core.ComputeClient(config, service_endpoint=args.endpoint)
        rows = [row for c in compartments for row in list_compartment(client, c)]
    else:
        # A client per thread: the SDK's clients are not documented as thread-safe.
        def work(chunk: list[str]) -> list[dict[str, Any]]:
            client = oci.core.ComputeClient(config, service_endpoint=args.endpoint)
            return [row for c in chunk for row in list_compartment(client, c)]

        chunks = [compartments[i :: args.threads] for i in range(args.threads)]
        with ThreadPoolExecutor(args.threads) as pool:
            rows = [row for part in pool.map(work, chunks) for row in part]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, args.out, compression="zstd")
    print(len(rows))


if __name__ == "__main__":
    main()
