"""The public Python API: load a configuration, plan shards, run an export or a shard, commit.

``import connector`` re-exports what is listed in ``connector.__all__``. The ``oci-images``
command is a thin layer over these functions, and so is the Airflow integration::

    settings = connector.load_config("export.toml", ["output.snapshot_date=2026-11-27"])
    outcome = connector.run(settings)                     # discover, fetch, write, publish
    plan = connector.plan(settings, shards=4)             # or: shard it
    for spec in plan.shards:                              # (each in its own task)
        connector.run(settings, shard=spec)               # stage only
    connector.commit(settings, plan.run_id)               # then publish, once

Failures that concern the whole run raise ``ConnectorError`` subclasses (``ConfigError`` for a
bad configuration, before any request); listings that failed make the outcome ``partial``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from connector import config, logs, metrics, names, validation
from connector.errors import ConfigError
from connector.lake import manifest
from connector.oci import auth

log = logs.get_logger("connector.api")

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    import pyarrow as pa

    from connector.lake.changes import ChangeCounts
    from connector.lake.snapshots import PublishedSnapshot
    from connector.pipeline import Export
    from connector.tally import Progress
    from connector.telemetry import Stage
    from connector.workers.spawn import Launched

Settings = config.Settings
DATASETS = names.DATASETS
"""The datasets a run publishes: ``images`` and its companions."""
Credentials = auth.Credentials
RunOutcome = manifest.RunOutcome


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    values: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read ``path`` (TOML), then ``values`` (``{"section": {"key": value}}``), then the
    environment's ``OCI_IMAGES__SECTION__KEY`` variables (``environ``, by default
    ``os.environ``; ``{}`` reads none), then ``overrides`` (``"section.key=value"``), each over
    the one before; validate everything (``config.load``, then ``connector.validation.check``).

    Raises ``ConfigError`` naming the key (or the environment variable).
    """
    return validation.check(config.load(path, overrides, values=values, environ=environ))


def resolve_credentials(settings: Settings) -> Credentials:
    """The credentials ``settings.oci`` describes (an OCI config profile, or a principal),
    checked against what the run needs: a region when none is configured, a tenancy when
    compartments are discovered."""
    credentials = auth.resolve_credentials(settings)
    validation.check_credentials(settings, credentials)
    return credentials


