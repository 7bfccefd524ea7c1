"""Regions and realms: the connector's endpoints against the official SDK's clients, every region."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import oci
import orjson
import pytest

from connector.oci import (
    _region_table,
    regions,
)
from connector.oci.regions import Catalog, Region, UnknownRegion

ROOT = Path(__file__).resolve().parent.parent
DUMMY_CONFIG = {
    "tenancy": "ocid1.tenancy.oc1..aaaaaaaa",
    "user": "ocid1.user.oc1..aaaaaaaa",
    "fingerprint": "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff",
    "key_file": "unused.pem",
}
ENV_KNOBS = (
    regions.REGION_METADATA_ENV,
    regions.DEFAULT_REALM_ENV,
    regions.DUAL_STACK_ENV,
    regions.REALM_TEMPLATES_ENV,
)


@pytest.fixture
def fresh_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The SDK's region state reset (it is module-global and read once), HOME in tmp_path."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ENV_KNOBS:
        monkeypatch.delenv(name, raising=False)
    sdk = oci.regions
    for attr in ("REGIONS_SHORT_NAMES", "REGION_REALMS", "REALMS"):
        monkeypatch.setattr(sdk, attr, dict(getattr(sdk, attr)))
    monkeypatch.setattr(sdk, "REGIONS", list(sdk.REGIONS))
    monkeypatch.setattr(
        sdk,
        "_has_been_read_external_sources",
        {source: source is sdk.ExternalSources.IMDS for source in sdk.ExternalSources},
    )
    monkeypatch.setattr(sdk, "second_level_domain_fallback", "")
    return tmp_path


def sdk_endpoints(region: str) -> tuple[str, str]:
    """The URLs the SDK's Compute and Identity clients send to, without the API version."""
    config = {**DUMMY_CONFIG, "region": region}
    signer = oci.signer.AbstractBaseSigner()
    found = []
    for client in (
        oci.core.ComputeClient(config, signer=signer),
        oci.identity.IdentityClient(config, signer=signer),
    ):
        url: str = client.base_client.update_endpoint_template_for_options()
        assert url.endswith("/20160918")
        found.append(url.removesuffix("/20160918"))
    return found[0], found[1]


def ours(region: str) -> tuple[str, str]:
    resolved = Catalog.load().resolve(region)
    return regions.compute_endpoint(resolved), regions.identity_endpoint(resolved)


SDK_NAMES = sorted(oci.regions_definitions.REGIONS)
SDK_CODES = sorted(oci.regions_definitions.REGIONS_SHORT_NAMES)


class TestAgainstTheSdk:
    @pytest.mark.parametrize("region", SDK_NAMES)
    def test_every_region(self, fresh_sdk: Path, region: str) -> None:
        """Compute and Identity endpoints equal the SDK clients' for every region it knows."""
        assert sdk_endpoints(region) == ours(region)

    @pytest.mark.parametrize("code", SDK_CODES)
    def test_every_short_code(self, fresh_sdk: Path, code: str) -> None:
        """Short codes (iad) give the same endpoints as in the SDK, in either case."""
        assert sdk_endpoints(code) == ours(code)
        assert sdk_endpoints(code.upper()) == ours(code.upper())

    @pytest.mark.parametrize("region", SDK_NAMES)
    def test_every_region_dual_stack(
        self, fresh_sdk: Path, monkeypatch: pytest.MonkeyPatch, region: str
    ) -> None:
        """With OCI_DUAL_STACK_ENDPOINT_ENABLED=true the hosts still agree."""
        monkeypatch.setenv(regions.DUAL_STACK_ENV, "true")
        monkeypatch.setenv(regions.REALM_TEMPLATES_ENV, "true")
        assert sdk_endpoints(region) == ours(region)

    def test_table_is_current(self) -> None:
        """The generated table equals what the installed SDK yields (else: make regions)."""
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "update_regions.py"), "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert 0 == done.returncode, done.stderr
        assert oci.__version__ == _region_table.SDK_VERSION

    @pytest.mark.parametrize(
        ("region", "compute", "identity"),
        [
            ("us-langley-1", "https://iaas.us-langley-1.oraclegovcloud.com", "https://identity.us-langley-1.oci.oraclegovcloud.com"),
            ("eu-frankfurt-2", "https://iaas.eu-frankfurt-2.oraclecloud.eu", "https://identity.eu-frankfurt-2.oci.oraclecloud.eu"),
            ("eu-dcc-milan-1", "https://iaas.eu-dcc-milan-1.oraclecloud14.com", "https://identity.eu-dcc-milan-1.oci.oraclecloud14.com"),
            ("us-gov-ashburn-1", "https://iaas.us-gov-ashburn-1.oraclegovcloud.com", "https://identity.us-gov-ashburn-1.oci.oraclegovcloud.com"),
            ("iad", "https://iaas.us-ashburn-1.oraclecloud.com", "https://identity.us-ashburn-1.oci.oraclecloud.com"),
            ("pca.example.com", "https://iaas.pca.example.com", "https://identity.pca.example.com"),
        ],
    )  # fmt: skip
    def test_issue_examples(
        self, fresh_sdk: Path, region: str, compute: str, identity: str
    ) -> None:
        """The realms named in the issue, by hand, and the SDK agreeing."""
        assert (compute, identity) == ours(region)
        assert (compute, identity) == sdk_endpoints(region)


def metadata(region: str, key: str, realm: str, domain: str) -> dict[str, str]:
    return {
        "realmKey": realm,
        "realmDomainComponent": domain,
        "regionKey": key,
        "regionIdentifier": region,
    }


