"""Messages users meet first: each names the call, the host, the credentials and the next step."""

from __future__ import annotations

import email.utils
import time

import anyio
import pytest

from connector.emulator import EmulatorServer
from connector.errors import OciApiError, TransportError
from connector.oci import (
    auth,
    troubleshoot,
)
from connector.oci.client import ClientOptions, OciClient, _clock_skew
from connector.oci.retry import RetryPolicy

FAST = RetryPolicy(max_attempts=2, base_s=0.01, cap_s=0.02, jitter_s=0.01)
PROFILE = 'profile "DEFAULT" of /etc/oci/config'


def get(server: EmulatorServer, url: str, compartment: str, **options: object) -> None:
    assert server.config_file is not None
    signer = auth.make_signer("api_key", auth.load_profile(server.config_file, "DEFAULT"))

    async def one() -> None:
        opts = ClientOptions(retry=FAST, environ={}, profile=PROFILE, **options)  # type: ignore[arg-type]
        async with OciClient(signer, opts) as client:
            await client.get(url, {"compartmentId": compartment}, region="us-ashburn-1")

    anyio.run(one)


def test_404_names_call_host_profile_and_policy(emulator: EmulatorServer) -> None:
    """A compartment the principal may not read: policy, compartment and subscription named."""
    hidden = next(c for c in emulator.world.compartments if not c.accessible)
    with pytest.raises(OciApiError) as caught:
        get(emulator, emulator.url + "/20160918/images", hidden.id)
    message = str(caught.value)
    host = emulator.url.removeprefix("http://")
    assert message.startswith(f"ListImages to {host} with {PROFILE}: 404 NotAuthorizedOrNotFound")
    for words in (
        "policy",
        "inspect instance-images",
        "compartment OCID",
        "subscribed",
        "us-ashburn-1",
    ):
        assert words in message


def test_404_on_compartments_names_the_permission(emulator: EmulatorServer) -> None:
    """ListCompartments refused: the message names `inspect compartments`."""
    hidden = next(c for c in emulator.world.compartments if not c.accessible)
    with pytest.raises(OciApiError, match=r"ListCompartments.*inspect compartments"):
        get(emulator, emulator.url + "/20160918/compartments", hidden.id)


def test_connection_refused_names_host_and_proxy_advice() -> None:
    """Nothing listening: the host, and the proxy variable to set if one is needed."""
    server_url = "http://127.0.0.1:9"

    async def one() -> None:
        async with OciClient(_Unsigned(), ClientOptions(retry=FAST, environ={})) as client:
            await client.get(server_url + "/20160918/images", {"compartmentId": "c"})

    with pytest.raises(TransportError) as caught:
        anyio.run(one)
    message = str(caught.value)
    assert message.startswith("ListImages to 127.0.0.1:9: connection failed")
    assert "HTTPS_PROXY" in message


class _Unsigned:
    async def sign(self, method: str, url: str, headers: dict[str, str]) -> None:
        headers["authorization"] = "none"


class TestHints:
    def test_clock_skew_from_the_date_header(self) -> None:
        """The server's Date against the local clock gives the skew, to the second."""
        ahead = email.utils.formatdate(time.time() + 600, usegmt=True)
        skew = _clock_skew(ahead)
        assert skew is not None
        assert 598 < skew < 601
        assert _clock_skew("not a date") is None

    def test_401_with_a_skewed_clock_says_so(self) -> None:
        """A skew beyond 5 minutes is the diagnosis, whatever else might be wrong."""
        hint = troubleshoot.for_status(
            401,
            "NotAuthenticated",
            call="ListImages",
            auth="api_key",
            profile=PROFILE,
            clock_skew_s=-420,
        )
        assert "420 s ahead of the server's" in hint
        assert "NTP" in hint

    @pytest.mark.parametrize(
        ("mode", "words"),
        [
            ("api_key", ("fingerprint", "key_file", "user", "tenancy", "clock")),
            ("security_token", ("oci session refresh",)),
            ("instance_principal", ("dynamic group",)),
        ],
    )
    def test_401_by_authentication_mode(self, mode: str, words: tuple[str, ...]) -> None:
        """Each mode's likely causes, checked in the order an administrator would."""
        hint = troubleshoot.for_status(
            401, "NotAuthenticated", call="ListImages", auth=mode, profile=PROFILE
        )
        for word in words:
            assert word in hint

    def test_429_suggests_the_knobs(self) -> None:
        """Throttled to the end: the settings that ask less of the service."""
        hint = troubleshoot.for_status(
            429, "TooManyRequests", call="ListImages", auth="api_key", profile=PROFILE
        )
        assert "fetch.concurrency" in hint
        assert "fetch.max_requests_per_second" in hint

    @pytest.mark.parametrize(
        ("url", "call"),
        [
            ("https://iaas.x/20160918/images?compartmentId=a", "ListImages"),
            ("https://identity.x/20160918/compartments", "ListCompartments"),
            (
                "https://identity.x/20160918/tenancies/t/regionSubscriptions",
                "ListRegionSubscriptions",
            ),
        ],
    )
    def test_call_names(self, url: str, call: str) -> None:
        """The operation is named as in the API reference."""
        assert call == troubleshoot.call_name(url)
