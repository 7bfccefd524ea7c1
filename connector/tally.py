"""What a run counts as it goes: the listings done and failed, rows and rejects, each listing's
record for the manifest, and the snapshot a progress callback receives.

Each finished listing is a debug line; failures are summed up at the end of the fetch, one
warning per region and cause (a region the tenancy does not serve fails every listing of it the
same way: one line says so, with the count, not one line per compartment)."""

from __future__ import annotations

import bisect
import time
from array import array
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass, field, replace

from connector import logs
from connector.lake.manifest import ID_SAMPLE, ListingRecord, SearchLag
from connector.oci.discovery import Discovery
from connector.pages import WorkItem
from connector.workers.page import ListingResult

log = logs.get_logger("connector.pipeline")


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
    ended: dict[WorkItem, int] = field(default_factory=dict)
    """When each listing ended (Unix time in ns): the trace's listing events
    (``connector.tracing``), one clock read per listing."""
    discovery: Discovery | None = None
    """What discovery found; with Resource Search, what each listing is compared with."""
    lags: dict[str, _Lag] = field(default_factory=dict)
    waiting: list[tuple[WorkItem, frozenset[str], _Digests]] = field(default_factory=list)
    """Listings done before their region's search was over, to compare once it is."""

    def listing_done(self, result: ListingResult) -> None:
        """A worker finished a listing: record it for the manifest, the counts and the log."""
        item, error = result.item, result.error
        self.ended[item] = time.time_ns()
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
            log.debug(
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
        self._compare(result)
        log.debug(
            "listing.done",
            region=item.region,
            compartment_id=item.compartment_id,
            pages=result.pages,
            rows=result.rows,
        )

    def _compare(self, result: ListingResult) -> None:
        """A listing's custom images against what Resource Search knew of its compartment,
        once the region's search is over. Until then the listing waits, small: the ids Search
        has not named yet as text (usually few), all of them as 8-byte digests."""
        guide = self.discovery.guide if self.discovery else None
        listed = result.custom_ids
        if guide is None or listed is None:
            return
        item = result.item
        if item.region not in guide.done:
            unnamed = listed - guide.ids(item, release=False)
            self.waiting.append((item, unnamed, _Digests(listed)))
            return
        self._compare_ids(item, listed, listed)

    def _compare_ids(self, item: WorkItem, unnamed: frozenset[str], listed: Container[str]) -> None:
        """``unnamed``: the listing's ids, or those among them Search had not named when the
        listing ended; ``listed`` answers whether the listing returned an id."""
        guide = self.discovery.guide if self.discovery else None
        assert guide is not None
        region = item.region
        lag = self.lags.setdefault(region, _Lag(region not in guide.unsearched))
        if region in guide.unsearched:
            lag.searched = False
            return
        known = guide.ids(item)
        lag.listings += 1
        lag.indexed += len(known)
        lag.unknown.update(unnamed - known)
        if guide.exact:
            lag.gone.update(image for image in known if image not in listed)

    def search_lag(self) -> tuple[SearchLag, ...] | None:
        """Search's lag per region for the manifest (None without Search); one line per region
        where it lagged."""
        guide = self.discovery.guide if self.discovery else None
        if guide is None:
            return None
        waiting, self.waiting = self.waiting, []
        for item, unnamed, listed in waiting:
            self._compare_ids(item, unnamed, listed)
        for region in guide.unsearched:
            self.lags.setdefault(region, _Lag(False))
        records = tuple(
            self.lags[region].record(region, guide.exact) for region in sorted(self.lags)
        )
        for record in records:
            if record.unknown or record.gone:
                log.info(
                    "search.lag",
                    region=record.region,
                    unknown_to_search=record.unknown,
                    gone_since_indexed=record.gone,
                )
        return records

    def report_failures(self) -> None:
        """One warning per region and cause (status, code) of the failed listings: how many of
        the region's listings failed that way, the first one's compartment and message."""
        causes: dict[tuple[str, int | None, str], list[ListingRecord]] = {}
        listings: Counter[str] = Counter()
        for record in self.listings():
            listings[record.region] += 1
            if record.error is not None:
                key = (record.region, record.error.status, record.error.code)
                causes.setdefault(key, []).append(record)
        for (region, status, code), failed in causes.items():
            first = failed[0]
            log.warning(
                "listings.failed",
                region=region,
                status=status,
                code=code,
                reason=first.error.message if first.error else "",
                hint=first.error.hint if first.error else "",
                listings_failed=len(failed),
                listings=listings[region],
                compartment_id=first.compartment_id,
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
            # Resource Search adds listings as it goes: never fewer than those done.
            listings_total=max(self.listings_total, self.listings_done),
            listings_done=self.listings_done,
            listings_failed=self.listings_failed,
            rows=self.rows,
            rejects=self.rejects,
            requests=requests,
            throttled=throttled,
            fetch_elapsed_s=now - self.fetch_started if self.fetch_started else None,
        )


class _Digests:
    """A listing's ids as sorted 8-byte digests (``hash``, stable within the process): what a
    listing that ended before its region's search needs to keep to be compared later."""

    def __init__(self, ids: frozenset[str]) -> None:
        self._digests = array("q", sorted(map(hash, ids)))

    def __contains__(self, image: object) -> bool:
        digest = hash(image)
        at = bisect.bisect_left(self._digests, digest)
        return at < len(self._digests) and self._digests[at] == digest


@dataclass(slots=True)
class _Lag:
    """One region's comparison of listings with Search, as it accumulates."""

    searched: bool
    listings: int = 0
    indexed: int = 0
    unknown: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)

    def record(self, region: str, exact: bool) -> SearchLag:
        return SearchLag(
            region,
            self.searched,
            self.listings,
            self.indexed,
            len(self.unknown),
            len(self.gone) if exact else None,
            tuple(sorted(self.unknown)[:ID_SAMPLE]),
            tuple(sorted(self.gone)[:ID_SAMPLE]),
        )
