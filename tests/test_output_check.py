"""``output.uri`` is checked before any request: one line naming the key and the reason, exit 2,
nothing fetched, no traceback; an object store that does not answer costs seconds, not minutes.

The command runs as a user runs it (a subprocess) against the emulator, which counts the
requests it receives.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import connector
from connector import validation
from connector.emulator import EmulatorServer
from tests.helpers import ROOT, oci_images, write_config
from tests.lake_support import S3Server


def _refused(result: subprocess.CompletedProcess[str], reason: str) -> str:
    """The one line the user reads, checked: exit 2, the key and ``reason``, no traceback."""
    assert 2 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
    assert "" == result.stdout
    [line] = [x for x in result.stderr.splitlines() if x.startswith("oci-images:")]
    assert line.startswith("oci-images: configuration error: output.uri: "), line
    assert reason in line, line
    return line


@pytest.fixture
def blackhole() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a server that accepts connections and never answers (a
    store behind a firewall that drops packets, as far as a client can tell)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


def _local_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """output.uri → the reason the user reads."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = {
        "a file": (str(a_file), "is a file, not a folder"),
        "below a file": (str(a_file / "lake"), "a part of its path is a file"),
        # Not even root may create a folder in sysfs, or write in one of its folders.
        "cannot be created": ("/sys/oci-images-lake", "cannot be created: "),
        "not writable": ("/sys/kernel", "is not writable: "),
    }
    return cases


@pytest.mark.parametrize("case", ["a file", "below a file", "cannot be created", "not writable"])
def test_a_local_output_that_cannot_be_written_exits_2_before_any_request(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, case: str
) -> None:
    """An unwritable or invalid folder: one line naming output.uri and why, exit 2, no request
    to the service, no worker left running (they started before the check)."""
    server = make_emulator()
    uri, reason = _local_cases(tmp_path)[case]
    config = write_config(tmp_path, server, lake=Path(uri))
    _refused(oci_images("run", "--config", str(config)), reason)
    assert 0 == server.stats()["requests"]


