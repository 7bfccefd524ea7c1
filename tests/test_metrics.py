"""Prometheus metrics ([metrics]): the command as a user runs it against the emulator, the
textfile read back with prometheus_client's own parser, the Pushgateway protocol received by a
loopback HTTP server."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

import connector
from connector import load_config, metrics
from connector.emulator import EmulatorServer, build_world
from connector.errors import ConfigError, ConnectorError
from tests import helpers
from tests.helpers import (
    DATE,
    ROOT,
    WORLD,
    QuietHandler,
    serving,
    settings_for,
    signalled_run,
    write_config,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


oci_images = partial(helpers.oci_images, timeout=180)


def parse(text: str) -> Samples:
    """Every sample: (name, sorted labels) → value, by prometheus_client's parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name``'s samples summed by one label."""
    out: dict[str, float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            key = dict(labels)[label]
            out[key] = out.get(key, 0.0) + value
    return out


def value(samples: Samples, name: str) -> float | None:
    return samples.get((name, ()))


def manifest(lake: Path) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(
        (lake / "images" / f"snapshot_date={DATE}" / "_manifest.json").read_bytes()
    )
    return document


def test_textfile_counts_equal_what_the_server_counted(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """A throttled run's textfile: requests by region and status, and 429s by region, equal the
    emulator's own counters; rows by region and listings equal the manifest's; status 0 and a
    last success at the run's end. The file is the text format, atomically replaced (no
    temporary file left)."""
    server = make_emulator(build_world(**WORLD), rate=25.0, burst=4.0)  # type: ignore[arg-type]
    textfile = tmp_path / "prom" / "oci_images.prom"
    textfile.parent.mkdir()
    config = write_config(tmp_path, server, metrics={"textfile": str(textfile)})
    started = time.time()
    result = oci_images("run", "--config", str(config))
    assert 0 == result.returncode, result.stderr
    stats = server.stats()
    samples = parse(textfile.read_text())
    assert ["oci_images.prom"] == sorted(p.name for p in textfile.parent.iterdir())

    assert stats["throttled"] > 0, "the test needs throttling"
    assert stats["requests"] == sum(by(samples, "oci_images_requests_total", "status").values())
    assert stats["requests_by_region"] == by(samples, "oci_images_requests_total", "region")
    assert {str(k): v for k, v in stats["status"].items()} == by(
        samples, "oci_images_requests_total", "status"
    )
    assert stats["throttled_by_region"] == by(samples, "oci_images_throttled_total", "region")

    document = manifest(tmp_path / "lake")
    rows: dict[str, float] = {}
    listings: dict[str, float] = {}
    for record in document["compartments"]:
        rows[record["region"]] = rows.get(record["region"], 0) + record["rows"]
        listings[record["region"]] = listings.get(record["region"], 0) + 1
    images = {
        dict(labels)["region"]: v
        for (name, labels), v in samples.items()
        if name == "oci_images_rows" and dict(labels)["dataset"] == "images"
    }
    assert rows == images
    assert document["rows"] == sum(images.values())
    assert (
        document["datasets"]["compartments"]["rows"]
        == samples[("oci_images_rows", (("dataset", "compartments"), ("region", "")))]
    )
    assert listings == by(samples, "oci_images_listings", "region")
    assert {"ok"} == set(by(samples, "oci_images_listings", "outcome"))
    assert document["requests"]["sent"] == stats["requests"]

    assert 0 == value(samples, "oci_images_run_status")
    finished = value(samples, "oci_images_last_run_timestamp_seconds")
    assert finished is not None
    assert started < finished <= time.time()
    assert finished == value(samples, "oci_images_last_success_timestamp_seconds")
    duration = value(samples, "oci_images_run_duration_seconds")
    assert duration is not None
    assert 0 < duration < time.time() - started


def test_a_failed_run_keeps_the_last_success(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """After a success, a run the service refuses (401: exit 1) rewrites the file with its own
    status and time, and the previous success's timestamp read back from the old file."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    textfile = tmp_path / "oci_images.prom"
    config = write_config(tmp_path, server, metrics={"textfile": str(textfile)})
    assert 0 == oci_images("run", "--config", str(config)).returncode
    before = parse(textfile.read_text())
    success = value(before, "oci_images_last_success_timestamp_seconds")
    assert success is not None

    server.emulator.behaviour.reject_auth = True
    server.emulator.reset_stats()
    failed = oci_images("run", "--config", str(config))
    assert 1 == failed.returncode, failed.stderr
    after = parse(textfile.read_text())
    assert 1 == value(after, "oci_images_run_status")
    assert success == value(after, "oci_images_last_success_timestamp_seconds")
    last_run = value(after, "oci_images_last_run_timestamp_seconds")
    assert last_run is not None
    assert last_run > success
    assert {"401": server.stats()["requests"]} == by(after, "oci_images_requests_total", "status")


