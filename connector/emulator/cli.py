"""The ``oci-images emulator`` command: serve the fake OCI API on loopback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from datetime import date
from pathlib import Path

DEMO_REGIONS = ("us-ashburn-1", "eu-frankfurt-1")
"""The regions the demo serves, and the command by default."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The emulator's options."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one")
    parser.add_argument("--seed", type=int, default=42, help="data generator seed")
    parser.add_argument(
        "--compartments",
        type=int,
        default=180,
        help="ACTIVE accessible compartments besides the root",
    )
    parser.add_argument(
        "--regions",
        default=",".join(DEMO_REGIONS),
        help="comma-separated; the first is the home region (default: the demo's two)",
    )
    parser.add_argument(
        "--platform-images",
        type=int,
        default=150,
        help="platform images per region listing (the newest three builds of each line)",
    )
    parser.add_argument(
        "--flavor",
        choices=("oci", "pca"),
        default="oci",
        help="oci: commercial OCI; pca: Private Cloud Appliance (sortBy NAME, compartmentId '')",
    )
    parser.add_argument(
        "--dataset",
        choices=("realistic", "awkward"),
        default="realistic",
        help="realistic names, sizes, dates and tags; or awkward values for testing parsers",
    )
    parser.add_argument(
        "--shape",
        choices=("skewed", "tenancy"),  # connector.emulator.data.SHAPES, not imported to parse
        default="skewed",
        help="how custom images spread: skewed (every compartment holds some, a few thousands: "
        "what benchmarks measure) or tenancy (as `demo` serves: a few shared-image compartments "
        "hold most, most hold none)",
    )
    parser.add_argument(
        "--oci-extras",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --flavor oci: defined-tag values of any JSON type and occasional nine-digit "
        "fractions, as commercial OCI sends them (default: on)",
    )
    parser.add_argument(
        "--reference-date",
        type=date.fromisoformat,
        default=None,
        help="today, YYYY-MM-DD: the realistic data set's times end there, and the platform "
        "catalogue (both data sets) is the one listed that day (default: today, UTC; for the "
        "awkward data set, a fixed day)",
    )
    parser.add_argument(
        "--cache-mb",
        type=float,
        default=128.0,
        help="memory for generated listings (JSON and objects), least recently used out",
    )
    parser.add_argument(
        "--custom-scale", type=float, default=1.0, help="multiplies custom images per compartment"
    )
    parser.add_argument(
        "--bad-records", type=float, default=0.0, help="share of custom images sent malformed"
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="mean response latency")
    parser.add_argument(
        "--jitter", type=float, default=0.5, help="latency spread, as a fraction of the mean"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="requests/s per tenancy and region before 429 (0 = unlimited)",
    )
    parser.add_argument("--burst", type=float, default=10.0, help="token-bucket burst for --rate")
    parser.add_argument(
        "--retry-after", type=float, default=None, help="send Retry-After with 429 (OCI sends none)"
    )
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of requests answered 500/503"
    )
    parser.add_argument(
        "--shift-rate", type=float, default=0.0, help="share of pages that repeat the last item"
    )
    parser.add_argument(
        "--truncate-rate", type=float, default=0.0, help="share of bodies cut short"
    )
    parser.add_argument("--reset-rate", type=float, default=0.0, help="share of connections reset")
    parser.add_argument(
        "--stall-rate", type=float, default=0.0, help="share of responses delayed by --stall-s"
    )
    parser.add_argument(
        "--stall-s", type=float, default=30.0, help="how long a stalled response waits"
    )
    parser.add_argument(
        "--default-limit", type=int, default=100, help="page size when the client sends no limit"
    )
    parser.add_argument(
        "--trailing-empty-page",
        action="store_true",
        help="a last full page still carries opc-next-page, leading to an empty page",
    )
    parser.add_argument(
        "--empty-share",
        type=float,
        default=0.0,
        help="share of compartments holding no custom image (most, in a real tenancy)",
    )
    parser.add_argument(
        "--search-lag",
        type=float,
        default=0.0,
        help="Resource Search's index lag: share of custom images it does not know yet",
    )
    parser.add_argument(
        "--search-ghosts",
        type=int,
        default=0,
        help="deleted images Resource Search still lists, per region",
    )
    hostile = parser.add_argument_group("hostile behaviours (reliability testing)")
    hostile.add_argument(
        "--endless-pages",
        action="store_true",
        help="after the last record, empty pages that each point to another",
    )
    hostile.add_argument(
        "--gzip-bomb-mib",
        type=int,
        default=0,
        help="gzip every ListImages page behind this many MiB of whitespace (1024: 1 MB to 1 GiB)",
    )
    hostile.add_argument(
        "--huge-page-mb", type=float, default=0.0, help="pad every ListImages page to this size"
    )
    hostile.add_argument(
        "--poison",
        action="append",
        default=[],
        choices=("invalid_utf8", "lone_surrogate", "deep_nesting"),
        help="add a record of this kind to each listing's first page (repeatable)",
    )
    hostile.add_argument(
        "--cut-json-rate",
        type=float,
        default=0.0,
        help="share of bodies cut after a } or ], with a matching Content-Length",
    )
    hostile.add_argument(
        "--reject-auth", action="store_true", help="answer every API call 401 (a bad key)"
    )
    hostile.add_argument(
        "--hostile-region",
        action="append",
        default=[],
        metavar="NAME",
        help="also list this READY region subscription, e.g. ../x (repeatable)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, default=None, help="serve HTTPS with this PEM certificate chain"
    )
    parser.add_argument(
        "--tls-key", type=Path, default=None, help="the private key of --tls-cert (PEM)"
    )
    parser.add_argument(
        "--oci-config-dir",
        type=Path,
        default=None,
        help="write key.pem and an OCI config here; a key.pem already there is kept, so "
        "configurations set up against an earlier start keep working",
    )
    parser.add_argument(
        "--truth",
        type=Path,
        default=None,
        help="write the ground truth as NDJSON, then serve (generates every listing first)",
    )