class TestRegionMetadata:
    def test_environment_variable(self, fresh_sdk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """OCI_REGION_METADATA adds a region and its short code, as in the SDK."""
        entry = metadata("xx-newcity-1", "XNC", "OC99", "oraclecloud99.example")
        monkeypatch.setenv(regions.REGION_METADATA_ENV, orjson.dumps(entry).decode())
        assert sdk_endpoints("xx-newcity-1") == ours("xx-newcity-1")
        assert ("https://iaas.xx-newcity-1.oraclecloud99.example",) == ours("xx-newcity-1")[:1]
        found = Catalog.load().resolve("xnc")
        assert (
            Region("xx-newcity-1", "oc99", "oraclecloud99.example", "OCI_REGION_METADATA") == found
        )

    def test_regions_config_file(self, fresh_sdk: Path) -> None:
        """~/.oci/regions-config.json (an array) adds regions; the SDK reads it the same way."""
        folder = fresh_sdk / ".oci"
        folder.mkdir()
        entries = [
            metadata("xx-first-1", "xfa", "oc98", "first.example"),
            metadata("xx-second-1", "xsb", "oc97", "second.example"),
            {"realmKey": "oc96", "regionIdentifier": "incomplete-1"},
        ]
        (folder / "regions-config.json").write_bytes(orjson.dumps(entries))
        for name in ("xx-first-1", "xx-second-1"):
            assert sdk_endpoints(name) == ours(name)
        assert "https://iaas.xx-second-1.second.example" == regions.compute_endpoint("xsb")

    def test_file_wins_over_variable_and_neither_overrides_the_table(
        self, fresh_sdk: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Entries never replace known regions; the file is read before the variable."""
        folder = fresh_sdk / ".oci"
        folder.mkdir()
        (folder / "regions-config.json").write_bytes(
            orjson.dumps(
                [
                    metadata("xx-both-1", "xbo", "oc95", "from-file.example"),
                    metadata("us-ashburn-1", "iad", "oc95", "hijack.example"),
                ]
            )
        )
        entry = metadata("xx-both-1", "xbo", "oc94", "from-env.example")
        monkeypatch.setenv(regions.REGION_METADATA_ENV, orjson.dumps(entry).decode())
        assert "https://iaas.xx-both-1.from-file.example" == regions.compute_endpoint("xx-both-1")
        assert sdk_endpoints("xx-both-1") == ours("xx-both-1")
        assert sdk_endpoints("us-ashburn-1") == ours("us-ashburn-1")

    def test_default_realm(self, fresh_sdk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """OCI_DEFAULT_REALM gives unknown, well-formed regions its domain, as in the SDK."""
        monkeypatch.setenv(regions.DEFAULT_REALM_ENV, "oraclecloud77.com")
        assert sdk_endpoints("xx-unlisted-1") == ours("xx-unlisted-1")

    def test_bad_metadata_is_named_in_the_error(
        self, fresh_sdk: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An unparsable source is why a region is unknown: the message says so."""
        monkeypatch.setenv(regions.REGION_METADATA_ENV, "{not json")
        with pytest.raises(UnknownRegion, match="OCI_REGION_METADATA is not valid JSON"):
            regions.resolve("xx-newcity-1")


class TestNames:
    @pytest.mark.parametrize("name", SDK_NAMES)
    def test_grammar_accepts_every_real_name(self, name: str) -> None:
        """Every region the SDK knows fits the grammar (us-gov-ashburn-1, eu-dcc-milan-1 ...)."""
        assert regions.REGION_NAME.match(name)

    @pytest.mark.parametrize(
        "name",
        ["us_ashburn_1", "us-ashburn", "ashburn-1", "US ASHBURN 1", "-1", "", "us-ashburn-1/x"],
    )
    def test_malformed_names_are_refused(self, fresh_sdk: Path, name: str) -> None:
        """A malformed name is refused with what a region name looks like."""
        with pytest.raises(UnknownRegion, match="not a region name"):
            regions.resolve(name)

    def test_unknown_region_is_refused_where_the_sdk_guesses_oc1(self, fresh_sdk: Path) -> None:
        """The SDK would send to oraclecloud.com; the connector names the region and the way out."""
        assert "https://iaas.us-ashburm-1.oraclecloud.com" == sdk_endpoints("us-ashburm-1")[0]
        with pytest.raises(UnknownRegion) as caught:
            regions.resolve("us-ashburm-1")
        message = str(caught.value)
        assert "'us-ashburm-1'" in message
        assert "did you mean 'us-ashburn-1'?" in message
        assert "OCI_REGION_METADATA" in message

    def test_unknown_short_code(self, fresh_sdk: Path) -> None:
        """A short code nobody defines is refused, not taken for a region."""
        with pytest.raises(UnknownRegion, match="'zzq'"):
            regions.resolve("zzq")

    def test_subscription_in_the_home_realm(self, fresh_sdk: Path) -> None:
        """A region newer than the table, learnt from the service, takes the home realm's domain."""
        home = regions.resolve("us-langley-1")
        found = regions.resolve("us-newplace-9", fallback_domain=home.domain)
        assert "https://iaas.us-newplace-9.oraclegovcloud.com" == regions.compute_endpoint(found)

    def test_case_and_spaces(self, fresh_sdk: Path) -> None:
        """Names are case-insensitive and trimmed, as the SDK lower-cases them."""
        assert "us-gov-ashburn-1" == regions.resolve(" RIC ").name

    def test_lookup_is_pure_given_an_environment(self, tmp_path: Path) -> None:
        """Catalog.load reads only what it is given (testable without touching HOME)."""
        entry: dict[str, Any] = metadata("xx-pure-1", "xpu", "oc93", "pure.example")
        catalog = Catalog.load(
            {regions.REGION_METADATA_ENV: orjson.dumps(entry).decode()},
            config_file=tmp_path / "absent.json",
        )
        assert "oc93" == catalog.resolve("xpu").realm
