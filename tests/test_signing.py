"""Request signing and credentials, checked against the official SDK's signer."""

from __future__ import annotations

import sys
from email.utils import formatdate
from pathlib import Path
from typing import get_args

import anyio
import oci
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from oci._vendor import requests

from connector import config, validation
from connector.emulator import EmulatorServer
from connector.errors import AuthError, ConfigError
from connector.oci import (
    auth,
    signing,
)
from connector.oci.client import OciClient

DATE = "Thu, 05 Jan 2014 21:31:40 GMT"


def write_key(path: Path, pass_phrase: str | None = None) -> rsa.RSAPrivateKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption = (
        serialization.BestAvailableEncryption(pass_phrase.encode())
        if pass_phrase
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return key


def sdk_authorization(signer: oci.signer.Signer, url: str, date: str) -> str:
    request = requests.Request("GET", url, headers={"date": date}).prepare()
    signer(request)
    return str(request.headers["authorization"])


class TestAuthorizationHeader:
    @pytest.mark.parametrize(
        "url",
        [
            "https://iaas.us-ashburn-1.oraclecloud.com/20160918/images?compartmentId=ocid1.compartment.oc1..aaaa&limit=1000",
            "http://127.0.0.1:8080/us-phoenix-1/20160918/images?compartmentId=ocid1.tenancy.oc1..aaaa&page=AAAA%3D%3D&displayName=a%20b",
            "https://identity.eu-frankfurt-1.oci.oraclecloud.com/20160918/tenancies/ocid1.tenancy.oc1..aaaa/regionSubscriptions",
        ],
        ids=["public", "emulator-region-prefix", "no-query"],
    )
    def test_byte_identical_to_sdk(self, tmp_path: Path, url: str) -> None:
        """For the same method, URL, headers and date, the header equals the SDK's, byte for byte."""
        key_file = tmp_path / "key.pem"
        key = write_key(key_file)
        sdk = oci.signer.Signer("ocid1.tenancy.oc1..t", "ocid1.user.oc1..u", "aa:bb", str(key_file))
        headers = {"date": DATE}
        auth.sign_headers("GET", url, headers, "ocid1.tenancy.oc1..t/ocid1.user.oc1..u/aa:bb", key)
        assert sdk_authorization(sdk, url, DATE) == headers["authorization"]

    def test_signature_verifies(self, tmp_path: Path) -> None:
        """The signature verifies over the documented signing string."""
        key = write_key(tmp_path / "key.pem")
        url = "https://iaas.example.com/20160918/images?compartmentId=x"
        headers = {"date": DATE}
        auth.sign_headers("GET", url, headers, "t/u/f", key)
        params = signing.parse_authorization(headers["authorization"])
        message = (
            f"date: {DATE}\n(request-target): get /20160918/images?compartmentId=x\nhost: iaas.example.com"
        ).encode()
        import base64

        assert signing.rsa_verify(key.public_key(), base64.b64decode(params["signature"]), message)


class TestProfiles:
    def test_default_values_are_inherited(self, tmp_path: Path) -> None:
        """A named profile inherits what it does not set from DEFAULT; relative paths resolve."""
        config = tmp_path / "config"
        config.write_text(
            "[DEFAULT]\nregion=us-ashburn-1\ntenancy=ocid1.tenancy.oc1..t\n\n"
            "[OTHER]\nuser=ocid1.user.oc1..u\nfingerprint=aa\nkey_file=key.pem\n"
        )
        profile = auth.load_profile(config, "OTHER")
        assert ("us-ashburn-1", "ocid1.tenancy.oc1..t") == (profile.region, profile.tenancy)
        assert str(tmp_path / "key.pem") == profile.key_file

    def test_missing_profile_names_the_known_ones(self, tmp_path: Path) -> None:
        """An unknown profile is a ConfigError on oci.profile that lists the profiles there are."""
        config = tmp_path / "config"
        config.write_text("[DEFAULT]\nregion=r\n[ADMIN]\nregion=r\n")
        with pytest.raises(ConfigError) as info:
            auth.load_profile(config, "NOPE")
        assert "oci.profile" == info.value.key
        assert "ADMIN" in str(info.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing config file is a ConfigError on oci.config_file."""
        with pytest.raises(ConfigError) as info:
            auth.load_profile(tmp_path / "absent", "DEFAULT")
        assert "oci.config_file" == info.value.key

    def test_environment_is_honoured(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """OCI_CONFIG_FILE and OCI_CLI_PROFILE apply when the settings leave them empty."""
        monkeypatch.setenv("OCI_CONFIG_FILE", str(tmp_path / "c"))
        monkeypatch.setenv("OCI_CLI_PROFILE", "OPS")
        assert (tmp_path / "c", "OPS") == auth.resolve_config_location("", "")
        assert (Path("/x/y"), "P") == auth.resolve_config_location("/x/y", "P")

    def test_missing_keys_are_named(self, tmp_path: Path) -> None:
        """An api_key profile without user and fingerprint says which keys are missing."""
        config = tmp_path / "config"
        config.write_text("[DEFAULT]\ntenancy=t\nkey_file=k.pem\n")
        with pytest.raises(ConfigError, match="user, fingerprint"):
            auth.make_signer("api_key", auth.load_profile(config, "DEFAULT"))

    def test_encrypted_key_needs_its_pass_phrase(self, tmp_path: Path) -> None:
        """An encrypted key loads with pass_phrase; without it, or with a wrong one, a clear error."""
        write_key(tmp_path / "key.pem", "s3cret-phrase")
        base = "[DEFAULT]\ntenancy=t\nuser=u\nfingerprint=f\nkey_file=key.pem\n"
        config = tmp_path / "config"
        config.write_text(base + "pass_phrase=s3cret-phrase\n")
        assert isinstance(
            auth.make_signer("api_key", auth.load_profile(config, "DEFAULT")), auth.ApiKeySigner
        )
        config.write_text(base)
        with pytest.raises(AuthError, match="pass_phrase"):
            auth.make_signer("api_key", auth.load_profile(config, "DEFAULT"))
        config.write_text(base + "pass_phrase=wrong-phrase\n")
        with pytest.raises(AuthError) as info:
            auth.make_signer("api_key", auth.load_profile(config, "DEFAULT"))
        assert "wrong-phrase" not in str(info.value)
        assert "wrong-phrase" not in repr(auth.load_profile(config, "DEFAULT"))


class TestModes:
    def test_security_token_signer(self, emulator: EmulatorServer) -> None:
        """security_token mode signs with keyId ST$<token> and the emulator accepts it."""
        assert emulator.config_file is not None
        signer = auth.make_signer(
            "security_token", auth.load_profile(emulator.config_file, "SESSION")
        )
        headers: dict[str, str] = {}
        anyio.run(signer.sign, "GET", emulator.url + "/x", headers)
        assert signing.parse_authorization(headers["authorization"])["keyId"].startswith("ST$")
        assert 200 == anyio.run(list_one, emulator, signer)

    def test_sdk_signer_path(self, emulator: EmulatorServer) -> None:
        """An SDK signer, called through its public path in a worker thread, signs valid requests."""
        assert emulator.config_file is not None
        sdk = oci.signer.Signer.from_config(oci.config.from_file(str(emulator.config_file)))
        assert 200 == anyio.run(list_one, emulator, auth.SdkSigner(sdk, "test"))

    @pytest.mark.parametrize("mode", ["instance_principal", "resource_principal"])
    def test_principals_without_the_extra(self, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
        """Without the oci extra, principals are a config error that names the extra."""
        monkeypatch.setitem(sys.modules, "oci.auth", None)
        with pytest.raises(ConfigError) as info:
            auth.make_signer(mode, None)
        assert "oci.auth" == info.value.key
        assert "oci-images-connector[oci]" in str(info.value)


class TestRegistry:
    def test_principal_type_is_the_registry(self) -> None:
        """``Credentials.from_principal``'s type names exactly the modes without a profile."""
        principals = [m.name for m in auth.MODES.values() if not m.uses_profile]
        assert principals == list(get_args(auth.Principal))

    def test_every_mode_builds_one_kind_of_signer(self) -> None:
        """Each mode reads a profile or asks the SDK (and names its extra), never both."""
        for mode in auth.MODES.values():
            assert (mode.from_profile is None) != (mode.from_sdk is None), mode.name
            assert bool(mode.extra) == (mode.from_sdk is not None), mode.name

    def test_the_key_documents_every_mode(self) -> None:
        """oci.auth's help (the README's table) names each mode, and the extra principals need;
        its default is a mode."""
        spec = config.KEYS["oci"]["auth"]
        assert spec.default in auth.MODES
        for mode in auth.MODES.values():
            assert mode.name in spec.help
            assert not mode.extra or f"[{mode.extra}] extra" in spec.help

    def test_unknown_mode_is_refused_with_the_modes(self) -> None:
        """oci.auth is checked against the registry: the modes are listed, a near miss named."""
        settings = config.load(values={"oci": {"auth": "api-key"}})
        with pytest.raises(ConfigError) as info:
            validation.check(settings)
        assert "oci.auth" == info.value.key
        assert "did you mean 'api_key'" in info.value.reason
        for mode in auth.MODES.values():
            assert f"{mode.name} ({mode.description}" in info.value.reason

    def test_a_profile_mode_without_a_profile(self) -> None:
        """A mode that signs with a profile, given none, says so on oci.profile."""
        with pytest.raises(ConfigError) as info:
            auth.make_signer("security_token", None)
        assert "oci.profile" == info.value.key


async def list_one(server: EmulatorServer, signer: auth.RequestSigner) -> int:
    async with OciClient(signer) as client:
        response = await client.get(
            server.url + "/20160918/images", {"compartmentId": server.world.tenancy_id, "limit": 1}
        )
        return response.status


def test_http_date_format() -> None:
    """The date header is RFC 7231, GMT, as the SDK sends it."""
    assert formatdate(0, usegmt=True) == signing.http_date(0)
