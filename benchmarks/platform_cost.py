"""P1: the CPU a listing pays for each platform image that ``platform_images = once`` drops.

Every ListImages listing carries its region's platform images; under ``once`` all listings but
one per region drop them. Before the pre-scan, a worker converted every record of the page to
Arrow and then filtered the platform rows out; now it recognises them on the parsed records
(``compartmentId`` null or ``""``) and converts only the rest. Both paths run here on the same
pages, in one process, with the GC as quiet as in a worker:

    python -m benchmarks.platform_cost [--pages 400] [--repeat 5]

It prints microseconds of CPU per dropped record for both, as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from connector.emulator import build_world
from connector.lean import quiet_gc
from connector.pages import Page, RunInfo
from connector.workers.normalize import normalize_page

RUN = RunInfo("bench-platform", date(2026, 11, 27))


def platform_pages(count: int, per_page: int = 150) -> list[Page]:
    """``count`` copies of one listing's platform images, each a page as the API sends it."""
    world = build_world(seed=5, compartments=1, platform_images=per_page, custom_scale=0)
    region = world.home_region
    compartment = world.listable_compartments()[0].id
    records = [i.json for i in world.listing(region, compartment)]
    platform = [r for r in records if orjson.loads(r).get("compartmentId") in (None, "")]
    if not platform:
        raise RuntimeError("the emulator's listing carries no platform images")
    body = b"[" + b",".join(platform) + b"]"
    fetched = datetime.now(UTC)
    return [Page(body, region, compartment, 1, fetched, None) for _ in range(count)]


def before(page: Page) -> int:
    """What a non-donor listing did: convert every record, then drop the platform rows."""
    batch = normalize_page(page, RUN).batch
    kept = batch.filter(pc.invert(batch.column("_is_platform")))
    return batch.num_rows - kept.num_rows


def after(page: Page) -> int:
    """What it does now: leave platform images out before converting."""
    return normalize_page(page, RUN, platform=False).batch.num_rows


def cpu_per_record(path: Any, pages: list[Page], records: int) -> float:
    """Microseconds of this process's CPU per dropped record, for one pass over ``pages``."""
    with quiet_gc():
        started = time.process_time()
        for page in pages:
            path(page)
        spent = time.process_time() - started
    return spent / records * 1e6


def measure(pages: int = 400, repeat: int = 5) -> dict[str, Any]:
    sample = platform_pages(pages)
    per_page = len(orjson.loads(sample[0].body))
    records = per_page * len(sample)
    assert before(sample[0]) == per_page  # the full path does drop them all
    assert normalize_page(sample[0], RUN, platform=False).batch.num_rows == 0
    pa.array([1])  # warm pyarrow's lazily loaded kernels outside the measurement
    results: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(repeat):
        results["before"].append(cpu_per_record(before, sample, records))
        results["after"].append(cpu_per_record(after, sample, records))
    return {
        "records_per_page": per_page,
        "pages": len(sample),
        "before_us": results["before"],
        "after_us": results["after"],
        "before_median_us": statistics.median(results["before"]),
        "after_median_us": statistics.median(results["after"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.platform_cost")
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(orjson.dumps(measure(args.pages, args.repeat), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
