"""Errors that concern the whole run, told apart from those of one listing.

A certificate that does not verify, a signature the service refuses (401), a host name that does
not resolve or a port where nothing listens is the same for every listing: retrying each of them
(eight attempts for each of hundreds of listings) only delays the answer and hammers the
endpoint, and ending the run "partial" would hide that nothing worked. Such an error stops the
run at once (``RunAbort``, exit 1) with the reason, the host and what to check. DNS failures and
refused connections count only until the host has answered once in this run: after that, they
are a passing network problem of one request, retried as usual.
"""

from __future__ import annotations

import socket
import ssl
from typing import Literal

import aiohttp

from connector.errors import ConnectorError, OciApiError, TransportError

Kind = Literal["tls", "dns", "refused", ""]


class RunAbort(ConnectorError):
    """An error that concerns every request of the run (TLS, 401, DNS, connection refused):
    the run stops at once, with the reason, the host and what to check.

    ``reason`` names the host, once; ``hint`` is the one next step."""

    def __init__(self, reason: str, host: str, hint: str) -> None:
        self.reason = reason
        self.host = host
        self.hint = hint
        super().__init__(f"{reason}. Next: {hint}" if hint else reason)


def kind_of(exc: BaseException) -> Kind:
    """What kind of connection failure ``exc`` (from aiohttp or the OS) is."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls"
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return "tls"
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", None)
    if dns_error is not None and isinstance(exc, dns_error):
        return "dns"
    cause = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
    if isinstance(cause, socket.gaierror):
        return "dns"
    if isinstance(cause, ConnectionRefusedError):
        return "refused"
    return ""


def whole_run(
    error: TransportError | OciApiError, host: str, answered: bool, profile: str = ""
) -> RunAbort | None:
    """The ``RunAbort`` that ``error`` means, or None when it concerns one request only.

    ``answered``: whether ``host`` has answered any request of this run before. ``profile``:
    who signs, as ``Credentials.label`` says it (``profile "DEFAULT" of ~/.oci/config``). The
    hint the client attached to ``error`` (the authentication mode's advice after a 401, the
    CA advice after a refused certificate) is the one given; otherwise the one here.
    """
    if isinstance(error, OciApiError):
        if error.status != 401:
            return None
        signer = profile or "the OCI profile"
        hint = error.hint or (
            f"check the user, fingerprint, key_file and tenancy of {signer}, that the key was "
            "uploaded for that user, and this machine's clock"
        )
        who = f" with {profile}" if profile and profile not in hint else ""  # named once
        return RunAbort(
            f"{host} refused the request signature{who}: 401 {error.code} {error.message}".strip(),
            host,
            hint,
        )
    kind = getattr(error, "kind", "")
    if kind == "tls":
        return RunAbort(
            error.reason,
            host,
            error.hint
            or "set oci.ca_bundle to the CA file that signed it (a private appliance's own CA), "
            "or check oci.endpoint and any proxy that intercepts TLS",
        )
    if answered:
        return None
    if kind == "dns":
        return RunAbort(
            f"{host}: the host name does not resolve",
            host,
            "check the region name and oci.endpoint, this machine's DNS, and HTTPS_PROXY",
        )
    if kind == "refused":
        return RunAbort(
            f"{host}: the connection was refused",
            host,
            "nothing accepts connections there: check oci.endpoint (and its port), and "
            "HTTPS_PROXY and NO_PROXY",
        )
    return None