def run(args: argparse.Namespace) -> int:
    """Build the world, write credentials, and serve until interrupted."""
    import orjson

    from connector.emulator.app import Behaviour, Emulator
    from connector.emulator.data import build_world
    from connector.emulator.server import (
        issue_credentials,
        kept_key,
        serve_forever,
        tls_context,
        write_oci_config,
    )

    if (args.tls_cert is None) != (args.tls_key is None):
        print("oci-images emulator: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    regions = tuple(r.strip() for r in args.regions.split(",") if r.strip())
    world = build_world(
        seed=args.seed,
        compartments=args.compartments,
        regions=regions,
        platform_images=args.platform_images,
        custom_scale=args.custom_scale,
        bad_records=args.bad_records,
        flavor=args.flavor,
        dataset=args.dataset,
        reference_date=args.reference_date,
        cache_mb=args.cache_mb,
        oci_extras=args.oci_extras,
        shape=args.shape,
        empty_share=args.empty_share,
    )
    behaviour = Behaviour(
        latency_ms=args.latency_ms,
        jitter=args.jitter,
        rate=args.rate,
        burst=args.burst,
        retry_after=args.retry_after,
        fault_rate=args.fault_rate,
        truncate_rate=args.truncate_rate,
        reset_rate=args.reset_rate,
        stall_rate=args.stall_rate,
        stall_s=args.stall_s,
        trailing_empty_page=args.trailing_empty_page,
        shift_rate=args.shift_rate,
        default_limit=args.default_limit,
        endless_pages=args.endless_pages,
        gzip_bomb_mib=args.gzip_bomb_mib,
        huge_page_mb=args.huge_page_mb,
        poison=tuple(args.poison),
        cut_json_rate=args.cut_json_rate,
        reject_auth=args.reject_auth,
        hostile_regions=tuple(args.hostile_region),
        search_lag=args.search_lag,
        search_ghosts=args.search_ghosts,
    )
    context = tls_context(args.tls_cert, args.tls_key)
    emulator = Emulator(world, behaviour, seed=args.seed)
    key = None if args.oci_config_dir is None else kept_key(args.oci_config_dir)
    credentials = issue_credentials(emulator, key)
    config = None
    if args.oci_config_dir is not None:
        config = write_oci_config(args.oci_config_dir, credentials, world.home_region)
        kept = "kept key.pem" if key is not None else "new key.pem"
        print(f"oci config: {config} (profiles DEFAULT, SESSION; {kept})", file=sys.stderr)
    if args.truth is not None:
        with args.truth.open("wb") as out:
            for listing in world.truth():
                out.write(orjson.dumps(listing) + b"\n")
    counts = world.counts()
    print(
        f"tenancy {world.tenancy_id}: {counts['compartments']} listable compartments, "
        f"{counts['listing_rows']} listing rows in all, regions {','.join(world.regions)}, "
        f"{counts['custom_images']} custom images, flavor {world.flavor}, data set "
        f"{world.dataset}, shape {world.shape}",
        file=sys.stderr,
    )

    def announce(line: str) -> None:
        print(line, flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(emulator, args.host, args.port, announce, context, config))
    return 0