def test_commit_checks_the_output_too(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """``commit`` writes to the output as a run does, and checks it the same way."""
    server = make_emulator()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    config = write_config(tmp_path, server, lake=a_file)
    run_id = connector.new_run_id()
    _refused(oci_images("commit", "--config", str(config), "--run-id", run_id), "not a folder")


def test_the_probe_leaves_nothing_behind(emulator: EmulatorServer, tmp_path: Path) -> None:
    """The check writes one file in _staging and removes it, and _staging with it when the
    check made it; a folder that did not exist is created, as the run would."""
    lake = tmp_path / "new" / "lake"
    settings = connector.load_config(write_config(tmp_path, emulator, lake=lake))
    store = validation.output_store(settings.output)
    validation.writable(store)
    assert lake.is_dir()
    assert [] == list(lake.iterdir())
    (lake / "_staging" / "RUN").mkdir(parents=True)
    validation.writable(store)
    assert ["RUN"] == [p.name for p in (lake / "_staging").iterdir()]


def test_a_nul_in_output_uri_exits_2_at_load(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """A NUL cannot be in a path: refused when the configuration loads, not by a ValueError
    deep in the run."""
    server = make_emulator()
    config = write_config(tmp_path, server, output={"uri": str(tmp_path / "la\x00ke")})
    _refused(oci_images("run", "--config", str(config)), "contains a NUL character")
    with pytest.raises(connector.ConfigError, match="NUL"):
        connector.load_config(config)


@pytest.mark.parametrize("uri", ["s3:///lake", "s3://", "gs:///x"])
def test_an_object_store_uri_without_a_bucket_exits_2_at_load(tmp_path: Path, uri: str) -> None:
    """``s3:///x`` (three slashes) names no bucket: a configuration error when it loads."""
    with pytest.raises(connector.ConfigError, match="names no bucket") as caught:
        connector.load_config(values={"output": {"uri": uri}})
    assert "output.uri" == caught.value.key
    config = tmp_path / "c.toml"
    config.write_text(f'[output]\nuri = "{uri}"\n')
    _refused(oci_images("run", "--config", str(config)), "names no bucket")


def test_a_store_that_does_not_answer_fails_within_the_bound(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, blackhole: str
) -> None:
    """An S3 endpoint that accepts and never answers: exit 2 after the bound (5 s), naming
    the store and what to check, not after the client's minutes of retries."""
    server = make_emulator()
    config = write_config(tmp_path, server, output={"uri": "s3://lake/exports"})
    started = time.monotonic()
    result = oci_images(
        "run",
        "--config",
        str(config),
        "--set",
        f'output.storage_options.endpoint_url="{blackhole}"',
        "--set",
        'output.storage_options.access_key_id="k"',
        "--set",
        'output.storage_options.secret_access_key="s"',
        "--set",
        'output.storage_options.region="us-east-1"',
    )
    elapsed = time.monotonic() - started
    line = _refused(result, f"did not answer within {validation.OUTPUT_PROBE_S:g} s")
    assert "s3://lake/exports" in line
    assert validation.OUTPUT_PROBE_S <= elapsed < validation.OUTPUT_PROBE_S + 10
    assert 0 == server.stats()["requests"]


def test_gcs_without_a_network_or_credentials_fails_within_the_bound(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """gs:// where no credentials and no Google endpoint can be reached (gcsfs alone took 118 s
    and printed 250 lines): exit 2, one line, within the bound; with a network and no access
    to the bucket, exit 2 too."""
    server = make_emulator()
    config = write_config(tmp_path, server, output={"uri": "gs://oci-images-no-such-bucket/x"})
    started = time.monotonic()
    result = oci_images("run", "--config", str(config))
    assert time.monotonic() - started < validation.OUTPUT_PROBE_S + 10
    _refused(result, "oci-images-no-such-bucket")
    assert 0 == server.stats()["requests"]


def test_a_missing_bucket_exits_2(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, s3: S3Server
) -> None:
    """A bucket the store does not have (or the credentials cannot see) is named; the same
    store with a bucket that exists passes the check."""
    server = make_emulator()
    sets = [
        arg
        for key, value in s3.options().items()
        for arg in ("--set", f"output.storage_options.{key}={json.dumps(value)}")
    ]
    config = write_config(tmp_path, server, output={"uri": "s3://no-such-bucket/lake"})
    _refused(
        oci_images("run", "--config", str(config), *sets),
        "the bucket no-such-bucket does not exist",
    )
    bucket = s3.new_bucket()
    settings = connector.load_config(
        values={"output": {"uri": f"s3://{bucket}/lake", "storage_options": s3.options()}}
    )
    assert f"{bucket}/lake" == validation.output_store(settings.output).base


@pytest.mark.parametrize("kind", ["device", "fifo", "folder"])
def test_a_config_that_is_not_a_regular_file_exits_2_at_once(tmp_path: Path, kind: str) -> None:
    """``--config /dev/zero`` used to read forever (filling memory), a FIFO to wait forever for
    a writer: both are refused from their stat, exit 2 naming --config, within seconds."""
    if kind == "device":
        path = "/dev/zero"
    elif kind == "fifo":
        path = str(tmp_path / "config.toml")
        os.mkfifo(path)
    else:
        path = str(tmp_path)
    result = oci_images("run", "--config", path, timeout=30)
    assert 2 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("oci-images:")]
    assert line.startswith(f"oci-images: configuration error: --config: {path} is "), line


def test_a_relative_sqlite_catalog_exits_2_naming_the_key(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """``sqlite:///../../x.db`` would put the Iceberg catalog wherever the command runs from,
    outside the output: exit 2 naming output.catalog.uri, nothing fetched, no file made."""
    pytest.importorskip("pyiceberg")
    config = write_config(tmp_path, emulator, output={"table_format": "iceberg"})
    config.write_text(config.read_text() + '[output.catalog]\nuri = "sqlite:///../../x.db"\n')
    before = emulator.stats()["requests"]
    result = oci_images("run", "--config", str(config))
    assert 2 == result.returncode, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("oci-images:")]
    assert line.startswith("oci-images: configuration error: output.catalog.uri: "), line
    assert "relative path" in line, line
    assert before == emulator.stats()["requests"]
    assert not (ROOT.parent.parent / "x.db").exists()
