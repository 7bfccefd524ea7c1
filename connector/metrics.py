"""Metrics at the end of every run, shard and commit: Prometheus (``[metrics]``, extra
``prometheus``) and OpenTelemetry (extra ``otel``, switched on by the ``OTEL_*`` variables; see
``connector.tracing``).

A nightly job that silently stops succeeding is what these are for, so they are written however
the command ends: complete, partial, failed, or stopped by SIGINT/SIGTERM (130/143). The command
line (or ``api.run``/``api.commit`` called as a library) creates an ``Observer`` once the
settings are known; the run hands it its request counters and its tally (``watch``) and its
outcome (``record``); ``finish(exit_code)`` writes, once.

The counts come from what the run counts anyway: the client's requests by region and HTTP
status (``RequestCounters.answers``, one counter update per request in the event loop), the
manifest's listings and rows (or, for a run that failed before it had a manifest, its tally's
listings). Nothing here runs during the fetch.

Prometheus, with prometheus_client and a registry of this module's own (no process-wide state):

- ``metrics.textfile``: ``write_to_textfile`` (a temporary file renamed over the old one, so
  node_exporter never reads half a file). ``oci_images_last_success_timestamp_seconds`` is
  read back from the previous file when this run did not succeed, and left out when no run
  ever did.
- ``metrics.pushgateway``: job ``oci_images``, grouped by ``output`` (``output.uri`` without a
  user name, password, query or fragment: readable in an alert, and nothing secret) and
  ``stage`` (``run``, ``shard`` or ``commit``; a shard adds ``shard`` = ``I/N``), so shards
  and the commit do not overwrite each other's groups. A successful run replaces its group
  (PUT); any other pushes with POST, which replaces only the metrics it sends, so the
  gateway keeps the last success pushed before. A push that fails is a warning; it never
  changes the exit code.

What a commit reports: its duration, status and timestamps, and the published manifest's rows
and listings; it sends no OCI request, so its request counters have no series (each shard
reports its own).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from connector import logs
from connector.errors import EXIT_FAILED, EXIT_OK
from connector.telemetry import Report, Stage

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry
    from prometheus_client.samples import Sample

    from connector.config import Settings
    from connector.lake.manifest import ListingRecord, RunOutcome
    from connector.oci.client import RequestCounters
    from connector.tally import Tally

log = logs.get_logger("connector.metrics")

JOB = "oci_images"
"""The Pushgateway job."""
PUSH_TIMEOUT_S = 10.0
PREFIX = "oci_images_"
LAST_SUCCESS = PREFIX + "last_success_timestamp_seconds"


class Watched(Protocol):
    """What an observer reads of a run (``connector.pipeline.Export``), typed loosely so this
    module does not import the run."""

    @property
    def tally(self) -> Tally: ...

    @property
    def client(self) -> Any: ...


CURRENT: ContextVar[Observer | None] = ContextVar("connector_metrics_observer", default=None)
"""The command line's observer, which ``api.run_async`` and ``api.commit`` report to instead of
making their own (the command knows the exit code, 130/143 included)."""


class Observer:
    """Collects one command's counts and writes its metrics once, at ``finish``."""

    def __init__(self, settings: Settings, stage: Stage, shard: str = "") -> None:
        self.settings = settings
        self.stage: Stage = stage
        self.shard = shard
        self.started = time.time()
        self._monotonic = time.monotonic()
        self.counters: RequestCounters | None = None
        self.tally: Tally | None = None
        self.outcome: RunOutcome | None = None
        self.run_id = ""
        self.finished = False

    @staticmethod
    def wanted(settings: Settings) -> bool:
        """Whether a command of ``settings`` has anything to write (cheap: no import)."""
        from connector import tracing

        return settings.metrics.enabled or tracing.configured()

    def watch(self, run: Watched, run_id: str) -> None:
        """The run whose counters to read at the end (they are live objects)."""
        self.tally = run.tally
        self.counters = run.client.counters
        self.run_id = run_id

    def record(self, outcome: RunOutcome) -> None:
        """How the run or commit ended."""
        self.outcome = outcome
        self.run_id = outcome.run_id

    def finish(self, exit_code: int) -> None:
        """Write the metrics (once; a second call does nothing). Never raises for an output
        that cannot be written: it is a warning, and the exit code stays the run's."""
        if self.finished:
            return
        self.finished = True
        config = self.settings.metrics
        report = self.report(exit_code)
        if config.textfile:
            _write_textfile(config.textfile, report)
        if config.pushgateway:
            _push(config.pushgateway, self.settings.output.uri, report)
        from connector import tracing

        if tracing.configured():
            tracing.export(report)

    def report(self, exit_code: int) -> Report:
        """The metrics of this command ending with ``exit_code``."""
        now = time.time()
        last_success = now if exit_code == EXIT_OK else None
        if last_success is None and self.settings.metrics.textfile:
            last_success = previous_success(self.settings.metrics.textfile)
        manifest = self.outcome.manifest if self.outcome else None
        report = Report(
            stage=self.stage,
            shard=self.shard,
            run_id=self.run_id,
            snapshot_date=manifest.snapshot_date if manifest else "",
            exit_code=exit_code,
            started=self.started,
            finished=now,
            duration_s=time.monotonic() - self._monotonic,
            last_success=last_success,
        )
        if self.counters is not None:
            report.requests = {key: n for key, n in self.counters.answers.items() if n}
        records: tuple[ListingRecord, ...] = ()
        if manifest is not None:
            records = manifest.compartments
            for name, files in manifest.datasets.items():
                report.rows[name, ""] = sum(f.rows for f in files)
        elif self.tally is not None:
            records = self.tally.listings()
        report.records = records
        listings: Counter[tuple[str, str]] = Counter()
        rows: Counter[str] = Counter()
        for record in records:
            listings[record.region, "failed" if record.failed else "ok"] += 1
            rows[record.region] += 0 if record.failed else record.rows
        report.listings = dict(listings)
        if manifest is not None:
            report.rows.update({("images", region): n for region, n in rows.items()})
        if self.tally is not None:
            ended = self.tally.ended.items()
            report.done_ns = {(i.region, i.compartment_id): ns for i, ns in ended}
            if self.tally.fetch_started is not None:
                report.fetch_started = self.started + (self.tally.fetch_started - self._monotonic)
        return report


