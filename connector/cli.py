"""The ``oci-images`` command line.

Each command imports what it needs when it runs, so ``--help`` and ``schema`` start fast and
``run`` pays only for its own imports.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from connector import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="oci-images",
        description="Export OCI Compute images (ListImages) to Parquet or NDJSON.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emulator = commands.add_parser("emulator", help="serve the fake OCI API on loopback")
    from connector.emulator import cli as emulator_cli

    emulator_cli.add_arguments(emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "emulator":
        from connector.emulator import cli as emulator_cli

        return emulator_cli.run(args)
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
