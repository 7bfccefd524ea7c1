"""One command's telemetry, computed once at its end (``connector.metrics.Observer.report``):
what the Prometheus outputs (``connector.metrics``) and OpenTelemetry (``connector.tracing``)
both write, each in its own format."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from connector.errors import EXIT_OK

if TYPE_CHECKING:
    from connector.lake.manifest import ListingRecord

Stage = Literal["run", "shard", "commit"]


@dataclass(slots=True)
class Report:
    """One command's metrics, computed once at its end: what every output writes."""

    stage: Stage
    shard: str
    run_id: str
    snapshot_date: str
    exit_code: int
    started: float
    """Epoch seconds."""
    finished: float
    duration_s: float
    last_success: float | None
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    """(dataset, region) → rows."""
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    """(region, status) → requests."""
    listings: dict[tuple[str, str], int] = field(default_factory=dict)
    """(region, outcome) → listings."""
    records: tuple[ListingRecord, ...] = ()
    done_ns: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(region, compartment) → when its listing ended (epoch ns), for the trace."""
    fetch_started: float | None = None
    """Epoch seconds when fetching began, for the trace."""

    @property
    def status(self) -> str:
        """``succeeded``, ``partial``, ``failed`` or ``interrupted``."""
        if self.exit_code == EXIT_OK:
            return "succeeded"
        if self.exit_code == 3:
            return "partial"
        return "interrupted" if self.exit_code in (130, 143) else "failed"

    def throttled(self) -> dict[str, int]:
        """Region → requests answered 429."""
        counts: Counter[str] = Counter()
        for (region, status), count in self.requests.items():
            counts[region] += count if status == "429" else 0
        return dict(counts)
