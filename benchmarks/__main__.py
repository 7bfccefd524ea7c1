"""Benchmarks: the connector against what users would pick instead, and the physical bound.

    python -m benchmarks            quick pass (make bench), about 6 minutes
    python -m benchmarks --full     every baseline as well (make bench-full)

Every scenario runs against the project's emulator, served from its own process on loopback.
Results are ratios measured side by side in one run, repeated; the table shows the median and
the spread (min–max). Peak RSS is read from outside each measured process (``os.wait4``).
Benchmarks are not tests: nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from benchmarks import scenarios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--full", action="store_true", help="every baseline and more repeats")
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated scenario ids (default: S1,S2,S3,S4,P1,E1; with --full, S5 and S6 too)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latest.json"))
    args = parser.parse_args(argv)
    repeat = args.repeat or 5  # the machine is noisy: medians of five (S5, S6: DEFAULT_REPEAT)
    default = "S1,S2,S3,S4,P1,E1" + (",S5,S6" if args.full else "")
    chosen = [s.strip() for s in (args.only or default).split(",")]
    from connector import logs

    compiled()
    logs.configure("warning", "json")  # in-process scenarios (S3, E1) log as a run would
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    for scenario in chosen:
        print(f"== {scenario} ...", file=sys.stderr, flush=True)
        runs = args.repeat or scenarios.DEFAULT_REPEAT.get(scenario, repeat)
        results += scenarios.RUNNERS[scenario](full=args.full, repeat=runs)
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": "python -m benchmarks" + (" --full" if args.full else ""),
        "repeat": repeat,
        "elapsed_s": round(time.monotonic() - started, 1),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(markdown(report))
    print(f"\nJSON: {args.out}", file=sys.stderr)
    return 0


def compiled() -> None:
    """Bring the package's bytecode up to date, as installing it does: a process measured with
    stale bytecode (an edited checkout, or ``PYTHONDONTWRITEBYTECODE`` set, as on this project's
    machines) compiles the modules it imports every time, about 0.08 CPU seconds an S1 run."""
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in ("connector", "benchmarks"):
        compileall.compile_dir(root / package, quiet=1)


def machine() -> dict[str, Any]:
    import os

    import aiohttp
    import duckdb
    import oci
    import pandas
    import pyarrow

    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pyarrow": pyarrow.__version__,
        "aiohttp": aiohttp.__version__,
        "orjson": orjson.__version__,
        "pandas": pandas.__version__,
        "oci": oci.__version__,
        "duckdb": duckdb.__version__,
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Measured {report['date']} on {m['cores']} cores, Python {m['python']}, pyarrow {m['pyarrow']}, "
        f"aiohttp {m['aiohttp']}, orjson {m['orjson']}, pandas {m['pandas']}, oci {m['oci']}; "
        f"`{report['command']}`, median of {report['repeat']} (min–max).",
        "",
        "| id | measurement | median | spread | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        spread = f"{r['min']:{r['fmt']}}–{r['max']:{r['fmt']}}" if r.get("min") is not None else ""
        met = "" if r.get("met") is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['id']} | {r['name']} | {r['median']:{r['fmt']}}{r['unit']} | {spread} | {r.get('goal', '')} | {met} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
