"""What the user reads when the command gives up: one line, whole on its own, without a class
name; a host named once, one next step; ``commit`` of an unknown run and ``diff`` of an unknown
date failing alike. Real subprocesses of the command, against the emulator."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

import connector
from connector.emulator import EmulatorServer
from tests import helpers
from tests.helpers import write_config

oci_images = partial(helpers.oci_images, "--log-level", "error")

CLASS_NAME = re.compile(r"\b[A-Z][a-z]+(?:[A-Z][a-z]+)*(?:Error|Abort|Held|Refused|Exceeded)\b")


def said(result: subprocess.CompletedProcess[str]) -> str:
    """The command's one line of its own on stderr (log lines aside), checked for what no
    message may hold: a class name, a traceback."""
    assert "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("oci-images:")]
    assert not CLASS_NAME.search(line), line
    return line


def test_a_refused_connection_names_its_host_once_with_one_hint(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Nothing listens at the endpoint: the host once, the reason, one next step."""
    server = make_emulator()
    config = write_config(tmp_path, server, oci={"endpoint": "http://127.0.0.1:9/{region}"})
    result = oci_images("run", "--config", str(config))
    assert 1 == result.returncode
    line = said(result)
    assert line == (
        "oci-images: 127.0.0.1:9: the connection was refused. Next: nothing accepts connections "
        "there: check oci.endpoint (and its port), and HTTPS_PROXY and NO_PROXY"
    )


def test_a_refused_signature_names_the_profile_once(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """A 401 (a revoked key): the host once, the profile as its label says it (not "profile
    profile"), and the authentication mode's one next step."""
    server = make_emulator(reject_auth=True)
    config = write_config(tmp_path, server)
    result = oci_images("run", "--config", str(config))
    assert 1 == result.returncode
    line = said(result)
    host = server.url.removeprefix("http://")
    assert line.startswith(f"oci-images: {host} refused the request signature: 401 ")
    assert "401 NotAuthenticated" in line
    assert 1 == line.count(host)
    assert 1 == line.count("Next:")
    assert 1 == line.count('profile "DEFAULT" of ')
    assert "profile profile" not in line
    assert "fingerprint must be that of the public key" in line


def test_the_api_raises_run_abort(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """What the API raises for an aborted run is public: ``connector.RunAbort``."""
    server = make_emulator()
    config = write_config(tmp_path, server, oci={"endpoint": "http://127.0.0.1:9/{region}"})
    with pytest.raises(connector.RunAbort, match="connection was refused") as caught:
        connector.run(connector.load_config(config))
    assert "127.0.0.1:9" == caught.value.host
    assert "RunAbort" in connector.__all__


def test_commit_of_an_unknown_run_and_diff_of_an_unknown_date_fail_alike(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Both name what is not there, on one line, exit 1, and print nothing on stdout (no
    summary line of a run that never was)."""
    server = make_emulator()
    config = str(write_config(tmp_path, server))
    run_id = connector.new_run_id()
    commit = oci_images("commit", "--config", config, "--run-id", run_id)
    diff = oci_images("diff", "--config", config, "--from", "2026-01-01", "--to", "2026-01-02")
    assert (1, "") == (commit.returncode, commit.stdout)
    assert (1, "") == (diff.returncode, diff.stdout)
    assert said(commit).startswith(f"oci-images: nothing staged for run {run_id} under ")
    assert said(diff).startswith("oci-images: no published snapshot of images for 2026-01-0")