@contextlib.contextmanager
def observing(settings: Settings, stage: Stage, shard: str = "") -> Iterator[Observer | None]:
    """The observer a library call reports to: the command line's, or one of its own that this
    finishes (with the outcome's exit code, or 1 when it raises; 130 for KeyboardInterrupt),
    or None when nothing is configured."""
    current = CURRENT.get()
    if current is not None:
        yield current
        return
    if not Observer.wanted(settings):
        yield None
        return
    own = Observer(settings, stage, shard)
    try:
        yield own
    except KeyboardInterrupt:
        own.finish(130)
        raise
    except BaseException:
        own.finish(EXIT_FAILED)
        raise
    own.finish(own.outcome.exit_code if own.outcome else EXIT_FAILED)


# -- Prometheus --------------------------------------------------------------------------------


def registry(report: Report, *, with_last_success: bool = True) -> CollectorRegistry:
    """The report as a prometheus_client registry of its own."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry

    families: list[Metric] = []

    def gauge(name: str, about: str, value: float) -> None:
        families.append(GaugeMetricFamily(PREFIX + name, about, value=value))

    gauge("last_run_timestamp_seconds", "When the last run ended (Unix time).", report.finished)
    if with_last_success and report.last_success is not None:
        gauge(
            "last_success_timestamp_seconds",
            "When the last run that succeeded (exit code 0) ended (Unix time).",
            report.last_success,
        )
    gauge("run_duration_seconds", "How long the last run took.", report.duration_s)
    gauge(
        "run_status",
        "The last run's exit code: 0 complete, 1 failed, 2 configuration, 3 partial, "
        "130/143 interrupted.",
        report.exit_code,
    )
    rows = GaugeMetricFamily(
        PREFIX + "rows",
        'Rows the last run wrote, by dataset and region (companion datasets: region "").',
        labels=["dataset", "region"],
    )
    for (dataset, region), n in sorted(report.rows.items()):
        rows.add_metric([dataset, region], n)
    requests = CounterMetricFamily(
        PREFIX + "requests",
        'Requests the last run sent, by region and HTTP status ("none": no response).',
        labels=["region", "status"],
    )
    for (region, status), n in sorted(report.requests.items()):
        requests.add_metric([region, status], n)
    throttled = CounterMetricFamily(
        PREFIX + "throttled",
        "Requests of the last run answered 429 (throttled), by region.",
        labels=["region"],
    )
    for region, n in sorted(report.throttled().items()):
        throttled.add_metric([region], n)
    listings = GaugeMetricFamily(
        PREFIX + "listings",
        "Listings (region, compartment) of the last run, by region and outcome (ok, failed).",
        labels=["region", "outcome"],
    )
    for (region, outcome), n in sorted(report.listings.items()):
        listings.add_metric([region, outcome], n)
    families += [rows, requests, throttled, listings]

    class Families(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from families

    made = CollectorRegistry(auto_describe=False)
    made.register(Families())
    return made


def previous_success(path: str) -> float | None:
    """``oci_images_last_success_timestamp_seconds`` of the file a previous run wrote; None
    when there is none (no file, no success yet, or a file that is not the text format)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = Path(path).read_text(encoding="utf-8")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return float(sample.value)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return None


