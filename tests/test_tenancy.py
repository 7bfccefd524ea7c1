"""Real tenancies: flavors, every realm's endpoints, endpoint sanity, least privilege.

The bad-configuration cases run the CLI as a user does: exit 2, the key named, and the
emulator (which counts requests) never hears from the connector.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector import config, validation
from connector.emulator import EmulatorServer, build_world
from connector.errors import ConfigError
from connector.oci.endpoints import Endpoints
from tests.helpers import WORLD, arrow_rows, manifest_of, run, write_config
from tests.reference import expected_rows, multiset, normalise_actual


def settings(**sections: dict[str, Any]) -> config.Settings:
    """Settings as ``connector.load_config`` makes them: loaded, then checked against the realm
    tables and the flavor (``connector.validation``)."""
    return validation.check(config.load(values=sections))


class TestFlavors:
    @pytest.mark.parametrize(
        ("flavor", "given", "sent"),
        [
            ("oci", "NAME", "DISPLAYNAME"),
            ("oci", "displayname", "DISPLAYNAME"),
            ("pca", "DISPLAYNAME", "NAME"),
            ("pca", "name", "NAME"),
            ("oci", "TIMECREATED", "TIMECREATED"),
            ("pca", "timecreated", "TIMECREATED"),
        ],
    )
    def test_sort_by_is_sent_as_the_flavor_spells_it(
        self, flavor: str, given: str, sent: str
    ) -> None:
        """TIMECREATED, DISPLAYNAME or NAME are accepted; by name goes out in the flavor's word."""
        chosen = settings(oci={"flavor": flavor}, filters={"sort_by": given})
        assert {"sortBy": sent} == chosen.filters.query_params(chosen.oci.flavor)

    def test_unknown_flavor(self) -> None:
        """Only oci and pca."""
        with pytest.raises(ConfigError, match=r"oci\.flavor"):
            settings(oci={"flavor": "azure"})

    @pytest.mark.parametrize(
        ("oci", "compute", "identity"),
        [
            (
                {"flavor": "pca", "endpoint": "https://iaas.pca.example.com"},
                "https://iaas.pca.example.com/20160918",
                "https://identity.pca.example.com/20160918",
            ),
            (
                {"flavor": "pca", "endpoint": "https://iaas.pca.example.com:8443"},
                "https://iaas.pca.example.com:8443/20160918",
                "https://identity.pca.example.com:8443/20160918",
            ),
            (
                {
                    "flavor": "pca",
                    "endpoint": "https://iaas.pca.example.com",
                    "identity_endpoint": "https://id.pca.example.com",
                },
                "https://iaas.pca.example.com/20160918",
                "https://id.pca.example.com/20160918",
            ),
            (
                {"flavor": "oci", "endpoint": "https://iaas.pca.example.com"},
                "https://iaas.pca.example.com/20160918",
                "https://iaas.pca.example.com/20160918",
            ),
            (
                {"flavor": "pca", "endpoint": "https://compute.pca.example.com"},
                "https://compute.pca.example.com/20160918",
                "https://compute.pca.example.com/20160918",
            ),
        ],
        ids=["pca", "pca-port", "pca-explicit-identity", "oci", "pca-not-iaas"],
    )
    def test_identity_endpoint_defaults(
        self, oci: dict[str, str], compute: str, identity: str
    ) -> None:
        """On a PCA reached at iaas.<domain>, Identity is identity.<domain>; else the endpoint."""
        endpoints = Endpoints.from_settings(settings(oci=oci).oci)
        assert (compute, identity) == (endpoints.compute("r"), endpoints.identity("r"))


