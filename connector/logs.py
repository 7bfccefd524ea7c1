"""Structured logging: structlog events routed through the standard ``logging`` module.

Embedded in a program, the connector is a library: its loggers are ``logging`` loggers under
``connector`` (``connector.pipeline``, ``connector.oci.client``, ...), wrapped by structlog for
the events' keys, and the ``connector`` logger has a ``NullHandler``, as libraries do, so that
nothing is printed unless the program configures logging (Python's "last resort" handler, which
prints warnings to stderr when no handler is found, is not reached). The connector never calls
``structlog.configure``: a program's own structlog set-up is its own. Each record's message is
the event's dict (structlog's ``ProcessorFormatter.wrap_for_formatter``), so a program that uses
``structlog.stdlib.ProcessorFormatter`` renders it as it renders its own events.

The command line configures it (``configure``): JSON lines on stderr when it is not a terminal
(Airflow, cron, CI) or when asked for, a console renderer on a terminal. Every event and every
key is declared once, here (``EVENTS``, ``KEYS``): one type per key across all events, so that a
log aggregator that types a field by the first value it sees types it right; the reference page
``docs/reference/log-events.md`` is generated from these declarations, and a test holds each
``log.<level>("event", ...)`` call in the package to them. A processor drops any key that names a
secret and redacts anything shaped like a credential in text values (``errors.redact``: a
server's message that echoes the request's ``Authorization``), as a second line of defence
behind code that never logs one.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict

from connector.errors import REDACTED, redact

ROOT = "connector"
"""The logger every module's logger is a child of; the one to configure."""

SECRET_KEYS = frozenset(
    {"authorization", "pass_phrase", "private_key", "key_content", "security_token", "signature"}
)

logging.getLogger(ROOT).addHandler(logging.NullHandler())

Type = Literal["string", "integer", "number", "boolean", "list of strings"]
"""A key's type as JSON carries it; any key may also be null."""

_PYTHON: dict[Type, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "list of strings": (list, tuple),
}


@dataclass(frozen=True, slots=True)
class Key:
    """A key of log events: its one type, and what it holds."""

    type: Type
    about: str


@dataclass(frozen=True, slots=True)
class Event:
    """A log event: its level, its keys (beside those every event has), and when it is logged."""

    level: Literal["debug", "info", "warning", "error"]
    keys: tuple[str, ...]
    about: str


COMMON = ("event", "level", "timestamp", "run_id", "shard")
"""Keys of every event (``run_id`` and ``shard`` on every line of a run, from any task)."""

_REQUEST = ("region", "compartment_id", "page", "attempt", "status", "code", "opc_request_id")
_TRANSPORT = ("error", "host")