def _write_textfile(path: str, report: Report) -> None:
    from prometheus_client import write_to_textfile

    try:
        write_to_textfile(path, registry(report))
    except OSError as exc:
        log.warning("metrics.not_written", file=path, error=f"{type(exc).__name__}: {exc}")
        return
    log.debug("metrics.written", file=path)


def grouping_key(output_uri: str, report: Report) -> dict[str, str]:
    """The Pushgateway group of a run: its output and stage (and shard)."""
    key = {"output": output_label(output_uri), "stage": report.stage}
    if report.shard:
        key["shard"] = report.shard
    return key


def output_label(uri: str) -> str:
    """``output.uri`` as a label: a local path made absolute; a URI without a user name and
    password, query or fragment."""
    parts = urlsplit(uri)
    if len(parts.scheme) <= 1 or parts.scheme == "file":  # a path (C: on Windows)
        path = parts.path if parts.scheme == "file" else uri
        return str(Path(path).expanduser().resolve())
    # oci://bucket@namespace/ has an "@" of its own: only a password makes a user part.
    host = parts.netloc.rsplit("@", 1)[-1] if parts.password is not None else parts.netloc
    return f"{parts.scheme}://{host}{parts.path}"


def _push(gateway: str, output_uri: str, report: Report) -> None:
    from prometheus_client import push_to_gateway, pushadd_to_gateway

    succeeded = report.exit_code == EXIT_OK
    push = push_to_gateway if succeeded else pushadd_to_gateway
    host = urlsplit(gateway).hostname or ""
    try:
        push(
            gateway,
            job=JOB,
            registry=registry(report, with_last_success=succeeded),
            grouping_key=grouping_key(output_uri, report),
            timeout=PUSH_TIMEOUT_S,
        )
    except Exception as exc:  # any failure of the push is a warning, never the run's failure
        log.warning("metrics.push_failed", host=host, error=f"{type(exc).__name__}: {exc}")
        return
    log.debug("metrics.pushed", host=host)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text-format document: (name, sorted labels) → value (for tests and
    for reading a file back)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        sample: Sample
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found
