"""What a run records: the typed records of its manifests.

Each shard writes a shard manifest into the run's staging (``Manifest`` with ``shard`` set);
``merge`` makes one of every shard's manifest. The commit that then decides whether the
partition may be published (a failed listing blocks it unless ``output.allow_partial``), writes
``_manifest.json`` and ``_SUCCESS`` last and swaps the partition in is
``connector.lake.committing.commit_run``; it imports this module, not the other way round. The
records here are typed; ``as_dict`` gives the JSON the manifest file holds, key for key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow.fs as pafs

from connector import logs
from connector.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
)
from connector.lake import durable
from connector.lake.layout import MANIFEST
from connector.pages import ListingError, WorkItem
from connector.sinks import FileInfo

log = logs.get_logger("connector.lake.manifest")

Status = Literal["succeeded", "partial", "failed"]
"""How a run, a shard or a commit ended."""


@dataclass(frozen=True, slots=True)
class ListingRecord:
    """One listing (a compartment in a region) in the manifest."""

    region: str
    compartment_id: str
    pages: int
    rows: int
    duplicates_dropped: int
    rejects: int
    error: ListingError | None = None

    @property
    def item(self) -> WorkItem:
        """The listing this record describes."""
        return WorkItem(self.region, self.compartment_id)

    @property
    def failed(self) -> bool:
        """Whether fetching or converting the listing failed (its rows were left out)."""
        return self.error is not None

    def as_dict(self) -> dict[str, Any]:
        """The record as the manifest writes it."""
        return {
            "region": self.region,
            "compartment_id": self.compartment_id,
            "status": "failed" if self.failed else "ok",
            "pages": self.pages,
            "rows": self.rows,
            "duplicates_dropped": self.duplicates_dropped,
            "rejects": self.rejects,
            "error": self.error.as_dict() if self.error else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ListingRecord:
        """Read back what ``as_dict`` wrote."""
        error = data.get("error")
        return cls(
            data["region"],
            data["compartment_id"],
            data["pages"],
            data["rows"],
            data["duplicates_dropped"],
            data["rejects"],
            ListingError.from_dict(error) if error else None,
        )


ID_SAMPLE = 100
"""Image ids a manifest names per region and direction of Search's lag (the counts are whole)."""


