"""The least any client must do for S1: sign and fetch every page, then throw it away.

No conversion, no files, no retries, no logging: plain aiohttp and the connector's request
signer (the same RSA signature the SDK makes). Its wall time is the floor of the S1 workload on
this machine, for any client, and the SDK's time divided by it the most any client could show.

    python -m benchmarks.bare_client --oci-config DIR/config --endpoint URL --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import aiohttp
import orjson
from yarl import URL

from connector.oci.auth import ApiKeySigner, load_profile


async def fetch_all(config: str, endpoint: str, concurrency: int) -> int:
    profile = load_profile(config, "DEFAULT")
    signer = ApiKeySigner.from_profile(profile)
    limit = asyncio.Semaphore(concurrency)
    pages = 0
    async with aiohttp.ClientSession() as session:

        async def get(path: str, params: dict[str, str]) -> tuple[str | None, bytes]:
            nonlocal pages
            url = str(URL(endpoint + path).with_query(params))
            headers: dict[str, str] = {}
            await signer.sign("GET", url, headers)
            async with limit, session.get(url, headers=headers) as response:
                response.raise_for_status()
                pages += 1
                return response.headers.get("opc-next-page"), await response.read()

        async def walk(path: str, params: dict[str, str]) -> list[Any]:
            items: list[Any] = []
            token: str | None = None
            while True:
                token, body = await get(path, params | ({"page": token} if token else {}))
                items += orjson.loads(body) if path.endswith("compartments") else [None]
                if token is None:
                    return items

        tenancy = profile.tenancy or ""
        listed = await walk(
            "/20160918/compartments",
            {"compartmentId": tenancy, "compartmentIdInSubtree": "true", "limit": "1000",
             "accessLevel": "ACCESSIBLE", "lifecycleState": "ACTIVE"},
        )  # fmt: skip
        compartments = [tenancy] + [c["id"] for c in listed]
        await asyncio.gather(
            *(walk("/20160918/images", {"compartmentId": c, "limit": "1000"}) for c in compartments)
        )
    return pages


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--oci-config", required=True)
    parser.add_argument("--endpoint", required=True, help="the region's base URL")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    print(asyncio.run(fetch_all(args.oci_config, args.endpoint, args.concurrency)))


if __name__ == "__main__":
    main()