KEYS: dict[str, Key] = {
    "event": Key("string", "the event's name, `area.what`"),
    "level": Key("string", "`debug`, `info`, `warning` or `error`"),
    "timestamp": Key("string", "when, ISO 8601 in UTC"),
    "run_id": Key("string", "the run"),
    "shard": Key("string", "the run's shard, `I/N` (`0/1`: a whole run)"),
    "snapshot_date": Key("string", "the snapshot date, YYYY-MM-DD"),
    "version": Key("string", "the connector's version"),
    "attempt_id": Key("string", "the staging attempt (one folder of a run's staging)"),
    "attempt": Key("integer", "which try of a request or read, from 1"),
    "region": Key("string", "an OCI region name"),
    "compartment_id": Key("string", "a compartment OCID"),
    "page": Key("integer", "a listing's page number, from 1"),
    "pages": Key("integer", "pages a listing (or a region's search) fetched"),
    "status": Key("integer", "an HTTP status (null for a transport error)"),
    "code": Key("string", "OCI's error code (`NotAuthorizedOrNotFound`, ...)"),
    "opc_request_id": Key("string", "OCI's request id, for a support ticket"),
    "error": Key("string", "what failed, in words (a transport error, an OS error)"),
    "reason": Key("string", "why, in words"),
    "conn_id": Key("string", "an Airflow Connection's id"),
    "field": Key("string", "a field of an Airflow Connection's extras"),
    "rename_to": Key("string", "the name the field should have"),
    "host": Key("string", "the host a request went to"),
    "hint": Key("string", "what to check"),
    "next": Key("string", "the next step an error suggests"),
    "delay_ms": Key("number", "milliseconds before the retry"),
    "elapsed_ms": Key("number", "milliseconds since the request's first try"),
    "regions": Key("list of strings", "regions the run lists"),
    "skipped": Key("list of strings", "subscribed regions that are not READY"),
    "subscription": Key("string", "a region subscription's status (`IN_PROGRESS`, ...)"),
    "keep_from": Key("string", "the oldest snapshot date `output.keep_days` keeps, YYYY-MM-DD"),
    "dates": Key("list of strings", "snapshot dates, YYYY-MM-DD"),
    "records": Key("integer", "run records (`_runs/RUN_ID.json`) removed"),
    "found": Key("integer", "compartments found"),
    "excluded": Key("integer", "compartments left out by scope.exclude_compartments"),
    "file": Key("string", "a local file"),
    "what": Key("string", "what the file holds"),
    "mode": Key("string", "its permissions, octal"),
    "path": Key("string", "a path under output.uri or on local disk"),
    "shards_here": Key("integer", "shards of the run sharing the rate on this machine"),
    "share": Key("number", "this shard's share of fetch.max_requests_per_second"),
    "lock": Key("string", "a lock file's path"),
    "dead_owner": Key("string", "the owner of a lock taken over"),
    "filesystem": Key("string", "the store's kind"),
    "partition": Key("string", "a partition's path"),
    "partitions": Key("list of strings", "partitions' paths"),
    "folders": Key("list of strings", "folders removed"),
    "since": Key("string", "the snapshot date compared with (null: none)"),
    "added": Key("integer", "images added"),
    "removed": Key("integer", "images removed"),
    "retired": Key("integer", "platform images retired (a newer build replaced them)"),
    "changed": Key("integer", "images changed"),
    "signal": Key("string", "the signal's name"),
    "rows": Key("integer", "rows (published: the manifest's, which a table's commit counts)"),
    "files": Key("integer", "data files (published: the manifest's, or the table commit's)"),
    "rejects": Key("integer", "records that could not be converted"),
    "requests": Key("integer", "requests sent"),
    "retries": Key("integer", "requests retried"),
    "throttled": Key("integer", "requests answered 429"),
    "listings": Key("integer", "listings (region, compartment)"),
    "listings_ok": Key("integer", "listings that completed"),
    "listings_failed": Key("integer", "listings that failed"),
    "elapsed_s": Key("number", "seconds the run or commit took"),
    "outcome": Key("string", "how it ended: `succeeded`, `partial` or `failed`"),
    "published": Key("boolean", "whether the snapshot was published"),
    "exit_code": Key("integer", "the command's exit code for it"),
    "compartments": Key("integer", "compartments Resource Search found holding custom images"),
    "images": Key("integer", "custom images Resource Search found"),
    "unknown_to_search": Key(
        "integer", "custom images the listings returned that Resource Search did not know"
    ),
    "gone_since_indexed": Key(
        "integer",
        "images Resource Search knew that the listings did not return (null: filters it cannot "
        "express)",
    ),
    "search_unknown": Key("integer", "`unknown_to_search`, over every region"),
    "search_gone": Key("integer", "`gone_since_indexed`, over every region"),
}

