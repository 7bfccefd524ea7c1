"""The connector's exception hierarchy, and when each is raised::

    ConnectorError         root of all; ``retryable`` says whether trying again can help
    ├── ConfigError        the configuration or command line is invalid (exit 2), before any request
    ├── AuthError          credentials cannot be loaded, or cannot sign a request
    ├── TransportError     a request got no complete HTTP response (reset, truncated); retryable
    │   ├── RequestTimeout     a connect or read timeout expired
    │   ├── TlsError           the server's certificate was refused; never retried
    │   └── ProxyError         the proxy cannot be reached, or refuses the tunnel to the service
    ├── OciApiError        the service answered with an error status (status, code, opc-request-id)
    ├── PaginationError    the service returned a page token that would make a listing loop
    ├── LimitExceeded      a configured limit was reached; names the key that sets it [limits]
    │   ├── ResponseTooLarge   a response, or its decompressed body, is too large [limits]
    │   ├── TooManyPages       a listing passed fetch.max_pages_per_listing [limits]
    │   └── DeadlineExceeded   the run passed fetch.run_deadline_s [limits]
    ├── RunAbort           the failure concerns the whole run (TLS, 401, DNS) [oci.diagnose]
    ├── PageError          a page's body is not JSON, or not an array; its listing fails [pages]
    ├── WorkerError        a worker process failed or went away; the run cannot be trusted
    ├── UnsafeNameError    a name from outside (the service, a manifest) cannot be a path [names]
    ├── LockHeld           another run holds the output's lock for that date; retryable [lake.lock]
    ├── VerificationError  a staged file is missing or differs from its manifest [lake.verify]
    ├── PublishError       output could not be staged or published; what was published stands
    ├── DeletionRefused    a deletion outside the connector's own folders (a bug) [lake.door]
    └── Interrupted        SIGINT or SIGTERM stopped the run; nothing published [interrupt]

Classes defined outside this module name their module in brackets (under ``connector.``): they
live beside the code that raises them. ``TooManyPages`` is also a ``PaginationError``.
Lower-level errors (aiohttp, OS, pyarrow) are translated at the boundary where they occur (the
client, the workers, publishing), so callers never have to know which library produced them.
``tests/test_errors.py`` checks that this tree lists every subclass of ``ConnectorError`` in the
package, under one of its bases.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# The process exit codes (README, "Exit codes"), in one place.
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_PARTIAL = 0, 1, 2, 3


# -- secrets in text from outside ------------------------------------------------------------

REDACTED = "[redacted]"

_MAYBE_SECRET = re.compile(r"signature|bearer|authorization|keyid|eyJ", re.IGNORECASE)
_SECRETS = (
    # An OCI request signature: Signature version="1",keyId="…",algorithm="…",headers="…",
    # signature="…" (quotes escaped inside a JSON text); to its signature's end, else the line's.
    (
        re.compile(
            r"\bSignature\s+(?=\\?[\"']?(?:version|keyId|algorithm|headers|signature)\b)"
            r"[^\r\n]*?(?:\bsignature\s*=\s*\\?\"[^\"\\\r\n]*(?:\\?\")?|$)",
            re.IGNORECASE | re.MULTILINE,
        ),
        f"Signature {REDACTED}",
    ),
    (re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), f"Bearer {REDACTED}"),
    # Parts of a signature on their own (a proxy that quotes some of the header).
    (
        re.compile(r"\b(keyId|signature)(\s*=\s*\\?\")[^\"\\\r\n]*", re.IGNORECASE),
        rf"\1\2{REDACTED}",
    ),
    # A JSON Web Token (a security token or a resource principal's session token).
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Whatever else follows an Authorization header's name, to the end of its value.
    (
        re.compile(
            r"\b((?:proxy-)?authorization)(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
            r"(?!\s*(?:Signature |Bearer )?\[redacted\])[^\r\n\"'\\,;}<]+",
            re.IGNORECASE,
        ),
        rf"\1\2{REDACTED}",
    ),
)


def redact(text: str) -> str:
    """``text`` without anything shaped like a credential: an OCI request signature, a bearer
    token, a JSON Web Token, an ``Authorization`` header's value.

    Applied where text from outside (a server's or a proxy's error, which may echo the request's
    headers) becomes a message: errors, log lines, run records. It errs on the side of cutting
    too much; a message loses detail, never a credential.
    """
    if not _MAYBE_SECRET.search(text):
        return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class ConnectorError(Exception):
    """Root of every error raised by the connector."""

    retryable: bool = False


class ConfigError(ConnectorError):
    """The configuration or command line is invalid; raised before any request is sent."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)