def test_a_first_run_that_fails_has_no_last_success(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """No success ever: the series is absent (alert on ``absent(...)``), not a made-up 0."""
    server = make_emulator(build_world(**WORLD), reject_auth=True)  # type: ignore[arg-type]
    textfile = tmp_path / "oci_images.prom"
    config = write_config(tmp_path, server, metrics={"textfile": str(textfile)})
    assert 1 == oci_images("run", "--config", str(config)).returncode
    samples = parse(textfile.read_text())
    assert 1 == value(samples, "oci_images_run_status")
    assert value(samples, "oci_images_last_success_timestamp_seconds") is None


def test_a_sigterm_run_reports_143_and_keeps_the_last_success(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """SIGTERM mid-run (as Kubernetes stops a pod): exit 143, and the file says so, with the
    previous success kept and the requests sent before the signal counted."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    textfile = tmp_path / "oci_images.prom"
    config = write_config(
        tmp_path,
        server,
        metrics={"textfile": str(textfile)},
        fetch={"concurrency": 2, "page_size": 20},
    )
    assert 0 == oci_images("run", "--config", str(config)).returncode
    success = value(parse(textfile.read_text()), "oci_images_last_success_timestamp_seconds")

    server.emulator.behaviour.latency_ms = 30
    code, err = signalled_run(config, tmp_path / "lake" / "_staging", signal.SIGTERM)
    assert 143 == code, err
    samples = parse(textfile.read_text())
    assert 143 == value(samples, "oci_images_run_status")
    assert success == value(samples, "oci_images_last_success_timestamp_seconds")
    assert sum(by(samples, "oci_images_requests_total", "status").values()) > 0


@pytest.mark.parametrize(
    ("key", "value_", "message"),
    [
        ("textfile", "/nonexistent-folder/oci.prom", "does not exist"),
        ("pushgateway", "ftp://gateway:9091", "http(s) URL"),
    ],
)
def test_bad_metrics_settings_exit_2_before_any_request(
    emulator: EmulatorServer, tmp_path: Path, key: str, value_: str, message: str
) -> None:
    """A textfile in a missing folder, or a pushgateway that is not http(s): exit 2 naming the
    key, and no request sent."""
    before = emulator.stats()["requests"]
    config = write_config(tmp_path, emulator, metrics={key: value_})
    result = oci_images("run", "--config", str(config))
    assert 2 == result.returncode
    assert f"metrics.{key}" in result.stderr
    assert message in result.stderr
    assert before == emulator.stats()["requests"]


def test_without_prometheus_client_metrics_are_a_configuration_error(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Without the extra, a non-empty [metrics] key exits 2 naming the key and the extra, before
    any request (prometheus_client hidden from the process as if not installed)."""
    before = emulator.stats()["requests"]
    config = write_config(tmp_path, emulator, metrics={"textfile": str(tmp_path / "m.prom")})
    code = (
        "import sys; sys.modules['prometheus_client'] = None; from connector.cli import main; "
        f"sys.exit(main(['run', '--config', {str(config)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert 2 == result.returncode, result.stderr
    assert "metrics.textfile" in result.stderr
    assert "oci-images-connector[prometheus]" in result.stderr
    assert before == emulator.stats()["requests"]
    assert not (tmp_path / "m.prom").exists()


# -- the Pushgateway ---------------------------------------------------------------------------


@dataclass
class Gateway:
    """A loopback HTTP server that records what a Pushgateway would receive."""

    url: str
    received: list[tuple[str, str, bytes]] = field(default_factory=list)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    recorded = Gateway("")

    class Handler(QuietHandler):
        def _record(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            recorded.received.append((self.command, self.path, self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        do_PUT = do_POST = _record

    with serving(Handler) as recorded.url:
        yield recorded


def _group(path: str) -> dict[str, str]:
    """The grouping key of a Pushgateway path (``/metrics/job/J/label@base64/V/...``)."""
    parts = path.split("/")[2:]
    group: dict[str, str] = {}
    for name, text in zip(parts[::2], parts[1::2], strict=True):
        if name.endswith("@base64"):
            name = name.removesuffix("@base64")
            text = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        group[name] = text
    return group


def test_push_to_a_gateway(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, gateway: Gateway
) -> None:
    """A successful run PUTs its group (job oci_images, output, stage run) with the same
    metrics as the textfile; a failed run POSTs (the gateway keeps the last success) without a
    last success of its own."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    lake = tmp_path / "lake"
    config = write_config(tmp_path, server, lake=lake, metrics={"pushgateway": gateway.url})
    assert 0 == oci_images("run", "--config", str(config)).returncode
    [(method, path, body)] = gateway.received
    assert "PUT" == method
    assert {"job": "oci_images", "output": str(lake), "stage": "run"} == _group(path)
    samples = parse(body.decode())
    assert 0 == value(samples, "oci_images_run_status")
    assert value(samples, "oci_images_last_success_timestamp_seconds") is not None
    assert server.stats()["requests"] == sum(
        by(samples, "oci_images_requests_total", "status").values()
    )
    assert manifest(lake)["rows"] == by(samples, "oci_images_rows", "dataset")["images"]

    server.emulator.behaviour.reject_auth = True
    assert 1 == oci_images("run", "--config", str(config)).returncode
    method, path, body = gateway.received[1]
    assert "POST" == method
    assert _group(path)["stage"] == "run"
    samples = parse(body.decode())
    assert 1 == value(samples, "oci_images_run_status")
    assert value(samples, "oci_images_last_success_timestamp_seconds") is None


def test_shards_and_the_commit_push_groups_of_their_own(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, gateway: Gateway
) -> None:
    """Two shards and their commit: three groups (stage shard with shard I/N, stage commit), so
    none overwrites another; the commit reports the published rows and no requests of its own."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    lake = tmp_path / "lake"
    config = str(write_config(tmp_path, server, lake=lake, metrics={"pushgateway": gateway.url}))
    for index in range(2):
        shard = oci_images("run", "--config", config, "--shard", f"{index}/2", "--run-id", "r1")
        assert 0 == shard.returncode, shard.stderr
    assert 0 == oci_images("commit", "--config", config, "--run-id", "r1").returncode
    groups = [_group(path) for _, path, _ in gateway.received]
    assert [("shard", "0/2"), ("shard", "1/2"), ("commit", "")] == [
        (g["stage"], g.get("shard", "")) for g in groups
    ]
    shards = [parse(body.decode()) for _, _, body in gateway.received[:2]]
    assert server.stats()["requests"] == sum(
        sum(by(s, "oci_images_requests_total", "status").values()) for s in shards
    )
    committed = parse(gateway.received[2][2].decode())
    assert manifest(lake)["rows"] == by(committed, "oci_images_rows", "dataset")["images"]
    assert not by(committed, "oci_images_requests_total", "status")


def test_a_gateway_that_does_not_answer_is_a_warning(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """A push that fails (nothing listens on the port) is a warning; the run still exits 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    config = write_config(tmp_path, server, metrics={"pushgateway": f"http://127.0.0.1:{port}"})
    result = oci_images("--log-format", "json", "run", "--config", str(config))
    assert 0 == result.returncode, result.stderr
    events = [orjson.loads(line) for line in result.stderr.splitlines()]
    [failed] = [e for e in events if e["event"] == "metrics.push_failed"]
    assert "warning" == failed["level"]
    assert "127.0.0.1" == failed["host"]


def test_metrics_from_the_environment_alone(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """OCI_IMAGES__METRICS__TEXTFILE configures the textfile as the file would (a container)."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    textfile = tmp_path / "env.prom"
    config = write_config(tmp_path, server)
    env = {**os.environ, "OCI_IMAGES__METRICS__TEXTFILE": str(textfile)}
    assert 0 == oci_images("run", "--config", str(config), env=env).returncode
    assert 0 == value(parse(textfile.read_text()), "oci_images_run_status")


# -- the settings and the labels, in process ---------------------------------------------------


def test_textfile_must_name_a_file_in_a_folder_that_exists(tmp_path: Path) -> None:
    """A folder given as the file, or a file in a folder that does not exist: ConfigError
    naming the key, when the configuration is loaded."""
    for given, message in (
        (tmp_path, "is a folder"),
        (tmp_path / "missing" / "m.prom", "does not exist"),
    ):
        with pytest.raises(ConfigError, match=r"does not exist|is a folder") as raised:
            load_config(values={"metrics": {"textfile": str(given)}}, environ={})
        assert "metrics.textfile" == raised.value.key
        assert message in str(raised.value)
    settings = load_config(values={"metrics": {"textfile": str(tmp_path / "m.prom")}}, environ={})
    assert settings.metrics.enabled


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_textfile_folder_must_be_writable(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="cannot be written"):
        load_config(values={"metrics": {"textfile": str(folder / "m.prom")}}, environ={})


def test_the_output_label_carries_nothing_secret(tmp_path: Path) -> None:
    """The Pushgateway's ``output`` label: no user name, password, query or fragment; a local
    path made absolute."""
    assert "s3://bucket/lake/oci" == metrics.output_label(
        "s3://AKIA:secret@bucket/lake/oci?versionId=1#x"
    )
    assert "oci://bucket@namespace/prefix" == metrics.output_label("oci://bucket@namespace/prefix")
    assert str(tmp_path / "lake") == metrics.output_label(str(tmp_path / "lake"))


def test_the_library_writes_metrics_too(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """``connector.run`` called by a program (Airflow's operators) writes the textfile as the
    command does: exit code 0 for a complete run; 1 when it raises, keeping the success."""
    server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
    textfile = tmp_path / "lib.prom"
    settings = settings_for(server, tmp_path / "lake").replace(
        **{"metrics.textfile": str(textfile)}
    )
    outcome = connector.run(settings)
    samples = parse(textfile.read_text())
    assert 0 == value(samples, "oci_images_run_status")
    assert outcome.manifest is not None
    assert outcome.manifest.rows == by(samples, "oci_images_rows", "dataset")["images"]
    success = value(samples, "oci_images_last_success_timestamp_seconds")

    server.emulator.behaviour.reject_auth = True
    with pytest.raises(ConnectorError):
        connector.run(settings)
    samples = parse(textfile.read_text())
    assert 1 == value(samples, "oci_images_run_status")
    assert success == value(samples, "oci_images_last_success_timestamp_seconds")
