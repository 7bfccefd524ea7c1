"""Logs: a quiet library, events of one type per key, a quiet default level, honest totals.

Embedded, the connector prints nothing unless the program configures ``logging``; every event
and key is declared in ``connector.logs`` (and every call in the package is held to the
declarations); at the default level a run with retries and a wrong region says so in a few
lines, and its last event, ``run.finished``, carries the totals the summary line prints and the
manifest holds (for tables too: tests/test_summaries.py).
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import connector
from connector import cli, logs
from connector.emulator import EmulatorServer
from tests.helpers import settings_for, write_config

ROOT = Path(__file__).resolve().parent.parent
DATE = "2026-11-27"
WRONG = "ap-tokyo-1"
"""A real region the emulated tenancy is not served in: every listing there fails alike."""
LEVELS = ("debug", "info", "warning", "error")


def logged_events() -> list[tuple[str, int, str, str, set[str]]]:
    """Every ``log.<level>("event", key=...)`` call in the package: (module, line, level,
    event, the keyword names given)."""
    found = []
    for path in sorted((ROOT / "connector").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "log"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                continue
            keys = {k.arg for k in node.keywords if k.arg is not None}
            module = str(path.relative_to(ROOT))
            found.append((module, node.lineno, node.func.attr, node.args[0].value, keys))
    return found


class TestDeclarations:
    def test_every_call_logs_a_declared_event_with_declared_keys(self) -> None:
        """Each event logged in the package is declared, at its declared level, with keys it
        declares; and each declared event is logged somewhere."""
        calls = logged_events()
        assert len(calls) > 30
        wrong = []
        for module, line, level, name, keys in calls:
            event = logs.EVENTS.get(name)
            if event is None:
                wrong.append(f"{module}:{line}: {name} is not declared")
                continue
            if level != event.level:
                wrong.append(f"{module}:{line}: {name} at {level}, declared {event.level}")
            extra = keys - set(event.keys) - set(logs.COMMON)
            if extra:
                wrong.append(f"{module}:{line}: {name} with undeclared keys {sorted(extra)}")
        assert [] == wrong
        assert set(logs.EVENTS) == {name for *_, name, _ in calls}

    def test_every_key_has_one_type(self) -> None:
        """Each key an event declares is declared once, with its type."""
        declared = {k for e in logs.EVENTS.values() for k in e.keys} | set(logs.COMMON)
        assert declared == set(logs.KEYS)

    def test_problems_names_a_key_of_another_type(self) -> None:
        """A string where a key is an integer, a bool where it is one, and an undeclared key
        are each named; a null value of any key is allowed."""
        assert [] == logs.problems({"event": "request.retry", "attempt": 2, "status": None})
        assert [
            "request.retry: attempt='2' is not of type integer",
            "request.retry: status=True is not of type integer",
            "request.retry: key 'rows' is not declared for it",
        ] == logs.problems({"event": "request.retry", "attempt": "2", "status": True, "rows": 1})
        assert ["event 'x.y' is not declared in connector.logs.EVENTS"] == logs.problems(
            {"event": "x.y"}
        )


def test_a_run_logs_one_type_per_key(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """Every event of a run at debug level, with retries and a failing region, as JSON lines,
    is declared and has each key in its one type (``run.start``'s attempt id and
    ``request.retry``'s attempt number used to share ``attempt``)."""
    server = make_emulator(fault_rate=0.2)
    settings = settings_for(
        server, tmp_path / "lake", output={"allow_partial": True, "min_complete_ratio": 0.0}
    ).replace(**{"oci.regions": ["us-ashburn-1", WRONG]})
    stream = io.StringIO()
    logs.configure("debug", "json", stream)
    outcome = connector.run(settings)
    events = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    names = {e["event"] for e in events}
    assert 3 == outcome.exit_code
    assert {"run.start", "request.retry", "listing.failed", "run.finished"} <= names
    assert [] == [p for e in events for p in logs.problems(e)]


def test_the_default_level_is_quiet_and_ends_with_the_totals(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """At info level, retried requests and failed listings are no lines of their own: a wrong
    region is one warning with its count, and the last event, ``run.finished``, carries the
    totals that the summary line prints and the manifest holds."""
    server = make_emulator(fault_rate=0.2)
    config = write_config(
        tmp_path,
        server,
        oci={"regions": ["us-ashburn-1", "eu-frankfurt-1", WRONG]},
        output={"allow_partial": True, "min_complete_ratio": 0.0},
        fetch={"workers": 0},
    )
    code = cli.main(["run", "--config", str(config), "--log-format", "json"])
    captured = capsys.readouterr()
    events = [orjson.loads(line) for line in captured.err.splitlines()]
    names = [e["event"] for e in events]
    assert 3 == code
    assert not {"request.retry", "request.failed", "listing.failed"} & set(names)
    [failed] = [e for e in events if e["event"] == "listings.failed"]
    assert (WRONG, 404, "NotAuthorizedOrNotFound") == (
        failed["region"],
        failed["status"],
        failed["code"],
    )
    assert failed["listings_failed"] == failed["listings"] > 0
    assert len(events) < 15, names
    finished = events[-1]
    assert "run.finished" == finished["event"]
    [summary] = captured.out.splitlines()
    printed = dict(field.split("=", 1) for field in summary.split(": ", 1)[1].split())
    for key in ("rows", "files", "rejects", "requests", "retries", "throttled"):
        assert printed[key] == str(finished[key]), key
    assert printed["listings_ok"] == str(finished["listings_ok"])
    assert printed["listings_failed"] == str(finished["listings_failed"])
    assert finished["listings_failed"] == failed["listings_failed"]
    assert finished["retries"] > 0
    manifest = orjson.loads(
        (tmp_path / "lake" / "images" / f"snapshot_date={DATE}" / "_manifest.json").read_bytes()
    )
    assert (manifest["rows"], len(manifest["files"]), manifest["rejects"]) == (
        finished["rows"],
        finished["files"],
        finished["rejects"],
    )
    assert manifest["requests"]["retried"] == finished["retries"]
    assert manifest["requests"]["sent"] == finished["requests"]


LIBRARY_SCRIPT = """
import logging, sys
import connector

settings = connector.load_config(values={values!r})
if sys.argv[1:] == ["configured"]:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
outcome = connector.run(settings)
assert not outcome.published, outcome
"""


def test_embedded_it_prints_nothing_until_logging_is_configured(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """A script that calls ``connector.run`` with no logging configured prints nothing, on
    stdout or (Python's last-resort handler, for warnings) stderr, though a region fails; once
    the script configures ``logging``, the events arrive there as records of the
    ``connector`` loggers."""
    values = {
        "oci": {
            "config_file": str(emulator.config_file),
            "endpoint": emulator.endpoint_template,
            "regions": ["us-ashburn-1", WRONG],
        },
        "fetch": {"workers": 0},
        "output": {"uri": str(tmp_path / "lake"), "snapshot_date": DATE},
    }
    script = textwrap.dedent(LIBRARY_SCRIPT.format(values=values))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    quiet = run()
    assert ("", "", 0) == (quiet.stdout, quiet.stderr, quiet.returncode)
    told = run("configured")
    assert 0 == told.returncode, told.stderr
    lines = told.stdout.splitlines()
    assert any(
        line.startswith("connector.pipeline ") and "'listings.failed'" in line for line in lines
    )
    assert any(
        line.startswith("connector.pipeline ") and "'run.finished'" in line for line in lines
    )
    assert not any("'listing.done'" in line for line in lines)  # debug: below INFO


def test_a_100_kb_compartment_id_is_written_once_and_short() -> None:
    """A hostile service's 100 KB compartment id, in a warning that carries it in its own key,
    the reason and the hint: the line holds its start once, with its length, and the other
    values name the key instead; the line stays a few hundred bytes."""
    huge = "ocid1.compartment.oc1.." + "a" * 100_000
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    try:
        logs.get_logger("connector.test").warning(
            "listings.failed",
            compartment_id=huge,
            reason=f"ListImages of {huge} failed: HTTP 404",
            hint=f"check that {huge} exists",
        )
    finally:
        logs.reset()
    [line] = out.getvalue().splitlines()
    event = orjson.loads(line)
    assert len(line) < 1000, len(line)
    assert 1 == line.count(huge[:200])
    assert event["compartment_id"].endswith(f"… ({len(huge)} characters)")
    assert "ListImages of <compartment_id> failed: HTTP 404" == event["reason"]
    assert "check that <compartment_id> exists" == event["hint"]
