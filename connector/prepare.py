"""Everything a run is made of, decided before it starts: ``prepare`` builds the frozen
``RunContext`` from the settings, the credentials and the shard, sending no request and writing
nothing, so that whatever cannot work (a run id, a snapshot date, a store or a table format that
cannot be used here) fails before any request; and the manifest a shard writes at its end."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from connector import formats, names, schema
from connector._version import __version__
from connector.config import Settings
from connector.lake import layout, lock, storage, tables
from connector.lake.layout import Layout
from connector.lake.manifest import (
    ListingRecord,
    Manifest,
    RequestCounts,
    SearchLag,
    Timings,
    utc_now,
)
from connector.lake.storage import Store
from connector.lake.tables import TableWriter
from connector.oci import regions
from connector.oci.auth import Credentials
from connector.oci.endpoints import Endpoints
from connector.pages import RunInfo
from connector.sinks import FileInfo, SinkOptions
from connector.workers.page import WorkerSetup


def new_run_id() -> str:
    """A sortable, unique run id."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(frozen=True, slots=True)
class RunContext:
    """What one run, or one shard of a run, is: decided once, read by every stage."""

    settings: Settings
    credentials: Credentials
    run_id: str
    shard: tuple[int, int]
    """(index, count); (0, 1) is the whole run."""
    publish_now: bool
    """A whole run commits itself; a shard only stages, for ``commit``."""
    rate_share: float
    """This shard's part of the tenancy's request budget (1/N of N shards run in parallel)."""
    store: Store
    table: TableWriter | None
    owner: lock.Owner
    """This process, as its locks and its staging attempt record it."""
    layout: Layout
    endpoints: Endpoints
    filters: Mapping[str, str]
    """The ListImages query parameters, spelled as the flavor spells them."""
    workers: WorkerSetup

    @property
    def snapshot_date(self) -> str:
        """The partition this run writes."""
        return self.layout.snapshot_date

    def manifest(
        self,
        started_at: str,
        files: list[FileInfo],
        reject_files: list[FileInfo],
        datasets: Mapping[str, tuple[FileInfo, ...]],
        listings: tuple[ListingRecord, ...],
        requests: RequestCounts,
        timings: Timings,
        compartment_records_skipped: int = 0,
        search: tuple[SearchLag, ...] | None = None,
    ) -> Manifest:
        """What this attempt staged, as its shard manifest (or its failure record) says."""
        output = self.settings.output
        return Manifest(
            run_id=self.run_id,
            snapshot_date=self.snapshot_date,
            status="partial" if any(r.failed for r in listings) else "succeeded",
            started_at=started_at,
            finished_at=utc_now(),
            files=tuple(files),
            reject_files=tuple(reject_files),
            compartments=listings,
            requests=requests,
            format=output.format,
            compression=output.effective_compression,
            platform_images=self.settings.fetch.platform_images,
            filters=self.filters,
            schema_fingerprint=schema.fingerprint(),
            connector_version=__version__,
            shard=self.shard,
            datasets=datasets,
            attempt=self.owner.attempt,
            timings=timings,
            compartment_records_skipped=compartment_records_skipped,
            search=search,
        )


def prepare(
    settings: Settings,
    credentials: Credentials,
    shard: tuple[int, int] = (0, 1),
    *,
    run_id: str | None = None,
    publish_now: bool = True,
    rate_share: float | None = None,
    store: Store | None = None,
) -> RunContext:
    """The run's context (see the module docstring); ``ConfigError`` for what cannot work.
    ``store``: the output's, already resolved (and checked: ``validation.output_store``)."""
    run_id = names.check_run_id(run_id) if run_id is not None else new_run_id()
    home = credentials.home_region
    endpoints = Endpoints.from_settings(settings.oci, regions.canonical(home) if home else None)
    output = settings.output
    store = store or storage.resolve(output.uri, output.storage_options)
    table = tables.for_output(output, store)
    # Every attempt stages in its own folder, even under a run id used before.
    owner = lock.Owner.me(run_id, lock.new_attempt_id(), settings.fetch.run_deadline_s)
    day = names.check_snapshot_date(output.effective_snapshot_date)
    staged = Layout(store.base, run_id, day, owner.attempt)
    data_prefix, reject_prefix = layout.shard_prefixes(*shard)
    workers = WorkerSetup(
        run=RunInfo(run_id, date.fromisoformat(day), settings.scope.tenancy or credentials.tenancy),
        platform_mode=settings.fetch.platform_images,
        fs=store.fs,
        layout=staged,
        options=SinkOptions(
            formats.get(output.format),
            output.effective_compression,
            table=bool(output.table_format),
        ),
        file_prefix=data_prefix,
        reject_prefix=reject_prefix.removeprefix("rejects-"),
        heartbeat_s=settings.fetch.worker_heartbeat_s,
        custom_ids=settings.fetch.strategy == "search",
    )
    return RunContext(
        settings=settings,
        credentials=credentials,
        run_id=run_id,
        shard=shard,
        publish_now=publish_now,
        rate_share=rate_share if rate_share is not None else 1.0 / shard[1],
        store=store,
        table=table,
        owner=owner,
        layout=staged,
        endpoints=endpoints,
        filters=settings.filters.query_params(settings.oci.flavor),
        workers=workers,
    )
