"""The ``oci-images`` command line.

Each command imports what it needs when it runs, so ``--help`` and ``schema`` start fast and
``run`` pays only for its own imports. Exit codes: 0 complete, 1 failure, 2 usage or
configuration error (nothing fetched), 3 partial (some listings failed).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from connector._version import __version__
from connector.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from connector.names import DATASETS
from connector.progress import Snapshot, Terminal, render

if TYPE_CHECKING:
    from connector import Credentials, Progress, RunOutcome, Settings
    from connector.workers.spawn import Launched

EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: stdout was closed before the command wrote all of it, as shells report."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="oci-images",
        description="Export OCI Compute images (ListImages) to Parquet or NDJSON in a data lake.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _logging_arguments(parser, "info", "auto")
    # The same options after the command (`oci-images run --config c.toml --log-format json`),
    # as people type them; given there, they win. SUPPRESS: absent, they leave the value
    # given before the command (or its default) alone.
    logging_options = argparse.ArgumentParser(add_help=False)
    _logging_arguments(logging_options, argparse.SUPPRESS, argparse.SUPPRESS)
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        parser_class=_with_parents(logging_options),
    )

    run = commands.add_parser("run", help="export (or one shard of the export)")
    _config_arguments(run)
    _credential_arguments(run)
    run.add_argument("--shard", default=None, metavar="I/N", help="run shard I of N; stage only")
    run.add_argument("--run-id", default=None, help="run id (required with --shard)")
    run.add_argument(
        "--snapshot-date",
        default=None,
        metavar="DATE",
        help="YYYY-MM-DD, over output.snapshot_date: the date `plan` put in the shard's spec",
    )
    run.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )

    demo = commands.add_parser("demo", help="run configs/demo.toml against the embedded emulator")
    demo.add_argument("--output", default="demo-out", help="output directory (default: demo-out)")
    demo.add_argument("--compartments", type=int, default=180, help="emulated compartments")
    demo.add_argument("--latency-ms", type=float, default=20.0, help="emulated latency")
    demo.add_argument(
        "--dataset",
        choices=("realistic", "awkward"),
        default="realistic",
        help="emulated data: a realistic tenancy, or awkward values that test parsers",
    )

    emulator = commands.add_parser("emulator", help="serve the fake OCI API on loopback")
    from connector.emulator import cli as emulator_cli

    emulator_cli.add_arguments(emulator)

    schema = commands.add_parser("schema", help="print the output schema")
    schema.add_argument("--format", default="markdown", choices=["markdown", "json"])
    schema.add_argument(
        "--dataset",
        default="images",
        choices=DATASETS,
        help="which dataset's columns (default: images)",
    )

    plan = commands.add_parser("plan", help="print N shard specs as JSON (Airflow task mapping)")
    _config_arguments(plan)
    _credential_arguments(plan)
    plan.add_argument("--shards", type=int, required=True, help="number of shards")
    plan.add_argument("--run-id", default=None, help="run id to put in the specs")

    diff = commands.add_parser(
        "diff", help="images added, removed or changed between two published snapshots"
    )
    _config_arguments(diff)
    diff.add_argument("--from", dest="from_date", required=True, metavar="DATE", help="YYYY-MM-DD")
    diff.add_argument("--to", dest="to_date", required=True, metavar="DATE", help="YYYY-MM-DD")
    diff.add_argument(
        "--format",
        default="ndjson",
        choices=["ndjson", "summary"],
        help="ndjson: one change a line on stdout (default); summary: the counts only",
    )

    snapshots = commands.add_parser(
        "snapshots", help="list the published snapshot dates: status, rows, files and run"
    )
    _config_arguments(snapshots)
    snapshots.add_argument(
        "--format",
        default="text",
        choices=["text", "json"],
        help="text: a table (default); json: one array of objects",
    )

    commit = commands.add_parser("commit", help="publish the staged shards of one run")
    _config_arguments(commit)
    _credential_arguments(commit)
    commit.add_argument("--run-id", required=True, help="the run whose shards to publish")
    return parser


def _logging_arguments(parser: argparse.ArgumentParser, level: str, fmt: str) -> None:
    parser.add_argument("--log-level", default=level, choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format",
        default=fmt,
        choices=["auto", "json", "console"],
        help="auto: JSON lines unless stderr is a terminal",
    )


def _with_parents(*parents: argparse.ArgumentParser) -> type[argparse.ArgumentParser]:
    """A parser class whose instances (the subcommands) all take ``parents``' options."""

    class Subcommand(argparse.ArgumentParser):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["parents"] = [*kwargs.get("parents", ()), *parents]
            super().__init__(*args, **kwargs)

    return Subcommand


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML configuration file; without it, the defaults, OCI_IMAGES__SECTION__KEY "
        "environment variables and --set",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a key (TOML value; repeatable); wins over the file and the environment",
    )


