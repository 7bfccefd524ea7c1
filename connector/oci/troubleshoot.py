"""What to do next: the advice attached to the errors users meet first.

Each failure the client gives up on is told with the call (ListImages ...), the host, the
credentials (profile or principal) and, from here, the next step. The advice is the checklist
an OCI administrator runs through for that status, narrowed by what the response itself shows
(the server's clock, the code, the authentication mode). What is particular to a mode or a
flavor is worded in its record (``connector.oci.auth.MODES``, ``connector.flavors``).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from connector import flavors
from connector.oci import auth as authentication

# Identity's and Compute's list calls, by the last segment of their path.
CALLS = {
    "images": "ListImages",
    "compartments": "ListCompartments",
    "regionSubscriptions": "ListRegionSubscriptions",
    "tenancies": "GetTenancy",
    "resources": "SearchResources",
}
# OCI refuses signatures whose date is more than 5 minutes off.
MAX_CLOCK_SKEW_S = 300.0


def call_name(url: str) -> str:
    """The API operation a URL calls (``ListImages``), or its path when unknown."""
    path = urlsplit(url).path.rstrip("/")
    return CALLS.get(path.rsplit("/", 1)[-1], path or url)


def host_of(url: str) -> str:
    """``host[:port]`` of a URL."""
    return urlsplit(url).netloc


def for_status(
    status: int,
    code: str,
    *,
    call: str,
    auth: str,
    profile: str,
    region: str | None = None,
    clock_skew_s: float | None = None,
) -> str:
    """The next step after an error status, or "" when there is nothing better to say."""
    if status == 401:
        return _unauthenticated(auth, profile, clock_skew_s)
    if status == 404 and code in ("NotAuthorizedOrNotFound", "NotAuthorized", "NotFound"):
        where = f" in region {region}" if region else ""
        return (
            f"the principal of {profile} may not {_verb(call)}{where}: check the IAM policy "
            f"(see the README's least-privilege policy), that the compartment OCID exists and "
            f"is ACTIVE, and that the tenancy is subscribed to the region "
            "(Console: Governance & Administration > Region management)"
        )
    if status == 429:
        return (
            "the service kept throttling after every retry: lower fetch.concurrency or set "
            "fetch.max_requests_per_second, run shards at different times, or ask Oracle to "
            "raise the tenancy's limit"
        )
    if status == 400 and code in ("InvalidParameter", "MissingParameter"):
        return f"a filter or parameter was refused: check [filters] ({flavors.sort_by_advice()})"
    return ""


def _verb(call: str) -> str:
    return {
        "ListImages": "list images here (inspect instance-images)",
        "ListCompartments": "list compartments (inspect compartments)",
        "ListRegionSubscriptions": "list region subscriptions (inspect tenancies)",
        "SearchResources": "search images here (inspect instance-images in each compartment; "
        'fetch.strategy = "search" needs Resource Search, which an appliance may lack)',
    }.get(call, f"call {call}")


def _unauthenticated(auth: str, profile: str, clock_skew_s: float | None) -> str:
    if clock_skew_s is not None and abs(clock_skew_s) > MAX_CLOCK_SKEW_S:
        direction = "behind" if clock_skew_s > 0 else "ahead of"
        return (
            f"this machine's clock is {abs(clock_skew_s):.0f} s {direction} the server's; OCI "
            "refuses signatures more than 5 minutes off: synchronise the clock (NTP)"
        )
    mode = authentication.MODES.get(auth, authentication.API_KEY)
    return mode.after_401.format(profile=profile)


def for_tls(host: str, ca_source: str, reason: str, proxy: str | None) -> str:
    """The next step after a failed TLS verification. ``host`` is not repeated: the message
    this advice follows names it."""
    via = f" (through the proxy {proxy})" if proxy else ""
    if "hostname" in reason.lower() or "match" in reason.lower():
        return (
            f"the certificate presented{via} is not issued for that name: check "
            "oci.endpoint (use the appliance's name as its certificate has it"
            + (", and that the proxy does not intercept TLS)" if proxy else ")")
        )
    return (
        f"the certificate{via} does not chain to {ca_source}: set oci.ca_bundle to "
        "a PEM file holding the CA that issued it (for a Private Cloud Appliance: its "
        "management node's CA; behind an inspecting proxy: the proxy's CA)"
    )


def for_proxy(proxy: str, variable: str, status: int | None) -> str:
    """The next step after a proxy refused or could not be reached."""
    if status == 407:
        return (
            f"the proxy {proxy} wants credentials: put them in {variable} as "
            "http://user:password@host:port (URL-encoded)"
        )
    if status is not None:
        return (
            f"the proxy {proxy} refused the tunnel (HTTP {status}): ask its administrators to "
            f"allow CONNECT to the OCI endpoints, or list the host in NO_PROXY"
        )
    return (
        f"cannot reach the proxy {proxy} (from {variable}): check {variable} and NO_PROXY, "
        "or unset them if this network needs no proxy"
    )


def for_connection(host: str, reason: str, proxy_hint: bool) -> str:
    """The next step after no connection could be made (the message names ``host``)."""
    advice = "check that the host is right (oci.regions, oci.endpoint) and reachable from here" + (
        "; behind a corporate proxy set HTTPS_PROXY (and NO_PROXY)" if proxy_hint else ""
    )
    return f"{reason}: {advice}" if reason else advice