def new_run_id() -> str:
    """A sortable, unique run id (UTC time and random hex)."""
    from connector.prepare import new_run_id as make

    return make()


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """One shard of a planned run: what ``run(settings, shard=spec)`` exports."""

    index: int
    count: int
    run_id: str
    listings: int
    """(region, compartment) listings in the shard when it was planned."""
    regions: tuple[str, ...]
    rate_share: float = 0.0
    """The shard's part of the tenancy's request budget: of ``fetch.max_requests_per_second``
    and of the adaptive rate's climb (see ``connector.oci.retry``). ``plan`` gives each of N shards
    1/N, for N shards that run in parallel; 0 means 1/``count``."""
    snapshot_date: str = ""
    """The run's snapshot date, fixed when it was planned: every shard stages under it, so
    shards that start on either side of midnight (UTC) still agree at the commit. "" (a spec
    written before it existed): the settings' date."""

    def __post_init__(self) -> None:
        if not self.rate_share:
            object.__setattr__(self, "rate_share", 1.0 / max(1, self.count))
        if not 0.0 < self.rate_share <= 1.0:
            raise ConfigError("rate_share", f"must be in (0, 1], got {self.rate_share}")
        if self.snapshot_date:
            config.date_argument("snapshot_date", self.snapshot_date)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (for XCom)."""
        return {
            "index": self.index,
            "count": self.count,
            "run_id": self.run_id,
            "listings": self.listings,
            "regions": list(self.regions),
            "rate_share": self.rate_share,
            "snapshot_date": self.snapshot_date,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardSpec:
        """Read back what ``as_dict`` wrote (a spec written before ``rate_share`` existed
        gets 1/``count``; one written before ``snapshot_date``, the settings' date)."""
        return cls(
            int(data["index"]),
            int(data["count"]),
            str(data["run_id"]),
            int(data["listings"]),
            tuple(data["regions"]),
            float(data.get("rate_share") or 0.0),
            str(data.get("snapshot_date") or ""),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """A run divided into shards; every shard and the commit share ``run_id``."""

    run_id: str
    snapshot_date: str
    shards: tuple[ShardSpec, ...]


def plan(
    settings: Settings,
    shards: int,
    *,
    run_id: str | None = None,
    credentials: Credentials | None = None,
) -> Plan:
    """Discover the run's listings (a few Identity requests, and with ``fetch.strategy =
    "search"`` a few Search requests) and divide them into ``shards``."""
    return anyio.run(_plan, settings, shards, run_id, credentials)


async def _plan(
    settings: Settings, shards: int, run_id: str | None, credentials: Credentials | None
) -> Plan:
    from connector.oci import discovery
    from connector.oci.client import for_settings

    if shards < 1:
        raise ConfigError("--shards", "must be at least 1")
    settings = validation.check(settings)
    credentials = _checked(settings, credentials)
    run_id = run_id or new_run_id()
    day = settings.output.effective_snapshot_date  # once: the plan may straddle midnight
    async with for_settings(settings, credentials) as client:
        found = await discovery.discover_run(client, settings, credentials)
        if found.guide is not None:
            await found.guide.complete()
    specs = []
    for index in range(shards):
        # With Resource Search, each shard's listings are those Search found among its share.
        mine = found.listings(index, shards)
        regions = tuple(sorted({i.region for i in mine}))
        specs.append(ShardSpec(index, shards, run_id, len(mine), regions, 1.0 / shards, day))
    return Plan(run_id, day, tuple(specs))


def check_access(settings: Settings, credentials: Credentials | None = None) -> list[str]:
    """Sign one cheap request, the tenancy's region subscriptions from its home region, and
    return the regions it is subscribed to: whether the credentials work, without a run
    (Airflow's connection test). Raises ``ConfigError`` before any request when the credentials
    name no tenancy or home region, and the service's error when it refuses them."""
    return anyio.run(_check_access, settings, credentials)


async def _check_access(settings: Settings, credentials: Credentials | None) -> list[str]:
    from connector.oci import discovery
    from connector.oci.client import for_settings
    from connector.oci.endpoints import Endpoints

    credentials = _checked(settings, credentials)
    home, tenancy = credentials.home_region, credentials.tenancy
    if not home or not tenancy:
        raise ConfigError("oci.region", f"{credentials.label} names no home region or tenancy")
    endpoints = Endpoints.from_settings(settings.oci, home)
    async with for_settings(settings, credentials) as client:
        return await discovery.subscribed_regions(client, endpoints, home, tenancy)


def run(
    settings: Settings,
    *,
    shard: ShardSpec | tuple[int, int] | None = None,
    run_id: str | None = None,
    credentials: Credentials | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> RunOutcome:
    """Export: without ``shard``, discover, fetch, write and publish; with one, only stage the
    shard's files (``commit`` publishes them once every shard has run). ``progress``, when
    given, is called with a ``Progress`` every quarter second while the run fetches."""
    go = partial(
        run_async, settings, shard=shard, run_id=run_id, credentials=credentials, progress=progress
    )
    return anyio.run(go)


async def run_async(
    settings: Settings,
    *,
    shard: ShardSpec | tuple[int, int] | None = None,
    run_id: str | None = None,
    credentials: Credentials | None = None,
    progress: Callable[[Progress], None] | None = None,
    launched: Launched | None = None,
) -> RunOutcome:
    """``run``, in a running event loop (asyncio or trio, through anyio). ``launched``: worker
    processes started earlier (``connector.workers.spawn.launch``), as the command line starts
    them before it imports the rest."""
    stage: Stage = "run" if shard is None else "shard"
    with metrics.observing(settings, stage, _shard_label(shard)) as observer:
        try:
            built = export(
                settings,
                shard=shard,
                run_id=run_id,
                credentials=credentials,
                launched=launched,
                progress=progress,
            )
        except BaseException:
            if launched is not None:
                from connector.workers import spawn

                spawn.abandon(launched)
            raise
        if observer is not None:
            observer.watch(built, built.context.run_id)
        outcome = await built.run()
        if observer is not None:
            observer.record(outcome)
        return outcome


def _shard_label(shard: ShardSpec | tuple[int, int] | None) -> str:
    """``I/N`` for a shard (the metrics' ``shard`` label), "" for a whole run."""
    if shard is None:
        return ""
    index, count = (shard.index, shard.count) if isinstance(shard, ShardSpec) else shard
    return f"{index}/{count}"


def commit(settings: Settings, run_id: str) -> RunOutcome:
    """Merge the staged shards of ``run_id`` and publish the partition. ``PublishError`` when
    nothing is staged under ``run_id`` (as ``diff`` raises for a date never published); a run
    that cannot be published (a shard missing, below the ratio floor) is an outcome that says
    why."""
    from connector.lake.committing import commit_run

    with metrics.observing(settings, "commit") as observer:
        if observer is not None:
            observer.run_id = run_id
        store = validation.output_store(settings.output)
        validation.writable(store, renames=not settings.output.table_format)
        outcome = commit_run(settings, run_id, store=store)
        log.info("run.finished", run_id=outcome.run_id, **outcome.totals())
        if observer is not None:
            observer.record(outcome)
        return outcome


def diff(
    settings: Settings,
    from_date: str,
    to_date: str,
    *,
    counts: ChangeCounts | None = None,
) -> Iterator[pa.RecordBatch]:
    """Images added, removed or changed between two published snapshots of
    ``settings.output.uri``, as record batches of ``schema.CHANGES_SCHEMA``; ``counts``, when
    given, is filled in as the batches stream. Memory stays flat however large the snapshots.
    ``PublishError`` when either date has no published snapshot (as ``commit`` of a run that
    staged nothing)."""
    from connector.lake import changes, tables

    older = config.date_argument("--from", from_date)
    newer = config.date_argument("--to", to_date)
    store = validation.output_store(settings.output)
    table = tables.for_output(settings.output, store)
    return changes.diff_published(
        store.fs, store.base, older, newer, run_id=new_run_id(), table=table, counts=counts
    )


def snapshots(settings: Settings) -> list[PublishedSnapshot]:
    """The snapshots of ``images`` published under ``settings.output.uri``, oldest first: date,
    status (``complete`` or ``partial``), rows, files and the run that published each, read
    through their manifests (so a commit in progress or killed before its commit point is not
    listed)."""
    from connector.lake import snapshots as published
    from connector.lake import storage

    store = storage.resolve(settings.output.uri, settings.output.storage_options)
    return published.published(store.fs, store.base)


def start_workers(settings: Settings) -> Launched | None:
    """Start the worker processes a run of ``settings`` converts pages in, now: they import
    pyarrow and the normalizer while the caller loads credentials. Pass them to ``run_async``
    (``launched``); None where pages are parsed in the run's own process (``fetch.workers = 0``),
    which then gets the heap settings the workers would have."""
    if processes := settings.fetch.worker_processes():
        from connector.workers import spawn

        return spawn.launch(processes)
    from connector import lean

    lean.parsing_heap()
    return None


def check_run_id(run_id: object, key: str = "run_id") -> str:
    """``run_id`` if it can name a run (it becomes a folder name); ``ConfigError(key)`` else."""
    from connector import names

    return names.check_run_id(run_id, key)


def schema_of(dataset: str, form: str = "markdown") -> str:
    """The columns of ``dataset`` (one of ``DATASETS``) as a Markdown table, or as JSON."""
    from connector import schema

    columns = schema.DATASETS[dataset]
    if form == "json":
        import orjson

        return orjson.dumps(schema.describe(columns), option=orjson.OPT_INDENT_2).decode()
    return schema.markdown_table(columns)


def to_ndjson(batch: pa.RecordBatch) -> bytes:
    """Rows as NDJSON lines, encoded as the ``ndjson`` output format writes them."""
    from connector.sinks.ndjson import encode_rows

    return encode_rows(batch)


def export(
    settings: Settings,
    *,
    shard: ShardSpec | tuple[int, int] | None = None,
    run_id: str | None = None,
    credentials: Credentials | None = None,
    launched: Launched | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Export:
    """The ``Export`` that ``run`` runs."""
    from connector.pipeline import Export
    from connector.prepare import prepare

    position, run_id = _shard(shard, run_id)
    if isinstance(shard, ShardSpec) and shard.snapshot_date:
        settings = _on_date(settings, shard.snapshot_date)
    settings = validation.check(settings)
    credentials = _checked(settings, credentials)
    context = prepare(
        settings,
        credentials,
        position or (0, 1),
        run_id=run_id,
        publish_now=position is None,
        rate_share=shard.rate_share if isinstance(shard, ShardSpec) else None,
        store=validation.output_store(settings.output),
    )
    validation.writable(context.store, renames=not settings.output.table_format)
    return Export(context, launched=launched, progress=progress)


def _on_date(settings: Settings, day: str) -> Settings:
    """``settings`` for a planned shard's date: the plan's date wins over today; a different
    date set in the settings is a contradiction, not something to choose between."""
    configured = settings.output.snapshot_date
    if configured and configured != day:
        raise ConfigError(
            "output.snapshot_date",
            f"is {configured}, but the shard was planned for {day}: run every shard and the "
            "commit with the plan's date",
        )
    return settings if configured else settings.replace(**{"output.snapshot_date": day})


def _shard(
    shard: ShardSpec | tuple[int, int] | None, run_id: str | None
) -> tuple[tuple[int, int] | None, str | None]:
    """(index, count) and the run id, checked: every shard of a run needs the same run id."""
    if shard is None:
        return None, run_id
    if isinstance(shard, ShardSpec):
        if run_id is not None and run_id != shard.run_id:
            raise ConfigError("run_id", f"{run_id!r} is not the shard's run id {shard.run_id!r}")
        index, count, run_id = shard.index, shard.count, shard.run_id
    else:
        index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ConfigError(
            "--shard", f"shard {index}/{count} is out of range: I must be from 0 to N-1"
        )
    if not run_id:
        raise ConfigError("--run-id", "is required with --shard, so that shards and commit agree")
    return (index, count), run_id


def _checked(settings: Settings, credentials: Credentials | None) -> Credentials:
    if credentials is None:
        return resolve_credentials(settings)
    validation.check_credentials(settings, credentials)
    return credentials
