"""OpenTelemetry traces and metrics of a run (extra ``otel``), switched on only by the standard
``OTEL_*`` environment variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the traces' or metrics'
own endpoint variable), and not ``OTEL_SDK_DISABLED=true``. Unconfigured, nothing here imports
opentelemetry and nothing costs anything.

Everything is made at the end of the command, in the process that fetched, from the counts the
run kept anyway (``connector.telemetry.Report``): the run's span (run id, snapshot date, status,
rows), one span per region (from the start of the fetch to its last listing), each listing an
event of its region's span (compartment, pages, rows, status), with the timestamps they
happened at; the same counters as ``[metrics]`` as OpenTelemetry metrics. Then both providers
are shut down, which exports what they hold (a SIGTERM'd run included: the command finishes
its metrics before it exits 143). The exporter is OTLP over HTTP (protobuf); the SDK reads its
endpoint, headers, timeout and the resource attributes (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``) from the environment itself.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from connector import logs
from connector._version import __version__
from connector.telemetry import Report

if TYPE_CHECKING:
    from connector.lake.manifest import ListingRecord

log = logs.get_logger("connector.tracing")

ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
SERVICE_NAME = "oci-images-connector"
SCOPE = "connector"


def configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for an export (an endpoint set, the SDK not
    disabled). Reads the environment only."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def export(report: Report, environ: Mapping[str, str] | None = None) -> None:
    """Send the run's trace and metrics (see the module's docstring); the providers are shut
    down before this returns, so everything is exported (or given up on, after the SDK's own
    ``OTEL_EXPORTER_OTLP_TIMEOUT``)."""
    env = os.environ if environ is None else environ
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        log.warning(
            "tracing.unavailable",
            reason="OTEL_EXPORTER_OTLP_ENDPOINT is set, but the opentelemetry SDK is not "
            "installed: pip install 'oci-images-connector[otel]'",
        )
        return
    from opentelemetry.sdk.resources import Resource

    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {"service.name": SERVICE_NAME})
    if _wanted(env, "TRACES"):
        _trace(report, resource)
    if _wanted(env, "METRICS"):
        _metrics(report, resource)


def _wanted(env: Mapping[str, str], signal: str) -> bool:
    """Whether ``signal`` (TRACES, METRICS) has an endpoint and is not turned off
    (``OTEL_TRACES_EXPORTER=none``)."""
    if env.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() == "none":
        return False
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    return any(env.get(name, "").strip() for name in endpoints)


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _trace(report: Report, resource: Any) -> None:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import Status, StatusCode

    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer(SCOPE, __version__)
    rows = sum(n for (dataset, _), n in report.rows.items() if dataset == "images")
    attributes: dict[str, str | int] = {
        "oci_images.run_id": report.run_id,
        "oci_images.snapshot_date": report.snapshot_date,
        "oci_images.status": report.status,
        "oci_images.exit_code": report.exit_code,
        "oci_images.rows": rows,
        "oci_images.stage": report.stage,
    }
    if report.shard:
        attributes["oci_images.shard"] = report.shard
    run = tracer.start_span(
        f"oci-images {report.stage}", start_time=_ns(report.started), attributes=attributes
    )
    if report.exit_code != 0:
        run.set_status(Status(StatusCode.ERROR, f"{report.status} (exit {report.exit_code})"))
    inside = trace.set_span_in_context(run)
    regions: dict[str, list[ListingRecord]] = {}
    for record in report.records:
        regions.setdefault(record.region, []).append(record)
    throttled = report.throttled()
    fetch_started = _ns(report.fetch_started or report.started)
    for region, records in sorted(regions.items()):
        ended = [report.done_ns.get((r.region, r.compartment_id)) for r in records]
        end = max((t for t in ended if t is not None), default=_ns(report.finished))
        failed = sum(1 for r in records if r.failed)
        span = tracer.start_span(
            f"region {region}",
            context=inside,
            start_time=min(fetch_started, end),
            attributes={
                "cloud.region": region,
                "oci_images.listings": len(records),
                "oci_images.listings_failed": failed,
                "oci_images.rows": sum(r.rows for r in records if not r.failed),
                "oci_images.requests": sum(
                    n for (where, _), n in report.requests.items() if where == region
                ),
                "oci_images.throttled": throttled.get(region, 0),
                # Requests not answered 200: each was retried, or failed its listing.
                "oci_images.retries": sum(
                    n
                    for (where, status), n in report.requests.items()
                    if where == region and status != "200"
                ),
            },
        )
        for record, at in sorted(zip(records, ended, strict=True), key=lambda p: p[1] or end):
            event: dict[str, str | int] = {
                "oci.compartment_id": record.compartment_id,
                "oci_images.pages": record.pages,
                "oci_images.rows": record.rows,
                "oci_images.status": "failed" if record.failed else "ok",
            }
            if record.error is not None:
                event["oci_images.error_code"] = record.error.code or ""
                event["http.response.status_code"] = record.error.status or 0
            span.add_event("listing", event, timestamp=at or end)
        if failed:
            span.set_status(Status(StatusCode.ERROR, f"{failed} listings failed"))
        span.end(end_time=end)
    run.end(end_time=_ns(report.finished))
    provider.shutdown()


def _metrics(report: Report, resource: Any) -> None:
    """The ``[metrics]`` counters, as OpenTelemetry metrics (one export, at shutdown)."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    # No periodic export during the run: the one export is the shutdown's.
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=3.6e9)
    provider = MeterProvider(metric_readers=[reader], resource=resource, shutdown_on_exit=False)
    meter = provider.get_meter(SCOPE, __version__)
    requests = meter.create_counter(
        "oci_images.requests", "{request}", "requests sent, by region and HTTP status"
    )
    for (region, status), n in report.requests.items():
        requests.add(n, {"region": region, "status": status})
    throttled = meter.create_counter(
        "oci_images.throttled", "{request}", "requests answered 429, by region"
    )
    for region, n in report.throttled().items():
        throttled.add(n, {"region": region})
    rows = meter.create_gauge("oci_images.rows", "{row}", "rows by dataset and region")
    for (dataset, region), n in report.rows.items():
        rows.set(n, {"dataset": dataset, "region": region})
    listings = meter.create_gauge("oci_images.listings", "{listing}", "by region and outcome")
    for (region, outcome), n in report.listings.items():
        listings.set(n, {"region": region, "outcome": outcome})
    meter.create_gauge("oci_images.run.status", "1", "the exit code").set(report.exit_code)
    meter.create_gauge("oci_images.run.duration", "s", "how long the run took").set(
        report.duration_s
    )
    meter.create_gauge("oci_images.last_run.timestamp", "s", "when it ended").set(report.finished)
    if report.exit_code == 0:
        meter.create_gauge("oci_images.last_success.timestamp", "s", "when it ended").set(
            report.finished
        )
    provider.shutdown()
