"""Which proxy a request goes through, decided as the official SDK (its vendored requests) does.

The SDK's HTTP sessions trust the environment: ``https_proxy``/``HTTPS_PROXY``,
``http_proxy``/``HTTP_PROXY`` and ``all_proxy``/``ALL_PROXY`` (lower case wins, as in curl and
wget), unless ``no_proxy``/``NO_PROXY`` matches the host: a suffix of the host name, with or
without its port (``.example.com``, ``example.com:8443``), an IPv4 address or network
(``10.0.0.0/8``), or ``*``. The same rules apply here (urllib's environment rules, which
requests uses, and requests' own ``no_proxy`` matching), so that a machine set up for the OCI
CLI is set up for the connector. A proxy without a scheme is an ``http://`` one. Loopback
hosts are proxied unless ``NO_PROXY`` names them, as with requests. Unlike requests on macOS
and Windows, the system's proxy settings (outside the environment) are not read.

A proxy URL may carry credentials (``http://user:password@proxy:3128``); they travel in a
``Proxy-Authorization`` header and never appear in a message: ``Proxy.display`` omits them.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to send one request through, and the variable it came from."""

    url: str
    variable: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def display(self) -> str:
        """``scheme://host:port`` of the proxy, without credentials, for messages."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}"


def proxy_for(url: str, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy for ``url`` under ``environ`` (this process's environment by default)."""
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    host = parts.hostname
    if host is None or _bypass(parts.hostname or "", parts.port, env):
        return None
    proxies = _environment_proxies(env)
    for key in (f"{parts.scheme}://{host}", parts.scheme, f"all://{host}", "all"):
        if key in proxies:
            value, variable = proxies[key]
            return _proxy(value, variable)
    return None


def _proxy(value: str, variable: str) -> Proxy:
    if "://" not in value:
        value = "http://" + value  # requests' prepend_scheme_if_needed
    parts = urlsplit(value)
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = (
            "Basic " + base64.b64encode(pair.encode("latin-1")).decode()
        )
        netloc = parts.netloc.rsplit("@", 1)[1]
        value = parts._replace(netloc=netloc).geturl()
    return Proxy(value, variable, headers)


def _environment_proxies(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """urllib's ``getproxies_environment`` over ``env``, with the variable each came from.

    Lower-case names win over upper-case ones; under CGI (``REQUEST_METHOD`` set) an upper-case
    ``HTTP_PROXY`` is ignored, since a client's ``Proxy:`` header could have set it.
    """
    proxies: dict[str, tuple[str, str]] = {}
    for name, value in env.items():
        if value and name.lower().endswith("_proxy"):
            proxies[name.lower()[:-6]] = (value, name)
    if "REQUEST_METHOD" in env:
        proxies.pop("http", None)
    for name, value in env.items():
        if name.endswith("_proxy"):
            if value:
                proxies[name[:-6]] = (value, name)
            else:
                proxies.pop(name[:-6], None)
    return proxies


def _bypass(host: str, port: int | None, env: Mapping[str, str]) -> bool:
    """requests' ``should_bypass_proxies``: NO_PROXY suffixes and networks, then urllib's rules."""
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY")
    if no_proxy:
        entries = [entry for entry in no_proxy.replace(" ", "").split(",") if entry]
        if _is_ipv4(host):
            for entry in entries:
                if "/" in entry:
                    if _in_network(host, entry):
                        return True
                elif host == entry:
                    return True
        else:
            with_port = f"{host}:{port}" if port else host
            if any(host.endswith(entry) or with_port.endswith(entry) for entry in entries):
                return True
    proxies = {scheme: value for scheme, (value, _) in _environment_proxies(env).items()}
    try:
        return bool(proxy_bypass_environment(host, proxies))
    except (TypeError, OSError):
        return False


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _in_network(host: str, network: str) -> bool:
    """requests' ``is_valid_cidr`` and ``address_in_network``: a dotted IPv4 network, /1 to /32."""
    address, _, bits = network.partition("/")
    if not bits.isdigit() or not 1 <= int(bits) <= 32 or not _is_ipv4(address):
        return False
    return ipaddress.IPv4Address(host) in ipaddress.IPv4Network(network, strict=False)