EVENTS: dict[str, Event] = {
    "run.start": Event(
        "info", ("attempt_id", "snapshot_date", "version"), "a run (or shard) starts staging"
    ),
    "discovery.regions": Event(
        "info", ("regions", "skipped"), "the regions listed, and the subscribed ones skipped"
    ),
    "discovery.region_skipped": Event(
        "info",
        ("region", "subscription", "reason"),
        "a subscribed region is left out, and why (its subscription is not READY)",
    ),
    "discovery.compartment_skipped": Event(
        "warning",
        ("reason", "region", "page", "compartment_id"),
        "a compartment record without a usable id is left out (counted in the manifest)",
    ),
    "discovery.compartments": Event("info", ("found", "excluded"), "the compartment tree is known"),
    "search.found": Event(
        "info",
        ("region", "compartments", "images", "pages"),
        "Resource Search named the compartments in scope holding custom images in a region",
    ),
    "search.failed": Event(
        "warning",
        ("region", "status", "code", "reason", "hint"),
        "Resource Search failed in a region (after retries): every compartment there is listed",
    ),
    "search.lag": Event(
        "info",
        ("region", "unknown_to_search", "gone_since_indexed"),
        "Resource Search's index differed from the region's listings (the manifest names the ids)",
    ),
    "discovery.compartment_unreadable": Event(
        "warning",
        ("compartment_id", "status", "code"),
        "a compartment's record could not be read (its listing still runs)",
    ),
    "rate.shared": Event(
        "info",
        ("shards_here", "share"),
        "shards on this machine share one request rate",
    ),
    "rate.not_shared": Event(
        "warning", ("path", "error"), "the shared rate file cannot be used; this shard paces alone"
    ),
    "request.retry": Event(
        "debug",
        (*_REQUEST, *_TRANSPORT, "delay_ms"),
        "a request is retried (`run.finished` counts them)",
    ),
    "request.refresh_token": Event(
        "info", ("region", "compartment_id", "page", "attempt"), "a session token is refreshed"
    ),
    "request.failed": Event(
        "debug",
        (*_REQUEST, *_TRANSPORT, "elapsed_ms", "next"),
        "a request failed for good (the listing or the run reports it)",
    ),
    "run.abort": Event(
        "error",
        ("region", "compartment_id", "page", "reason", "host", "hint"),
        "an error that concerns every request (credentials, DNS, TLS): the run stops",
    ),
    "page.refetch": Event(
        "info",
        ("region", "compartment_id", "page", "attempt", "reason"),
        "a page a worker could not parse is fetched again",
    ),
    "listing.done": Event(
        "debug", ("region", "compartment_id", "pages", "rows"), "a listing completed"
    ),
    "listing.failed": Event(
        "debug",
        ("region", "compartment_id", "pages", "status", "code", "opc_request_id", "reason"),
        "a listing failed (`listings.failed` sums them up)",
    ),
    "listings.failed": Event(
        "warning",
        (
            "region",
            "status",
            "code",
            "reason",
            "hint",
            "listings_failed",
            "listings",
            "compartment_id",
        ),
        "once per region and cause at the end of a run: how many of the region's listings "
        "failed, and the first one's compartment",
    ),
    "changes.staged": Event(
        "info",
        ("since", "added", "removed", "retired", "changed"),
        "the changes dataset is staged",
    ),
    "run.published": Event(
        "info",
        ("partition", "rows", "files", "outcome"),
        "a commit published the snapshot",
    ),
    "run.not_published": Event("error", ("reason",), "a commit refused to publish"),
    "retention.pruned": Event(
        "info",
        ("keep_from", "dates", "records", "skipped"),
        "`output.keep_days` removed the partitions of these dates and their run records "
        "(`skipped`: dates another live process held)",
    ),
    "retention.failed": Event(
        "error", ("reason",), "pruning failed after a published commit (the run still succeeded)"
    ),
    "run.record_failed": Event("error", ("path", "reason"), "`_runs/RUN_ID.json` not written"),
    "run.finished": Event(
        "info",
        (
            "outcome",
            "published",
            "exit_code",
            "snapshot_date",
            "rows",
            "files",
            "rejects",
            "requests",
            "retries",
            "throttled",
            "listings_ok",
            "listings_failed",
            "elapsed_s",
            "search_unknown",
            "search_gone",
        ),
        "the last event of a run, shard or commit: its totals, as the summary line prints them "
        'and the manifest holds them (`search_*` with fetch.strategy = "search" only)',
    ),
    "run.interrupted": Event("warning", ("signal",), "SIGINT or SIGTERM: the run stops"),
    "permissions.too_open": Event(
        "warning", ("file", "what", "mode"), "a key file others can read"
    ),
    "lock.acquired": Event("debug", ("lock",), "a lock is taken"),
    "lock.taken_over": Event(
        "warning", ("lock", "dead_owner"), "a lock of a process that is gone is taken over"
    ),
    "lock.lost": Event("warning", ("lock",), "a lock was taken over before its release"),
    "lock.advisory": Event(
        "warning", ("filesystem", "reason"), "the store cannot make a lock exclusive"
    ),
    "read.torn": Event("debug", ("path", "attempt"), "a read raced an overwrite; read again"),
    "publish.finishing": Event(
        "warning",
        ("snapshot_date", "partition"),
        "a killed commit past its commit point is finished",
    ),
    "publish.rolling_back": Event(
        "warning",
        ("snapshot_date", "partition"),
        "a killed commit before its commit point is rolled back",
    ),
    "publish.recovered": Event("warning", ("partitions",), "killed swaps were repaired"),
    "publish.restored": Event("warning", ("partition",), "a partition was put back"),
    "staging.cleaned": Event("info", ("folders",), "dead runs' staging was removed"),
    "staging.not_removed": Event(
        "warning", ("path", "reason"), "a staging folder could not be removed"
    ),
    "discard.failed": Event("warning", ("path", "error"), "a discarded path could not be removed"),
    "tracing.unavailable": Event(
        "warning", ("reason",), "OpenTelemetry is configured but its SDK is not installed"
    ),
    "metrics.written": Event("debug", ("file",), "`metrics.textfile` was written"),
    "metrics.not_written": Event(
        "warning", ("file", "error"), "`metrics.textfile` not written (the exit code stays)"
    ),
    "metrics.pushed": Event("debug", ("host",), "the metrics were pushed to `metrics.pushgateway`"),
    "metrics.push_failed": Event(
        "warning", ("host", "error"), "the Pushgateway refused the metrics (the exit code stays)"
    ),
    "connection.secret_shown": Event(
        "warning",
        ("conn_id", "field", "rename_to", "reason"),
        "an Airflow Connection holds a secret under a name Airflow's API and UI show in clear",
    ),
}


