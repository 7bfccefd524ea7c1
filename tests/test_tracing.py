"""OpenTelemetry (extra ``otel``): the command run against the emulator, its OTLP/HTTP export
received by a loopback server that decodes the protobuf bodies with opentelemetry-proto; and no
import of opentelemetry at all when the OTEL_* variables do not ask for it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from connector import tracing
from connector.emulator import EmulatorServer, build_world
from tests.helpers import DATE, ROOT, WORLD, QuietHandler, serving, signalled_run, write_config


@dataclass
class Receiver:
    """An OTLP/HTTP receiver on loopback: what it was sent, decoded."""

    url: str
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def spans(self) -> list[Span]:
        return [
            span
            for request in self.traces
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver("")

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            got.paths.append(self.path)
            answer: bytes
            if self.path == "/v1/traces":
                got.traces.append(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                got.metrics.append(ExportMetricsServiceRequest.FromString(body))
                answer = ExportMetricsServiceResponse().SerializeToString()
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    with serving(Handler) as got.url:
        yield got


def attributes(values: Any) -> dict[str, Any]:
    """OTLP key-values as a dict."""
    out: dict[str, Any] = {}
    item: KeyValue
    for item in values:
        kind = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, kind) if kind else None
    return out


def otel_env(receiver: Receiver, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, **more}


def test_the_run_span_region_spans_and_metrics(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, receiver: Receiver
) -> None:
    """A run with OTEL_EXPORTER_OTLP_ENDPOINT: the receiver decodes one run span with the run
    id, snapshot date, status and rows of the manifest; a span per region, children of the
    run's, each with an event per listing (pages, rows, status); and the requests counted as
    the emulator counted them, as an OTLP metric."""
    server = make_emulator(build_world(**WORLD), rate=25.0, burst=4.0)  # type: ignore[arg-type]
    config = write_config(tmp_path, server)
    result = subprocess.run(
        [sys.executable, "-m", "connector", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
        env=otel_env(receiver, OTEL_SERVICE_NAME="nightly-images"),
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    manifest = orjson.loads(
        (tmp_path / "lake" / "images" / f"snapshot_date={DATE}" / "_manifest.json").read_bytes()
    )
    spans = receiver.spans()
    [run] = [s for s in spans if not s.parent_span_id]
    assert "oci-images run" == run.name
    assert {
        "oci_images.run_id": manifest["run_id"],
        "oci_images.snapshot_date": DATE,
        "oci_images.status": "succeeded",
        "oci_images.exit_code": 0,
        "oci_images.rows": manifest["rows"],
        "oci_images.stage": "run",
    } == attributes(run.attributes)
    resource = attributes(receiver.traces[0].resource_spans[0].resource.attributes)
    assert "nightly-images" == resource["service.name"]

    stats = server.stats()
    regions = {s.name: s for s in spans if s.parent_span_id}
    assert {f"region {r}" for r in WORLD["regions"]} == set(regions)  # type: ignore[attr-defined]
    for region, span in regions.items():
        assert run.span_id == span.parent_span_id
        assert run.trace_id == span.trace_id
        assert run.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        assert span.end_time_unix_nano <= run.end_time_unix_nano
        mine = [c for c in manifest["compartments"] if f"region {c['region']}" == region]
        events = [attributes(e.attributes) for e in span.events]
        assert len(mine) == len(events)
        assert sorted((c["compartment_id"], c["pages"], c["rows"]) for c in mine) == sorted(
            (e["oci.compartment_id"], e["oci_images.pages"], e["oci_images.rows"]) for e in events
        )
        assert {"ok"} == {e["oci_images.status"] for e in events}
        name = region.removeprefix("region ")
        found = attributes(span.attributes)
        assert stats["throttled_by_region"][name] == found["oci_images.throttled"]
        assert stats["requests_by_region"][name] == found["oci_images.requests"]
        not_ok = stats["requests_by_region"][name] - found["oci_images.retries"]
        assert found["oci_images.retries"] >= found["oci_images.throttled"] > 0
        assert not_ok >= sum(c["pages"] for c in mine)

    points = {
        metric.name: metric
        for request in receiver.metrics
        for resource_metrics in request.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
    }
    sent = sum(p.as_int for p in points["oci_images.requests"].sum.data_points)
    assert stats["requests"] == sent
    throttled = {
        attributes(p.attributes)["region"]: p.as_int
        for p in points["oci_images.throttled"].sum.data_points
    }
    assert stats["throttled_by_region"] == throttled
    assert [0] == [p.as_int for p in points["oci_images.run.status"].gauge.data_points]


def test_a_sigterm_run_is_flushed(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, receiver: Receiver
) -> None:
    """SIGTERM mid-run: the run span still reaches the receiver before the process exits 143,
    marked interrupted, with an error status."""
    server = make_emulator(build_world(**WORLD), latency_ms=30)  # type: ignore[arg-type]
    config = write_config(tmp_path, server, fetch={"concurrency": 2, "page_size": 20})
    staging = tmp_path / "lake" / "_staging"
    code, err = signalled_run(config, staging, signal.SIGTERM, env=otel_env(receiver))
    assert 143 == code, err
    [run] = [s for s in receiver.spans() if not s.parent_span_id]
    found = attributes(run.attributes)
    assert "interrupted" == found["oci_images.status"]
    assert 143 == found["oci_images.exit_code"]
    assert 2 == run.status.code  # STATUS_CODE_ERROR


UNCONFIGURED = """
import sys
from connector.cli import main
code = main(sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("opentelemetry", "prometheus_client"))
print("LOADED", loaded)
sys.exit(code)
"""


@pytest.mark.parametrize(
    "otel", [{}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"}]
)
def test_unconfigured_imports_nothing(
    emulator: EmulatorServer, tmp_path: Path, otel: dict[str, str]
) -> None:
    """Without an OTEL_* endpoint (or with OTEL_SDK_DISABLED=true), and without [metrics], a run
    imports neither opentelemetry nor prometheus_client, and sends nothing."""
    config = write_config(tmp_path, emulator)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | otel
    result = subprocess.run(
        [sys.executable, "-c", UNCONFIGURED, "run", "--config", str(config)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert 0 == result.returncode, result.stderr
    assert "LOADED []" in result.stdout


def test_configured_reads_the_standard_variables() -> None:
    assert not tracing.configured({})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing.configured(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "TRUE"}
    )