class TestEveryRealm:
    @pytest.mark.parametrize(
        ("region", "compute", "identity"),
        [
            ("us-langley-1", "https://iaas.us-langley-1.oraclegovcloud.com", "https://identity.us-langley-1.oci.oraclegovcloud.com"),
            ("eu-frankfurt-2", "https://iaas.eu-frankfurt-2.oraclecloud.eu", "https://identity.eu-frankfurt-2.oci.oraclecloud.eu"),
            ("eu-dcc-milan-1", "https://iaas.eu-dcc-milan-1.oraclecloud14.com", "https://identity.eu-dcc-milan-1.oci.oraclecloud14.com"),
            ("us-gov-ashburn-1", "https://iaas.us-gov-ashburn-1.oraclegovcloud.com", "https://identity.us-gov-ashburn-1.oci.oraclegovcloud.com"),
        ],
    )  # fmt: skip
    def test_public_endpoints(self, region: str, compute: str, identity: str) -> None:
        """Without overrides the run's endpoints are the region's own, in its realm."""
        endpoints = Endpoints.from_settings(settings(oci={"regions": [region]}).oci)
        assert (compute + "/20160918", identity + "/20160918") == (
            endpoints.compute(region),
            endpoints.identity(region),
        )

    def test_short_codes_become_region_names(self) -> None:
        """oci.regions = ["iad", "RIC"] exports us-ashburn-1 and us-gov-ashburn-1."""
        chosen = settings(oci={"regions": ["iad", "RIC"]})
        assert ("us-ashburn-1", "us-gov-ashburn-1") == chosen.oci.regions

    def test_subscribed_region_newer_than_the_table_takes_the_home_realm(self) -> None:
        """A subscription the table does not know yet is served from the home region's realm."""
        endpoints = Endpoints.from_settings(settings().oci, home="us-langley-1")
        assert "https://iaas.us-newbase-7.oraclegovcloud.com/20160918" == endpoints.compute(
            "us-newbase-7"
        )

    @pytest.mark.parametrize("name", ["us_ashburn_1", "ashburn", "us-ashburn-"])
    def test_malformed_region(self, name: str) -> None:
        """Not a region name, short code or domain: the entry is named."""
        with pytest.raises(ConfigError, match=r"oci\.regions\[0\]"):
            settings(oci={"regions": [name]})

    def test_unknown_region_without_endpoint(self) -> None:
        """A well-formed region no table knows, with no endpoint to go to, is refused."""
        with pytest.raises(ConfigError, match=r"oci\.regions\[1\]: 'us-ashburm-1' is not a region"):
            settings(oci={"regions": ["us-ashburn-1", "us-ashburm-1"]})

    def test_new_region_from_region_metadata(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A dedicated region described in OCI_REGION_METADATA is known, with its short code."""
        monkeypatch.setenv(
            "OCI_REGION_METADATA",
            '{"realmKey": "oc99", "realmDomainComponent": "oraclecloud99.example", '
            '"regionKey": "xnc", "regionIdentifier": "xx-newcity-1"}',
        )
        chosen = settings(oci={"regions": ["XNC"]})
        assert ("xx-newcity-1",) == chosen.oci.regions
        endpoints = Endpoints.from_settings(chosen.oci)
        assert "https://iaas.xx-newcity-1.oraclecloud99.example/20160918" == endpoints.compute(
            "xx-newcity-1"
        )

    def test_unknown_region_with_endpoint_is_a_label(self) -> None:
        """With an endpoint override the region names a {region} substitution: accepted."""
        chosen = settings(oci={"regions": ["xx-lab-1"], "endpoint": "http://127.0.0.1:1/{region}"})
        assert ("xx-lab-1",) == chosen.oci.regions

    def test_pca_without_endpoint(self) -> None:
        """A Private Cloud Appliance has no public endpoint: say which key to set."""
        with pytest.raises(ConfigError, match=r"oci\.endpoint.*Private Cloud Appliance"):
            settings(oci={"flavor": "pca", "regions": ["us-ashburn-1"]})

    def test_pca_by_domain_needs_no_endpoint(self) -> None:
        """As with the SDK, a region given as the appliance's domain is its endpoint."""
        chosen = settings(oci={"flavor": "pca", "regions": ["pca.example.com"]})
        endpoints = Endpoints.from_settings(chosen.oci)
        assert "https://iaas.pca.example.com/20160918" == endpoints.compute("pca.example.com")
        assert "https://identity.pca.example.com/20160918" == endpoints.identity("pca.example.com")


class TestEndpointSanity:
    @pytest.mark.parametrize(
        "regions", [["us-ashburn-1", "eu-frankfurt-1"], ["subscribed"]], ids=["two", "subscribed"]
    )
    def test_endpoint_without_region_for_several_regions(self, regions: list[str]) -> None:
        """One host for several regions would label one region's images as the others'."""
        with pytest.raises(ConfigError, match=r"oci\.endpoint: has no \{region\}"):
            settings(oci={"regions": regions, "endpoint": "https://iaas.pca.example.com"})

    @pytest.mark.parametrize("regions", [["us-ashburn-1"], []], ids=["one", "profile's"])
    def test_endpoint_without_region_for_one_region(self, regions: list[str]) -> None:
        """Exactly one region (or the profile's): the endpoint serves it."""
        settings(oci={"regions": regions, "endpoint": "https://iaas.pca.example.com"})

    def test_excluding_the_tenancy_points_to_include_root(self) -> None:
        """scope.exclude = [tenancy] would drop everything: the message offers include_root."""
        tenancy = "ocid1.tenancy.oc1..aaaaaaaaexample"
        with pytest.raises(ConfigError, match=r"scope\.exclude.*scope\.include_root = false"):
            settings(scope={"tenancy": tenancy, "exclude": [tenancy]})


# -- as users run it -----------------------------------------------------------------------


@pytest.fixture
def tenancy_emulator(make_emulator: Callable[..., EmulatorServer]) -> EmulatorServer:
    return make_emulator(build_world(**WORLD))  # type: ignore[arg-type]


def write_profile(tmp_path: Path, server: EmulatorServer, region: str) -> Path:
    """A copy of the emulator's OCI config with another region in its DEFAULT profile."""
    assert server.config_file is not None
    lines = []
    for line in server.config_file.read_text().splitlines():
        if line.startswith("key_file"):
            key = line.split("=", 1)[1].strip()
            path = Path(key) if Path(key).is_absolute() else server.config_file.parent / key
            line = f"key_file = {path}"
        lines.append(f"region = {region}" if line.startswith("region") else line)
    target = tmp_path / "oci-config"
    target.write_text("\n".join(lines) + "\n")
    return target


@pytest.mark.parametrize(
    ("oci", "key", "words"),
    [
        ({"regions": ["us-ashburn-1", "eu-frankfurt-1"], "endpoint": "{plain}"}, "oci.endpoint", "has no {region}"),
        ({"regions": ["subscribed"], "endpoint": "{plain}"}, "oci.endpoint", "every subscribed region"),
        ({"regions": ["us-ashburm-1"], "endpoint": ""}, "oci.regions[0]", "us-ashburm-1"),
        ({"regions": [], "endpoint": "", "profile_region": "us-ashburm-1"}, "oci.profile", "us-ashburm-1"),
        ({"regions": [], "endpoint": "", "profile_region": "xyz"}, "oci.profile", "'xyz'"),
        ({"regions": ["us-ashburn-1"], "endpoint": "", "flavor": "pca"}, "oci.endpoint", "Private Cloud Appliance"),
        ({"regions": ["us-ashburn-1"], "flavor": "cloud"}, "oci.flavor", "oci, pca"),
    ],
    ids=["no-region-two", "no-region-subscribed", "unknown-region", "unknown-profile-region", "unknown-short-code", "pca-no-endpoint", "flavor"],
)  # fmt: skip
def test_bad_config_exits_2_before_any_request(
    tenancy_emulator: EmulatorServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    oci: dict[str, Any],
    key: str,
    words: str,
) -> None:
    """Exit 2, the key and the culprit named, and not one request sent."""
    values = dict(oci)
    if values.get("endpoint") == "{plain}":
        values["endpoint"] = tenancy_emulator.url
    profile_region = values.pop("profile_region", None)
    if profile_region is not None:
        values["config_file"] = str(write_profile(tmp_path, tenancy_emulator, profile_region))
    config_path = write_config(tmp_path, tenancy_emulator, oci=values)
    assert 2 == run(config_path)
    err = capsys.readouterr().err
    assert key in err
    assert words in err
    assert 0 == tenancy_emulator.stats()["requests"]


def test_endpoint_without_region_for_exactly_one_region(
    tenancy_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """oci.endpoint without {region} and one region: rows carry that region, and are exact."""
    world = tenancy_emulator.world
    config_path = write_config(
        tmp_path,
        tenancy_emulator,
        oci={"regions": [world.home_region], "endpoint": tenancy_emulator.url},
    )
    assert 0 == run(config_path)
    rows = arrow_rows(tmp_path)
    assert {world.home_region} == {r["region"] for r in rows}
    home_only = [r for r in expected_rows(world, "once") if r["region"] == world.home_region]
    assert multiset(home_only) == multiset([normalise_actual(r, "once") for r in rows])


def test_include_root_false_lists_the_tree_not_the_root(
    tenancy_emulator: EmulatorServer, tmp_path: Path
) -> None:
    """scope.include_root = false: every compartment below the root, none of the root's images."""
    world = tenancy_emulator.world
    config_path = write_config(tmp_path, tenancy_emulator, scope={"include_root": False})
    assert 0 == run(config_path)
    below = [c.id for c in world.listable_compartments() if c.id != world.tenancy_id]
    expected = multiset(expected_rows(world, "once", below))
    assert expected == multiset([normalise_actual(r, "once") for r in arrow_rows(tmp_path)])
    listed = {c["compartment_id"] for c in manifest_of(tmp_path)["compartments"]}
    assert set(below) == listed
