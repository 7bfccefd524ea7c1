"""Structured logging: JSON lines for machines, a console renderer for people.

JSON lines go to stderr when it is not a terminal (Airflow, cron, CI) or when asked for; keys
are stable: ``event, run_id, region, compartment_id, page, status, opc_request_id, attempt,
elapsed_ms``. A last processor drops any key that names a secret, and redacts anything shaped
like a credential in text values (``errors.redact``: a server's message that echoes the request's
``Authorization``), as a second line of defence behind code that never logs one.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict

from connector.errors import REDACTED, redact

SECRET_KEYS = frozenset(
    {"authorization", "pass_phrase", "private_key", "key_content", "security_token", "signature"}
)


def _drop_secrets(_logger: Any, _name: str, event: EventDict) -> EventDict:
    for key, value in event.items():
        if key.lower() in SECRET_KEYS:
            event[key] = REDACTED
        elif isinstance(value, str):
            event[key] = redact(value)
        elif isinstance(value, BaseException):
            event[key] = redact(str(value))
    return event


def _over_progress_bar(_logger: Any, _name: str, line: str) -> str:
    """On a terminal, erase the progress bar's line first; it is redrawn below the message."""
    return "\r\x1b[K" + line


def _orjson_dumps(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Route structlog to ``stream`` (stderr) as JSON or console lines."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
        renderer,
    ]
    if out.isatty():
        processors.append(_over_progress_bar)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