class AuthError(ConnectorError):
    """Credentials could not be loaded or used to sign a request."""


class _Told:
    """Context a message about a call carries: which call, to which host, as whom, what next.

    ``concerns_run``: the failure would repeat for every listing (a certificate, credentials,
    a proxy refusing), so the run stops at once instead of ending partial.
    """

    concerns_run: bool = False
    call: str = ""
    host: str = ""
    profile: str = ""
    hint: str = ""

    def add_context(
        self, *, call: str = "", host: str = "", profile: str = "", hint: str = ""
    ) -> None:
        """Fill in what the raiser did not know (the client adds the call and credentials)."""
        self.call = self.call or call
        self.host = self.host or host
        self.profile = self.profile or profile
        self.hint = self.hint or hint

    def _told(self, core: str) -> str:
        to = f"to {self.host}" if self.host else ""
        head = " ".join(part for part in (self.call, to) if part)
        if self.profile:
            head += f" with {self.profile}"
        text = f"{head}: {core}" if head else core
        return f"{text}. Next: {self.hint}" if self.hint else text


class TransportError(_Told, ConnectorError):
    """The request never produced a complete HTTP response (connect, reset, timeout, truncation)."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        opc_request_id: str | None = None,
        host: str = "",
        hint: str = "",
        retryable: bool | None = None,
        kind: str = "",
    ) -> None:
        message = redact(message)
        self.opc_request_id = opc_request_id
        self.reason = message
        self.host = host
        self.hint = hint
        if retryable is not None:
            self.retryable = retryable
        self.kind = kind
        """``tls``, ``dns`` or ``refused`` for connection failures that may concern the whole
        run (``connector.oci.diagnose``), "" otherwise."""
        super().__init__(message)

    def __str__(self) -> str:
        return self._told(self.reason)


class RequestTimeout(TransportError):
    """A connect or read timeout expired."""


class TlsError(TransportError):
    """The server's certificate was refused (unknown CA, other name, expired); never retried."""

    retryable = False
    concerns_run = True


class ProxyError(TransportError):
    """The proxy could not be reached, or refused the tunnel to the service."""


class OciApiError(_Told, ConnectorError):
    """The service answered with an error status."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        opc_request_id: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        # The service's code and message are text from outside, which a proxy's error page
        # may fill with the request's headers.
        code, message = redact(code), redact(message)
        self.status = status
        self.code = code
        self.message = message
        self.opc_request_id = opc_request_id
        self.retryable = retryable
        self.retry_after = retry_after
        # Server time minus local time, when a 401 came with a Date header.
        self.clock_skew_s: float | None = None
        self.concerns_run = status == 401
        super().__init__(f"{status} {code}: {message} (opc-request-id: {opc_request_id or 'none'})")

    def __str__(self) -> str:
        return self._told(str(self.args[0]))


class PaginationError(ConnectorError):
    """The service returned a page token that would make the listing loop forever."""


class WorkerError(ConnectorError):
    """A worker process failed or went away; the run cannot be trusted."""

    gone = False
    """The worker went away without saying why: when another worker's failure says why,
    that one is the news (the others stop because of it)."""


class PublishError(ConnectorError):
    """Output could not be staged or published; what was published before is untouched."""


def first_cause(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The error a run reports from ``group``: the first that says why, before a worker that
    only went away (stopped, most likely, because of the other's failure)."""
    found = [e for e in leaves(group) if isinstance(e, Exception)]
    telling = [e for e in found if not getattr(e, "gone", False)]
    chosen = telling or found
    return chosen[0] if chosen else None


def leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    """The exceptions inside ``group`` and the groups nested in it (task groups wrap them)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from leaves(exc)
        else:
            yield exc
