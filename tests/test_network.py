"""Proxies and private CAs over real sockets: TLS from a CA the tests create, a CONNECT proxy."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
from oci._vendor.requests import utils as requests_utils

from connector.emulator import EmulatorServer
from connector.errors import ConfigError, OciApiError, ProxyError, TlsError, TransportError
from connector.oci import auth
from connector.oci.client import ClientOptions, OciClient, RequestCounters
from connector.oci.proxy import proxy_for
from connector.oci.retry import RetryPolicy
from tests.conftest import PrivateCA as Pki
from tests.conftest import make_private_ca
from tests.netfixtures import ConnectProxy, LoopThread, TlsFront, started

FAST = RetryPolicy(max_attempts=3, base_s=0.01, cap_s=0.05, jitter_s=0.01)
PCA = "iaas.pca.example.com"
WRONG_CA = "iaas.wrongca.example.com"
MISMATCH = "iaas.mismatch.example.com"


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The appliance's CA and its certificate for iaas. and identity. names."""
    return make_private_ca(tmp_path_factory.mktemp("pki"), (PCA, "identity.pca.example.com"))


@pytest.fixture(scope="module")
def network(
    loop: LoopThread, pki: Pki, emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """TLS fronts for the emulator (good CA; another CA) and a proxy that routes names to them."""
    other = make_private_ca(tmp_path_factory.mktemp("other"), (WRONG_CA,))
    port = int(emulator.url.rsplit(":", 1)[1])
    good = started(loop, lambda: TlsFront(port, pki))
    foreign = started(loop, lambda: TlsFront(port, other))
    routes = {
        PCA: good.port,
        "identity.pca.example.com": good.port,
        MISMATCH: good.port,
        WRONG_CA: foreign.port,
    }
    proxy = started(loop, lambda: ConnectProxy(routes))
    locked = started(loop, lambda: ConnectProxy(routes, credentials="ops:s3cr@t!"))
    yield {"proxy": proxy, "locked": locked, "good": good}
    for server in (good, foreign, proxy, locked):
        loop.run(server.stop())


def signer(server: EmulatorServer) -> auth.RequestSigner:
    assert server.config_file is not None
    return auth.make_signer("api_key", auth.load_profile(server.config_file, "DEFAULT"))


def fetch(
    server: EmulatorServer, url: str, environ: dict[str, str], **options: Any
) -> tuple[list[str], RequestCounters]:
    """GET ListImages of the root compartment at ``url``; the ids and the request counters."""
    client_options = ClientOptions(retry=FAST, environ=environ, **options)

    async def run() -> tuple[list[str], RequestCounters]:
        async with OciClient(signer(server), client_options) as client:
            response = await client.get(
                url + "/20160918/images", {"compartmentId": server.world.tenancy_id}
            )
            return [r["id"] for r in orjson.loads(response.body)], client.counters

    result: tuple[list[str], RequestCounters] = anyio.run(run)
    return result


def truth(server: EmulatorServer) -> list[str]:
    world = server.world
    return [i.id for i in world.listing(world.home_region, world.tenancy_id)][:1000]


class TestPrivateCa:
    def test_ca_bundle_through_a_connect_proxy(
        self, emulator: EmulatorServer, network: dict[str, Any], pki: Pki
    ) -> None:
        """https://iaas.<domain> through HTTPS_PROXY, verified against oci.ca_bundle: the listing."""
        proxy = network["proxy"]
        before = len(proxy.tunnels)
        ids, counters = fetch(
            emulator, f"https://{PCA}", {"HTTPS_PROXY": proxy.url}, ca_bundle=str(pki.ca_file)
        )
        assert truth(emulator)[: len(ids)] == ids
        assert ids
        assert [f"{PCA}:443"] == proxy.tunnels[before:]
        assert 1 == counters.sent

    @pytest.mark.parametrize(
        ("host", "reason"),
        [(WRONG_CA, "certificate"), (MISMATCH, "Hostname mismatch")],
        ids=["wrong-ca", "hostname-mismatch"],
    )
    def test_refused_certificate_fails_at_once(
        self, emulator: EmulatorServer, network: dict[str, Any], pki: Pki, host: str, reason: str
    ) -> None:
        """A wrong CA or another name: one attempt, a TlsError naming the host and the CA file."""
        proxy = network["proxy"]
        before = len(proxy.tunnels)
        with pytest.raises(TlsError) as caught:
            fetch(
                emulator, f"https://{host}", {"HTTPS_PROXY": proxy.url}, ca_bundle=str(pki.ca_file)
            )
        message = str(caught.value)
        assert host in message
        assert str(pki.ca_file) in message
        assert reason.lower() in message.lower()
        assert "ListImages" in message
        assert "Next:" in message
        assert caught.value.retryable is False
        assert 1 == len(proxy.tunnels) - before

    def test_verification_is_on_without_a_bundle(
        self, emulator: EmulatorServer, network: dict[str, Any]
    ) -> None:
        """No ca_bundle: the system store, which does not know the appliance's CA; nothing to
        switch off, and variables that turn it off elsewhere change nothing here."""
        environ = {
            "HTTPS_PROXY": network["proxy"].url,
            "PYTHONHTTPSVERIFY": "0",
            "CURL_CA_BUNDLE": "",
            "REQUESTS_CA_BUNDLE": "",
        }
        with pytest.raises(TlsError, match="the system's trusted CAs"):
            fetch(emulator, f"https://{PCA}", environ)

    def test_requests_ca_bundle_as_the_sdk_reads_it(
        self, emulator: EmulatorServer, network: dict[str, Any], pki: Pki
    ) -> None:
        """REQUESTS_CA_BUNDLE serves when oci.ca_bundle is empty (the SDK's requests reads it)."""
        environ = {"HTTPS_PROXY": network["proxy"].url, "REQUESTS_CA_BUNDLE": str(pki.ca_file)}
        ids, _ = fetch(emulator, f"https://{PCA}", environ)
        assert ids

    def test_the_default_bundle_is_not_loaded_again(
        self, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A bundle that is the file OpenSSL loads by default (here through a symlink, as
        /usr/lib/ssl/cert.pem is) reuses aiohttp's verifying context; any other file is loaded."""
        from connector.oci.client import _ssl_context

        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
        link = tmp_path / "cert.pem"
        link.symlink_to(pki.ca_file)
        context, source = _ssl_context("", {"REQUESTS_CA_BUNDLE": str(link)})
        assert context is True
        assert f"the CA file {link} (REQUESTS_CA_BUNDLE)" == source
        other = make_private_ca(tmp_path / "other", (PCA,))
        context, source = _ssl_context(str(other.ca_file), {})
        assert isinstance(context, ssl.SSLContext)
        assert f"the CA file {other.ca_file} (oci.ca_bundle)" == source

    @pytest.mark.parametrize("trusted", [True, False])
    def test_default_bundle_as_a_user_runs_it(
        self,
        emulator: EmulatorServer,
        network: dict[str, Any],
        pki: Pki,
        tmp_path: Path,
        trusted: bool,
    ) -> None:
        """`oci-images run` in a process whose OpenSSL default is the appliance's CA
        (SSL_CERT_FILE): REQUESTS_CA_BUNDLE naming that file verifies the appliance; naming
        another CA fails on the certificate, so that bundle was the one that counted."""
        from tests.helpers import write_config

        bundle = pki.ca_file if trusted else make_private_ca(tmp_path / "other", (PCA,)).ca_file
        config = write_config(
            tmp_path,
            emulator,
            oci={"endpoint": f"https://{PCA}", "regions": [emulator.world.home_region]},
            scope={"compartments": [emulator.world.tenancy_id]},
        )
        environ = {
            **os.environ,
            "SSL_CERT_FILE": str(pki.ca_file),
            "REQUESTS_CA_BUNDLE": str(bundle),
            "HTTPS_PROXY": network["proxy"].url,
        }
        result = subprocess.run(
            [sys.executable, "-m", "connector", "run", "--config", str(config), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
            env=environ,
        )
        if trusted:
            assert 0 == result.returncode, result.stderr
        else:
            assert 1 == result.returncode
            assert str(bundle) in result.stderr

    def test_unreadable_bundle_is_a_config_error(
        self, emulator: EmulatorServer, tmp_path: Path
    ) -> None:
        """A ca_bundle that holds no certificate is named as configuration, before any request."""
        bogus = tmp_path / "bundle.pem"
        bogus.write_text("not a certificate\n")
        requests_before = emulator.stats()["requests"]
        with pytest.raises(ConfigError, match=r"oci\.ca_bundle"):
            fetch(emulator, emulator.url, {}, ca_bundle=str(bogus))
        assert requests_before == emulator.stats()["requests"]


class TestProxies:
    def test_proxy_credentials_from_the_variable(
        self, emulator: EmulatorServer, network: dict[str, Any], pki: Pki
    ) -> None:
        """user:password in HTTPS_PROXY (URL-encoded) go as Proxy-Authorization."""
        locked = network["locked"]
        url = f"http://ops:s3cr%40t%21@127.0.0.1:{locked.port}"
        ids, _ = fetch(emulator, f"https://{PCA}", {"https_proxy": url}, ca_bundle=str(pki.ca_file))
        assert ids

    def test_proxy_wanting_credentials(
        self, emulator: EmulatorServer, network: dict[str, Any], pki: Pki
    ) -> None:
        """407: a ProxyError naming the proxy and the variable, never the password; not retried."""
        locked = network["locked"]
        before = len(locked.refused)
        url = f"http://ops:wrong-password@127.0.0.1:{locked.port}"
        with pytest.raises(ProxyError) as caught:
            fetch(emulator, f"https://{PCA}", {"HTTPS_PROXY": url}, ca_bundle=str(pki.ca_file))
        message = str(caught.value)
        assert f"http://127.0.0.1:{locked.port}" in message
        assert "HTTPS_PROXY" in message
        assert "wrong-password" not in message + repr(caught.value)
        assert 1 == len(locked.refused) - before

    def test_unreachable_proxy(self, emulator: EmulatorServer) -> None:
        """A proxy that does not answer is named, with the variable that chose it."""
        with pytest.raises(ProxyError) as caught:
            fetch(emulator, f"https://{PCA}", {"HTTPS_PROXY": "127.0.0.1:9"})
        assert "http://127.0.0.1:9" in str(caught.value)
        assert "HTTPS_PROXY" in str(caught.value)

    def test_no_proxy_reaches_loopback_directly(
        self, emulator: EmulatorServer, network: dict[str, Any]
    ) -> None:
        """NO_PROXY naming the emulator's address: the request does not touch the proxy."""
        proxy = network["proxy"]
        before = (len(proxy.tunnels), len(proxy.refused))
        environ = {"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.1"}
        ids, _ = fetch(emulator, emulator.url, environ)
        assert truth(emulator)[: len(ids)] == ids
        assert before == (len(proxy.tunnels), len(proxy.refused))

    def test_loopback_is_proxied_without_no_proxy(
        self, emulator: EmulatorServer, network: dict[str, Any]
    ) -> None:
        """As with requests, loopback is not exempt by itself: HTTP_PROXY applies to it."""
        proxy = network["proxy"]
        before = len(proxy.refused)
        with pytest.raises((OciApiError, TransportError)):
            fetch(emulator, emulator.url, {"HTTP_PROXY": proxy.url})
        assert len(proxy.refused) > before


ENVIRONMENTS = [
    {},
    {"HTTPS_PROXY": "http://proxy.corp:3128"},
    {"https_proxy": "proxy.corp:3128", "HTTPS_PROXY": "http://other:1"},
    {"HTTP_PROXY": "http://p:8080", "NO_PROXY": "localhost,127.0.0.1"},
    {"HTTPS_PROXY": "http://p:8080", "NO_PROXY": ".oraclecloud.com"},
    {"HTTPS_PROXY": "http://p:8080", "no_proxy": "example.com:8443"},
    {"HTTPS_PROXY": "http://p:8080", "NO_PROXY": "10.0.0.0/8, 192.168.1.5"},
    {"HTTPS_PROXY": "http://p:8080", "NO_PROXY": "*"},
    {"ALL_PROXY": "http://all:1080"},
    {"HTTPS_PROXY": "http://u:p%40ss@p:8080"},
    {"HTTP_PROXY": "http://p:8080", "REQUEST_METHOD": "GET"},
    {"HTTPS_PROXY": "", "https_proxy": "http://p:8080"},
]
URLS = [
    "https://iaas.us-ashburn-1.oraclecloud.com/20160918/images",
    "https://identity.us-ashburn-1.oci.oraclecloud.com/20160918/compartments",
    "https://iaas.example.com:8443/20160918/images",
    "https://iaas.pca.example.com/20160918/images",
    "http://127.0.0.1:8080/20160918/images",
    "http://localhost:8080/x",
    "https://10.1.2.3/x",
    "https://192.168.1.5/x",
]


@pytest.mark.parametrize("environ", ENVIRONMENTS, ids=lambda e: ",".join(sorted(e)) or "none")
def test_proxy_choice_equals_requests(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """For every URL, the proxy chosen is the one the SDK's requests chooses (or none)."""
    for name in list(__import__("os").environ):
        if name.lower().endswith("_proxy") or name == "REQUEST_METHOD":
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    for url in URLS:
        proxies = requests_utils.get_environ_proxies(url)
        expected = requests_utils.select_proxy(url, proxies)
        chosen = proxy_for(url, environ)
        if expected is None:
            assert chosen is None, url
            continue
        assert chosen is not None, url
        wanted = requests_utils.urlparse(requests_utils.prepend_scheme_if_needed(expected, "http"))
        assert (wanted.scheme, wanted.hostname, wanted.port) == (
            requests_utils.urlparse(chosen.url).scheme,
            requests_utils.urlparse(chosen.url).hostname,
            requests_utils.urlparse(chosen.url).port,
        ), url
        assert bool(wanted.username) == ("Proxy-Authorization" in chosen.headers)
        assert "@" not in chosen.display


class TestEndToEnd:
    """`oci-images run` against https://iaas.pca.example.com through a proxy, as on a rack."""

    def config(self, tmp_path: Path, emulator: EmulatorServer, **oci: Any) -> Path:
        from tests.helpers import write_config

        values = {
            "endpoint": f"https://{PCA}",
            "regions": [emulator.world.home_region],
            "flavor": "pca",
            **oci,
        }
        return write_config(tmp_path, emulator, oci=values, fetch={"workers": 0})

    def test_export_over_tls_through_the_proxy(
        self,
        emulator: EmulatorServer,
        network: dict[str, Any],
        pki: Pki,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Discovery at identity.<domain>, listings at iaas.<domain>: the rows are exact."""
        from tests.helpers import arrow_rows, run
        from tests.reference import expected_rows, multiset, normalise_actual

        proxy = network["proxy"]
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        before = len(proxy.tunnels)
        assert 0 == run(self.config(tmp_path, emulator, ca_bundle=str(pki.ca_file)))
        world = emulator.world
        expected = [r for r in expected_rows(world, "once") if r["region"] == world.home_region]
        assert multiset(expected) == multiset(
            [normalise_actual(r, "once") for r in arrow_rows(tmp_path)]
        )
        hosts = {target.rsplit(":", 1)[0] for target in proxy.tunnels[before:]}
        assert {PCA, "identity.pca.example.com"} == hosts

    def test_wrong_ca_stops_the_run_at_once(
        self,
        emulator: EmulatorServer,
        network: dict[str, Any],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Exit 1, the host and the CA file named, a handful of tunnels, not eight per listing."""
        from tests.helpers import run

        other = make_private_ca(tmp_path / "other", (PCA,))
        proxy = network["proxy"]
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        before, requests_before = len(proxy.tunnels), emulator.stats()["requests"]
        config = self.config(
            tmp_path, emulator, ca_bundle=str(other.ca_file), identity_endpoint=f"https://{PCA}"
        )
        assert 1 == run(config, "--set", f'scope.compartments=["{emulator.world.tenancy_id}"]')
        err = capsys.readouterr().err
        assert PCA in err
        assert str(other.ca_file) in err
        assert len(proxy.tunnels) - before <= 4
        assert requests_before == emulator.stats()["requests"]