@dataclass(frozen=True, slots=True)
class SearchLag:
    """Resource Search's index against one region's listings (``fetch.strategy = "search"``).

    ``unknown``: custom images the listings returned that Search did not know (created since
    it indexed them: the index lags); ``gone``: images Search knew that the listings did not
    return (deleted since), None when filters Search cannot express make that unknowable.
    """

    region: str
    searched: bool
    """False when Search failed in the region, which was then listed in full."""
    listings: int
    """Listings compared with Search's answer."""
    indexed: int
    """Custom images Search knew in those listings' compartments."""
    unknown: int
    gone: int | None
    unknown_ids: tuple[str, ...] = ()
    """The first ``ID_SAMPLE`` of them, sorted."""
    gone_ids: tuple[str, ...] = ()

    def __add__(self, other: SearchLag) -> SearchLag:
        gone = None if self.gone is None or other.gone is None else self.gone + other.gone
        return SearchLag(
            self.region,
            self.searched and other.searched,
            self.listings + other.listings,
            self.indexed + other.indexed,
            self.unknown + other.unknown,
            gone,
            tuple(sorted(self.unknown_ids + other.unknown_ids)[:ID_SAMPLE]),
            tuple(sorted(self.gone_ids + other.gone_ids)[:ID_SAMPLE]),
        )

    def as_dict(self) -> dict[str, Any]:
        """The record as the manifest writes it."""
        return {
            "region": self.region,
            "searched": self.searched,
            "listings": self.listings,
            "indexed": self.indexed,
            "unknown_to_search": self.unknown,
            "gone_since_indexed": self.gone,
            "unknown_ids": list(self.unknown_ids),
            "gone_ids": list(self.gone_ids),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchLag:
        """Read back what ``as_dict`` wrote."""
        gone = data["gone_since_indexed"]
        return cls(
            data["region"],
            bool(data["searched"]),
            int(data["listings"]),
            int(data["indexed"]),
            int(data["unknown_to_search"]),
            None if gone is None else int(gone),
            tuple(data.get("unknown_ids", ())),
            tuple(data.get("gone_ids", ())),
        )


def merge_lags(lags: Sequence[SearchLag]) -> tuple[SearchLag, ...]:
    """One record per region, summed over shards, sorted by region."""
    merged: dict[str, SearchLag] = {}
    for lag in lags:
        merged[lag.region] = merged[lag.region] + lag if lag.region in merged else lag
    return tuple(merged[region] for region in sorted(merged))


@dataclass(frozen=True, slots=True)
class RequestCounts:
    """Requests a run sent, retried, and had throttled."""

    sent: int = 0
    retried: int = 0
    throttled: int = 0

    def __add__(self, other: RequestCounts) -> RequestCounts:
        return RequestCounts(
            self.sent + other.sent, self.retried + other.retried, self.throttled + other.throttled
        )


@dataclass(frozen=True, slots=True)
class Timings:
    """Where a run's time went, in seconds.

    ``discovery``, ``fetch`` and ``commit`` are wall time: listing the compartments, from the
    first ListImages request to the last page, and publishing. ``convert`` is the time the
    workers spent converting and writing pages: it overlaps ``fetch`` (workers run beside the
    fetcher, on the other cores), and with several workers it can exceed it. A merged manifest
    holds the longest shard's wall times and the sum of their conversion times.
    """

    discovery_s: float = 0.0
    fetch_s: float = 0.0
    convert_s: float = 0.0
    commit_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "discovery_s": self.discovery_s,
            "fetch_s": self.fetch_s,
            "convert_s": self.convert_s,
            "commit_s": self.commit_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timings:
        """Read back what ``as_dict`` wrote (a manifest from before timings: zeros)."""
        return cls(**{k: float(data.get(k, 0.0)) for k in cls.__slots__})


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a shard staged (``shard`` set), or what a commit published (``shards`` set)."""

    run_id: str
    snapshot_date: str
    status: Status
    started_at: str
    finished_at: str
    files: tuple[FileInfo, ...]
    reject_files: tuple[FileInfo, ...]
    compartments: tuple[ListingRecord, ...]
    requests: RequestCounts
    format: str
    compression: str
    platform_images: str
    filters: Mapping[str, str]
    schema_fingerprint: str
    connector_version: str
    shard: tuple[int, int] | None = None
    """(index, count) of a shard manifest."""
    shards: int | None = None
    """How many shards a merged manifest was merged from."""
    datasets: Mapping[str, tuple[FileInfo, ...]] = field(default_factory=dict)
    """The files of the datasets published beside ``images`` (``compartments``, ``changes``),
    relative to each one's partition directory."""
    table: Mapping[str, Any] | None = None
    """With ``output.table_format``: the table commit that published the rows (Delta:
    ``format``, ``uri``, ``version``; Iceberg: ``format``, ``table``, ``location``,
    ``snapshot_id``)."""
    attempt: str | None = None
    """The staging attempt (folder) that wrote a shard's files."""
    timings: Timings = Timings()
    """Where the run's time went (discovery, fetch, convert, commit)."""
    compartment_records_skipped: int = 0
    """Compartment records from Identity that discovery could not use (no usable id, text
    that is not Unicode), each left out with a warning. Every shard discovers the same tree,
    so a merged manifest holds the largest count, not the sum."""
    search: tuple[SearchLag, ...] | None = None
    """With ``fetch.strategy = "search"``: Search's index against the listings, per region."""

    @property
    def search_unknown(self) -> int:
        """Images the listings returned that Search did not know (0 without Search)."""
        return sum(lag.unknown for lag in self.search or ())

    @property
    def search_gone(self) -> int:
        """Images Search knew that the listings did not return (0 without Search)."""
        return sum(lag.gone or 0 for lag in self.search or ())

    @property
    def rows(self) -> int:
        """Rows in the data files (with a table format, in the table's commit)."""
        if self.table is not None and "rows" in self.table:
            return int(self.table["rows"])
        return sum(f.rows for f in self.files)

    @property
    def file_count(self) -> int:
        """Data files published (with a table format, added by the table's commit)."""
        if self.table is not None and "files" in self.table:
            return int(self.table["files"])
        return len(self.files)

    @property
    def rejects(self) -> int:
        """Records that could not be converted."""
        return sum(f.rows for f in self.reject_files)

    @property
    def failed(self) -> tuple[ListingRecord, ...]:
        """The listings that failed."""
        return tuple(c for c in self.compartments if c.failed)

    def as_dict(self) -> dict[str, Any]:
        """The manifest as ``_manifest.json`` (or a shard's manifest) holds it."""
        document: dict[str, Any] = {"run_id": self.run_id, "snapshot_date": self.snapshot_date}
        if self.shard is not None:
            document["shard"] = {"index": self.shard[0], "count": self.shard[1]}
        document |= {
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "rows": self.rows,
            "rejects": self.rejects,
            "files": [_file(f) for f in self.files],
            "reject_files": [_file(f) for f in self.reject_files],
            "compartments": [c.as_dict() for c in self.compartments],
            "requests": {
                "sent": self.requests.sent,
                "retried": self.requests.retried,
                "throttled": self.requests.throttled,
            },
            "format": self.format,
            "compression": self.compression,
            "platform_images": self.platform_images,
            "filters": dict(self.filters),
            "schema_fingerprint": self.schema_fingerprint,
            "connector_version": self.connector_version,
        }
        if self.shards is not None:
            document["shards"] = self.shards
        if self.datasets:
            document["datasets"] = {
                name: {"rows": sum(f.rows for f in files), "files": [_file(f) for f in files]}
                for name, files in sorted(self.datasets.items())
            }
        if self.table is not None:
            document["table"] = dict(self.table)
        if self.attempt is not None:
            document["attempt"] = self.attempt
        document["timings"] = self.timings.as_dict()
        document["compartment_records_skipped"] = self.compartment_records_skipped
        if self.search is not None:
            document["search"] = [lag.as_dict() for lag in self.search]
        return document

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Read back what ``as_dict`` wrote."""
        shard = data.get("shard")
        return cls(
            run_id=data["run_id"],
            snapshot_date=data["snapshot_date"],
            status=data["status"],
            started_at=data["started_at"],
            finished_at=data["finished_at"],
            files=tuple(FileInfo(**f) for f in data["files"]),
            reject_files=tuple(FileInfo(**f) for f in data["reject_files"]),
            compartments=tuple(ListingRecord.from_dict(c) for c in data["compartments"]),
            requests=RequestCounts(**data["requests"]),
            format=data["format"],
            compression=data["compression"],
            platform_images=data["platform_images"],
            filters=dict(data["filters"]),
            schema_fingerprint=data["schema_fingerprint"],
            connector_version=data["connector_version"],
            shard=(shard["index"], shard["count"]) if shard else None,
            shards=data.get("shards"),
            datasets={
                name: tuple(FileInfo(**f) for f in entry["files"])
                for name, entry in data.get("datasets", {}).items()
            },
            table=data.get("table"),
            attempt=data.get("attempt"),
            timings=Timings.from_dict(data.get("timings", {})),
            compartment_records_skipped=int(data.get("compartment_records_skipped", 0)),
            search=(
                tuple(SearchLag.from_dict(lag) for lag in data["search"])
                if data.get("search") is not None
                else None
            ),
        )


def _file(info: FileInfo) -> dict[str, Any]:
    return {"path": info.path, "rows": info.rows, "bytes": info.bytes}


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run, a shard or a commit ended."""

    run_id: str
    exit_code: int
    """The process exit code: 0 complete, 1 failed, 3 partial."""
    published: bool
    manifest: Manifest | None
    """None when there was nothing to merge (a commit that found no shard)."""
    message: str = ""
    elapsed_s: float = 0.0

    @property
    def status(self) -> Status:
        """``succeeded``, ``partial`` or ``failed``, from the exit code."""
        if self.exit_code == EXIT_OK:
            return "succeeded"
        return "partial" if self.exit_code == EXIT_PARTIAL else "failed"

    def totals(self) -> dict[str, Any]:
        """The run's totals, as the ``run.finished`` event carries them and the summary line
        prints them: the manifest's counts (a table format's: its commit's rows and files), so
        that what is reported is what was published."""
        manifest = self.manifest
        failed = len(manifest.failed) if manifest else 0
        requests = manifest.requests if manifest else RequestCounts()
        return {
            "outcome": self.status,
            "published": self.published,
            "exit_code": self.exit_code,
            "snapshot_date": manifest.snapshot_date if manifest else None,
            "rows": manifest.rows if manifest else 0,
            "files": manifest.file_count if manifest else 0,
            "rejects": manifest.rejects if manifest else 0,
            "requests": requests.sent,
            "retries": requests.retried,
            "throttled": requests.throttled,
            "listings_ok": len(manifest.compartments) - failed if manifest else 0,
            "listings_failed": failed,
            "elapsed_s": round(self.elapsed_s, 2),
        } | self._search_totals()

    def _search_totals(self) -> dict[str, int]:
        """Search's lag, with ``fetch.strategy = "search"`` only."""
        manifest = self.manifest
        if manifest is None or manifest.search is None:
            return {}
        return {"search_unknown": manifest.search_unknown, "search_gone": manifest.search_gone}


def utc_now() -> str:
    """Now, as manifests write times."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_document(fs: pafs.FileSystem, partition: str) -> dict[str, Any] | None:
    """A published partition's ``_manifest.json`` as JSON (any dataset's), or None where
    there is none. On object stores a read torn by a concurrent overwrite is repeated
    (``durable.read_json``)."""
    try:
        document = durable.read_json(fs, f"{partition}/{MANIFEST}")
    except FileNotFoundError:
        return None
    return document if isinstance(document, dict) else None


def read_manifest(fs: pafs.FileSystem, partition: str) -> Manifest | None:
    """The manifest of a published ``images`` partition, typed; None where there is none."""
    document = read_document(fs, partition)
    return Manifest.from_dict(document) if document is not None else None


def merge(shards: Sequence[Manifest]) -> Manifest:
    """One manifest for a run, from its shards' manifests (in shard order)."""
    first = shards[0]
    requests = RequestCounts()
    for shard in shards:
        requests += shard.requests
    return replace(
        first,
        status="partial" if any(s.status == "partial" for s in shards) else "succeeded",
        started_at=min(s.started_at for s in shards),
        finished_at=max(s.finished_at for s in shards),
        files=tuple(f for s in shards for f in s.files),
        reject_files=tuple(f for s in shards for f in s.reject_files),
        compartments=tuple(c for s in shards for c in s.compartments),
        datasets={name: files for s in shards for name, files in s.datasets.items()},
        requests=requests,
        shard=None,
        shards=len(shards),
        attempt=None,
        timings=Timings(
            discovery_s=max(s.timings.discovery_s for s in shards),
            fetch_s=max(s.timings.fetch_s for s in shards),
            convert_s=sum(s.timings.convert_s for s in shards),
        ),
        compartment_records_skipped=max(s.compartment_records_skipped for s in shards),
        search=(
            merge_lags([lag for s in shards for lag in s.search or ()])
            if any(s.search is not None for s in shards)
            else None
        ),
    )