CREDENTIAL_FLAGS = {"profile": "oci.profile", "region": "oci.region", "auth": "oci.auth"}
"""The OCI CLI's own flags, each the same as ``--set`` of its key (and given after them)."""


def _credential_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default=None, help="profile of the OCI config file (--set oci.profile=...)"
    )
    parser.add_argument(
        "--region",
        default=None,
        help="the credentials' region, exported when oci.regions is [] (--set oci.region=...)",
    )
    parser.add_argument(
        "--auth",
        default=None,
        metavar="MODE",
        help="api_key, security_token, instance_principal or resource_principal "
        "(--set oci.auth=...)",
    )


def overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` and then the credential flags given, as ``section.key=value`` overrides."""
    from connector.config import toml_value

    flags = [
        f"{key}={toml_value(getattr(args, flag))}"
        for flag, key in CREDENTIAL_FLAGS.items()
        if getattr(args, flag, None) is not None
    ]
    return [*args.set, *flags]


def entry() -> int:
    """The ``oci-images`` executable. The process is this tool's alone, so it keeps out numpy
    and pandas, which pyarrow would otherwise import behind its back, and the rich that
    structlog would load for tracebacks it never renders (see ``connector.lean``)."""
    from connector import lean

    lean.own_process()
    lean.fixed_mmap_threshold()
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout left early (`oci-images schema | head -1`): it has what it
        # wanted. Exit as a process killed by SIGPIPE would, without a traceback; what is
        # still buffered goes nowhere instead of failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    # Every file is closed and every result written: skip the interpreter's teardown (freeing
    # pyarrow's and aiohttp's module state, about 60 ms) as the process ends.
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)


_DISK_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EXDEV, errno.EIO}
)
"""What the output's filesystem can answer to a write that no step of the connector can fix:
one line naming the cause and the path, exit 1."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "emulator":
        from connector.emulator import cli as emulator_cli

        return emulator_cli.run(args)
    if args.command == "schema":
        return _schema(args)

    from connector import logs

    # On a terminal, log lines go above the progress bar (see connector.progress).
    args.terminal = Terminal(sys.stderr) if sys.stderr.isatty() else None
    logs.configure(args.log_level, args.log_format, stream=args.terminal)
    args.observer = None
    code = EXIT_FAILED
    try:
        code = _dispatch(parser, args)
    finally:
        if args.observer is not None:
            from connector import metrics

            metrics.CURRENT.set(None)
            # However the command ended (130/143 included): what a platform team alerts on.
            args.observer.finish(code)
    return code


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the command; its exit code, whatever it raised."""
    from connector import interrupt
    from connector.errors import ConfigError, ConnectorError

    try:
        with interrupt.handle_signals():
            if args.command == "run":
                return _run(args)
            if args.command == "demo":
                return _demo(args)
            if args.command == "plan":
                return _plan(args)
            if args.command == "commit":
                return _commit(args)
            if args.command == "diff":
                return _diff(args)
            if args.command == "snapshots":
                return _snapshots(args)
    except ConfigError as exc:
        print(f"oci-images: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except interrupt.Interrupted as exc:
        print(f"oci-images: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConnectorError as exc:
        signum = interrupt.received()
        if signum is not None:  # e.g. workers stopped by the same signal: not the news
            print(f"oci-images: {interrupt.Interrupted(signum)}", file=sys.stderr)
            return 128 + signum
        # Each message is whole on its own; a class name would tell the user nothing more.
        print(f"oci-images: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        # The disk or the filesystem refused (full, quota, read-only, permissions): the cause
        # and the path say what to do; a traceback would not.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"oci-images: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        if isinstance(exc, BaseExceptionGroup) and not exc.subgroup(KeyboardInterrupt):
            raise
        print("oci-images: interrupted by SIGINT; nothing published", file=sys.stderr)
        return 130
    parser.error(f"unknown command {args.command!r}")
    return EXIT_CONFIG


# -- commands ---------------------------------------------------------------------------------


def _schema(args: argparse.Namespace) -> int:
    from connector import api

    print(api.schema_of(args.dataset, args.format))
    return EXIT_OK


def _parse_shard(text: str | None) -> tuple[int, int]:
    from connector.errors import ConfigError

    if text is None:
        return (0, 1)
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ConfigError("--shard", f"expected I/N such as 0/4, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError("--shard", f"shard {text} is out of range: I must be from 0 to N-1")
    return index, count


def _prepare(args: argparse.Namespace) -> tuple[Settings, Credentials]:
    """Load and validate everything before any request: settings, credentials, region, tenancy."""
    from connector import api

    settings = api.load_config(args.config, overrides(args))
    return settings, api.resolve_credentials(settings)


def _run(args: argparse.Namespace) -> int:
    from connector import api
    from connector.errors import ConfigError

    shard = _parse_shard(args.shard)
    if args.run_id is not None:
        api.check_run_id(args.run_id, "--run-id")
    if args.snapshot_date is not None:
        from connector.config import date_argument

        day = date_argument("--snapshot-date", args.snapshot_date)
        args.set = [*args.set, f'output.snapshot_date="{day}"']
    if args.shard is not None and not args.run_id:
        raise ConfigError("--run-id", "is required with --shard, so that shards and commit agree")
    terminal = None if args.no_progress else args.terminal
    return _report(_execute(args, args.run_id, shard, terminal))


def _execute(
    args: argparse.Namespace,
    run_id: str | None,
    shard: tuple[int, int],
    terminal: Terminal | None,
) -> RunOutcome:
    """Run the export that ``args`` configure.

    The worker processes start as soon as the configuration is known to be valid, before the
    event loop starts any thread: they are forked from this process, which has imported pyarrow
    by then, and share its imported pages instead of importing everything again in an
    interpreter of their own (``connector.workers.spawn``). Anything that fails before the
    export owns them stops them again.
    """
    import anyio

    from connector import api, lean

    settings = api.load_config(args.config, overrides(args))
    _observe(args, settings, "run" if shard == (0, 1) else "shard", shard)
    lean.settle()
    launched = api.start_workers(settings)
    return anyio.run(_interruptible, settings, shard, run_id, launched, terminal)


def _observe(
    args: argparse.Namespace,
    settings: Settings,
    stage: Literal["run", "shard", "commit"],
    shard: tuple[int, int] = (0, 1),
) -> None:
    """The observer that writes this command's metrics when it ends (``main``), if
    ``[metrics]`` or the ``OTEL_*`` variables ask for any."""
    from connector import metrics

    if metrics.Observer.wanted(settings):
        label = f"{shard[0]}/{shard[1]}" if stage == "shard" else ""
        args.observer = metrics.Observer(settings, stage, label)
        metrics.CURRENT.set(args.observer)


async def _interruptible(
    settings: Settings,
    shard: tuple[int, int],
    run_id: str | None,
    launched: Launched | None,
    terminal: Terminal | None,
) -> RunOutcome:
    """Run the export; SIGINT or SIGTERM cancels it (its clean-up runs) and raises
    ``Interrupted`` unless it had published already."""
    from functools import partial

    from connector import api, interrupt

    def draw(progress: Progress) -> None:
        if terminal is not None:
            terminal.show(render(snapshot(progress), terminal.width()))

    try:
        outcome = await interrupt.until_noted(
            partial(
                api.run_async,
                settings,
                # Shard 0 of 1 is the whole run: it publishes, as a run without --shard does.
                shard=None if shard == (0, 1) else shard,
                run_id=run_id,
                launched=launched,
                progress=draw if terminal is not None else None,
            )
        )
    finally:
        if terminal is not None:
            terminal.clear()
    signum = interrupt.received()
    if outcome is None or (signum is not None and not outcome.published):
        raise interrupt.Interrupted(signum or 2)
    return outcome


def snapshot(progress: Progress) -> Snapshot:
    """What the progress bar shows, from the run's progress."""
    return Snapshot(
        elapsed_s=progress.elapsed_s,
        listings_total=progress.listings_total,
        listings_done=progress.listings_done,
        listings_failed=progress.listings_failed,
        rows=progress.rows,
        requests=progress.requests,
        throttled=progress.throttled,
        fetch_elapsed_s=progress.fetch_elapsed_s,
    )


def summary_line(outcome: RunOutcome) -> str:
    """The one line a run prints at the end: the totals of its ``run.finished`` event."""
    totals = outcome.totals()
    rate = totals["rows"] / outcome.elapsed_s if outcome.elapsed_s else 0.0
    status = {0: "complete", 1: "failed", 3: "partial"}.get(outcome.exit_code, "failed")
    published = "published" if outcome.published else "not published"
    counts = " ".join(
        f"{key}={totals[key]}"
        for key in (
            "rows",
            "rejects",
            "files",
            "listings_ok",
            "listings_failed",
            "requests",
            "retries",
            "throttled",
        )
    )
    # Resource Search's lag, when there is any: images it did not know, and deleted since.
    counts += "".join(
        f" {key}={totals[key]}" for key in ("search_unknown", "search_gone") if totals.get(key)
    )
    run_id = outcome.manifest.run_id if outcome.manifest else "-"
    return (
        f"{status} ({published}): {counts} "
        f"rows_per_s={rate:.0f} elapsed_s={totals['elapsed_s']:.2f} run_id={run_id}"
    )


def _report(outcome: RunOutcome) -> int:
    print(summary_line(outcome))
    if outcome.message:
        print(f"oci-images: {outcome.message}", file=sys.stderr)
    return outcome.exit_code


def _plan(args: argparse.Namespace) -> int:
    import orjson

    from connector import api
    from connector.errors import ConfigError

    if args.shards < 1:
        raise ConfigError("--shards", "must be at least 1")
    settings, credentials = _prepare(args)
    planned = api.plan(settings, args.shards, run_id=args.run_id, credentials=credentials)
    # `run --shard I/N` takes the same 1/N share of the request budget that rate_share says,
    # and the plan's date, so that shards started after midnight stage under the same one.
    specs = [
        spec.as_dict()
        | {
            "shard": f"{spec.index}/{spec.count}",
            "args": [
                "--shard",
                f"{spec.index}/{spec.count}",
                "--run-id",
                spec.run_id,
                "--snapshot-date",
                spec.snapshot_date,
            ],
        }
        for spec in planned.shards
    ]
    # One line: Airflow's BashOperator pushes the last line of stdout to XCom.
    sys.stdout.write(orjson.dumps(specs).decode() + "\n")
    return EXIT_OK


def _commit(args: argparse.Namespace) -> int:
    from connector import api

    api.check_run_id(args.run_id, "--run-id")
    settings = api.load_config(args.config, overrides(args))
    _observe(args, settings, "commit")
    return _report(api.commit(settings, args.run_id))


def _diff(args: argparse.Namespace) -> int:
    from connector import ChangeCounts, api

    settings = api.load_config(args.config, args.set)
    counts = ChangeCounts()
    out = sys.stdout.buffer
    for batch in api.diff(settings, args.from_date, args.to_date, counts=counts):
        if args.format == "ndjson":
            out.write(api.to_ndjson(batch))
    out.flush()
    print(
        f"diff {args.from_date} → {args.to_date}: added={counts.added} "
        f"removed={counts.removed} changed={counts.changed} retired={counts.retired}",
        file=sys.stderr if args.format == "ndjson" else sys.stdout,
    )
    return EXIT_OK


def _snapshots(args: argparse.Namespace) -> int:
    from connector import api

    settings = api.load_config(args.config, args.set)
    found = api.snapshots(settings)
    if args.format == "json":
        import orjson

        sys.stdout.write(orjson.dumps([s.as_dict() for s in found]).decode() + "\n")
        return EXIT_OK
    if not found:
        print(f"no snapshot is published in {settings.output.uri} yet", file=sys.stderr)
        return EXIT_OK
    header = ("snapshot_date", "status", "rows", "files", "run_id")
    table = [header] + [
        (s.snapshot_date, s.status, str(s.rows), str(s.files), s.run_id) for s in found
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [
            cell.rjust(width) if index in (2, 3) else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    return EXIT_OK


def demo_config() -> Path:
    """configs/demo.toml: from the source tree, or as installed inside the package."""
    source = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"
    if source.is_file():
        return source
    return Path(__file__).resolve().parent / "_data" / "demo.toml"


@contextlib.contextmanager
def _without_cli_credentials() -> Iterator[None]:
    """The demo signs with the emulator's key: the OCI CLI's variables, which would replace it
    (or stand for a profile by themselves), are set aside while it runs."""
    from connector.oci import auth

    names = [*auth.CLI_VARIABLES.values(), auth.AUTH_VARIABLE, "OCI_CLI_PROFILE"]
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _demo(args: argparse.Namespace) -> int:
    from connector.emulator import Behaviour, EmulatorServer, build_world
    from connector.emulator.cli import DEMO_REGIONS

    world = build_world(
        compartments=args.compartments,
        regions=DEMO_REGIONS,
        dataset=args.dataset,
        platform_images=150 if args.dataset == "realistic" else 60,
        oci_extras=True,  # typed defined-tag values and nine-digit times, as OCI sends them
        # As a tenancy holds them: a few shared-image compartments, most compartments empty.
        shape="tenancy" if args.dataset == "realistic" else "skewed",
    )
    with tempfile.TemporaryDirectory(prefix="oci-images-demo-") as folder:
        server = EmulatorServer(world, Behaviour(latency_ms=args.latency_ms), oci_config_dir=folder)
        with server:
            counts = world.counts()
            regions = ", ".join(world.regions)
            print(
                f"demo: emulator on {server.url}: {counts['compartments']} compartments, "
                f"{counts['custom_images']} custom images in {regions}",
                file=sys.stderr,
            )
            args.config = demo_config()
            args.set = [
                f'oci.config_file="{server.config_file}"',
                f'oci.endpoint="{server.endpoint_template}"',
                f'output.uri="{Path(args.output).resolve()}"',
                *getattr(args, "set", []),
            ]
            with _without_cli_credentials():
                outcome = _execute(args, None, (0, 1), args.terminal)
    code = _report(outcome)
    if outcome.published:
        images = Path(args.output).resolve() / "images"
        query = (
            "SELECT region, count(*) AS images "
            f"FROM read_parquet('{images}/*/*/*.parquet', hive_partitioning = true) GROUP BY 1"
        )
        print(f"demo: wrote {images}; query it with DuckDB:\n  {query}", file=sys.stderr)
        _first_result(query + " ORDER BY 1")
    return code


def _first_result(query: str) -> None:
    """Answer the demo's query with DuckDB, which `make demo` installs, so that the first
    thing a new user sees is an answer read back from the lake; without DuckDB, nothing."""
    try:
        import duckdb
    except ImportError:
        return
    relation = duckdb.sql(query)
    rows = relation.fetchall() if relation is not None else []
    width = max((len(str(region)) for region, _ in rows), default=0)
    print("images per region, read back with DuckDB:")
    for region, count in rows:
        print(f"  {str(region).ljust(width)}  {count:>9,}")


if __name__ == "__main__":
    sys.exit(main())
