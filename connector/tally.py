"""What a run counts as it goes: the listings done and failed, rows and rejects, each listing's
record for the manifest, one log line per finished listing, and the snapshot a progress
callback receives."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import structlog

from connector.lake.manifest import ListingRecord
from connector.pages import WorkItem
from connector.workers.page import ListingResult

log = structlog.get_logger("connector.pipeline")


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run stands, as ``run(..., progress=callback)`` reports it."""

    elapsed_s: float
    listings_total: int
    listings_done: int
    listings_failed: int
    rows: int
    rejects: int
    requests: int
    throttled: int
    fetch_elapsed_s: float | None
    """Seconds since fetching began (None during discovery): what an ETA is measured on."""


@dataclass(slots=True)
class Tally:
    """The run's live counts and its listings' records."""

    listings_total: int = 0
    listings_done: int = 0
    listings_failed: int = 0
    rows: int = 0
    rejects: int = 0
    started: float = field(default_factory=time.monotonic)
    fetch_started: float | None = None
    """When the listings were known and fetching began (for the ETA)."""
    records: dict[WorkItem, ListingRecord] = field(default_factory=dict)

    def listing_done(self, result: ListingResult) -> None:
        """A worker finished a listing: record it for the manifest, the counts and the log."""
        item, error = result.item, result.error
        self.records[item] = ListingRecord(
            item.region,
            item.compartment_id,
            result.pages,
            result.rows,
            result.duplicates,
            result.rejects,
            error,
        )
        self.listings_done += 1
        self.rejects += result.rejects
        if error:
            self.listings_failed += 1
            log.warning(
                "listing.failed",
                region=item.region,
                compartment_id=item.compartment_id,
                pages=result.pages,
                status=error.status,
                code=error.code,
                opc_request_id=error.opc_request_id,
                reason=error.message,
            )
            return
        self.rows += result.rows
        log.debug(
            "listing.done",
            region=item.region,
            compartment_id=item.compartment_id,
            pages=result.pages,
            rows=result.rows,
        )

    def donated(self, item: WorkItem, rows: int) -> None:
        """The platform images a region's donor listing wrote, counted once the workers close."""
        self.records[item] = replace(self.records[item], rows=self.records[item].rows + rows)
        self.rows += rows

    @property
    def failed(self) -> set[WorkItem]:
        """The listings that failed."""
        return {r.item for r in self.records.values() if r.failed}

    def listings(self) -> tuple[ListingRecord, ...]:
        """Every listing's record, in order, as the manifest lists them."""
        return tuple(sorted(self.records.values(), key=lambda r: r.item))

    def snapshot(self, requests: int, throttled: int) -> Progress:
        """Where the run stands now."""
        now = time.monotonic()
        return Progress(
            elapsed_s=now - self.started,
            listings_total=self.listings_total,
            listings_done=self.listings_done,
            listings_failed=self.listings_failed,
            rows=self.rows,
            rejects=self.rejects,
            requests=requests,
            throttled=throttled,
            fetch_elapsed_s=now - self.fetch_started if self.fetch_started else None,
        )