def problems(event: Mapping[str, Any]) -> list[str]:
    """What in ``event`` (as a processor sees it) the declarations do not allow: an undeclared
    event, a key the event does not declare, a value of another type than its key's."""
    name = event.get("event")
    declared = EVENTS.get(str(name))
    if declared is None:
        return [f"event {name!r} is not declared in connector.logs.EVENTS"]
    found = []
    for key, value in event.items():
        if key not in COMMON and key not in declared.keys:
            found.append(f"{name}: key {key!r} is not declared for it")
        elif value is not None and key in KEYS:
            wanted = KEYS[key].type
            bad_bool = isinstance(value, bool) and wanted != "boolean"
            if bad_bool or not isinstance(value, _PYTHON[wanted]):
                found.append(f"{name}: {key}={value!r} is not of type {wanted}")
    return found


LONG_VALUE = 1000
"""Characters of one value beyond which a line shows its start and its length only."""
LONG_KEPT = 200


def _drop_secrets(_logger: Any, _name: str, event: EventDict) -> EventDict:
    long = False
    for key, value in event.items():
        if key.lower() in SECRET_KEYS:
            event[key] = REDACTED
        elif isinstance(value, str):
            event[key] = redact(value)
            long = long or len(value) > LONG_VALUE
        elif isinstance(value, BaseException):
            event[key] = redact(str(value))
            long = long or len(event[key]) > LONG_VALUE
    if long:
        _shorten(event)
    return event


def _shorten(event: EventDict) -> None:
    """A hostile service can send a 100 KB compartment id, which a line would carry in its own
    key and again inside the reason and the hint: each long value is written once, its start
    and its length, and where another value repeats it, that one names the key instead."""
    long = {
        key: value
        for key, value in event.items()
        if isinstance(value, str) and len(value) > LONG_VALUE
    }
    for key, value in event.items():
        if not isinstance(value, str):
            continue
        for other, text in long.items():
            if other != key and text in value:
                value = value.replace(text, f"<{other}>")
        if len(value) > LONG_VALUE:
            value = f"{value[:LONG_KEPT]}… ({len(value)} characters)"
        event[key] = value


_CHAIN: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    _drop_secrets,
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]
"""What every event goes through before it is a ``logging`` record: dropped at once below the
logger's level, the run's context added, secrets dropped."""


def get_logger(name: str) -> Any:
    """The structlog logger of a module: ``logging.getLogger(name)`` wrapped with the
    connector's own processors, whatever the program configured structlog with.

    ``Any``: structlog's stdlib ``BoundLogger`` takes the event's keys as keyword arguments.
    """
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=_CHAIN,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _over_progress_bar(_logger: Any, _name: str, line: str) -> str:
    """On a terminal, erase the progress bar's line first; it is redrawn below the message."""
    return "\r\x1b[K" + line


def _orjson_dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


class _Handler(logging.StreamHandler[TextIO]):
    """The command line's handler (so that ``configure`` again replaces it, not adds one)."""


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Print the connector's events at ``level`` and above on ``stream`` (stderr), as JSON
    lines or console lines: what the command line does, and a program may do too."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    processors: list[Any] = [
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        stamp,
        renderer,
    ]
    if out.isatty():
        processors.append(_over_progress_bar)
    handler = _Handler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=processors,
            foreign_pre_chain=[structlog.processors.add_log_level, stamp],
        )
    )
    reset()
    root = logging.getLogger(ROOT)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # The events are printed here; a program's root handler would print them twice.
    root.propagate = False


def reset() -> None:
    """Undo ``configure``: the connector is a quiet library again."""
    root = logging.getLogger(ROOT)
    for handler in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(handler)
    root.setLevel(logging.NOTSET)
    root.propagate = True
