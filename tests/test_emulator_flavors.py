"""The emulator's flavors (commercial OCI and Private Cloud Appliance), Identity's
GetCompartment, and HTTPS with a private CA; the official SDK is the client wherever it can be."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import oci
import pytest
from oci._vendor import requests

from connector.emulator import EmulatorServer, World, build_world
from tests.conftest import PrivateCA, sdk_config, sdk_signer, signed_get

IMAGES = "/20160918/images"
FLAVOR_WORLD = {"seed": 21, "compartments": 8, "regions": ("us-ashburn-1",), "platform_images": 12}


def records(world: World) -> list[dict[str, Any]]:
    return [r for listing in world.truth() for r in listing["images"]]


@pytest.fixture(scope="module")
def pca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    world = build_world(**FLAVOR_WORLD, flavor="pca")  # type: ignore[arg-type]
    with EmulatorServer(world, oci_config_dir=tmp_path_factory.mktemp("pca")) as server:
        yield server


@pytest.fixture(scope="module")
def commercial(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    world = build_world(**FLAVOR_WORLD, flavor="oci")  # type: ignore[arg-type]
    with EmulatorServer(world, oci_config_dir=tmp_path_factory.mktemp("oci")) as server:
        yield server


def status(response: Any) -> tuple[int, str]:
    return response.status_code, response.json().get("code", "") if response.content else ""


class TestSortBy:
    @pytest.mark.parametrize(
        ("flavor", "sort_by", "expected"),
        [
            ("oci", "DISPLAYNAME", 200),
            ("oci", "TIMECREATED", 200),
            ("oci", "NAME", 400),
            ("pca", "NAME", 200),
            ("pca", "TIMECREATED", 200),
            ("pca", "DISPLAYNAME", 400),
        ],
        ids=["oci-displayname", "oci-timecreated", "oci-name", "pca-name", "pca-time", "pca-dn"],
    )
    def test_each_flavor_takes_its_own_spelling(
        self,
        commercial: EmulatorServer,
        pca: EmulatorServer,
        flavor: str,
        sort_by: str,
        expected: int,
    ) -> None:
        """OCI refuses NAME and PCA refuses DISPLAYNAME, with 400 InvalidParameter."""
        server = commercial if flavor == "oci" else pca
        query = {"compartmentId": server.world.tenancy_id, "sortBy": sort_by, "limit": "5"}
        response = signed_get(server, IMAGES, query)
        assert expected == response.status_code
        if expected == 400:
            assert (400, "InvalidParameter") == status(response)

    def test_sdk_sends_what_commercial_oci_accepts(self, commercial: EmulatorServer) -> None:
        """The official SDK itself refuses NAME before sending anything, and sends DISPLAYNAME."""
        client = oci.core.ComputeClient(sdk_config(commercial), service_endpoint=commercial.url)
        before = commercial.stats()["requests"]
        with pytest.raises(ValueError, match="sort_by"):
            client.list_images(commercial.world.tenancy_id, sort_by="NAME")
        assert before == commercial.stats()["requests"]
        assert client.list_images(commercial.world.tenancy_id, sort_by="DISPLAYNAME").data

    def test_pca_name_sort_orders_each_group(self, pca: EmulatorServer) -> None:
        """sortBy=NAME sorts platform and custom images each by display name."""
        comp = max(
            (
                c
                for c in pca.world.listable_compartments()
                if pca.world.custom.count("us-ashburn-1", c.id) < 900
            ),
            key=lambda c: pca.world.custom.count("us-ashburn-1", c.id),
        )
        query = {"compartmentId": comp.id, "sortBy": "NAME", "sortOrder": "DESC", "limit": "1000"}
        body = signed_get(pca, IMAGES, query).json()
        platform = [r["displayName"] for r in body if r["compartmentId"] == ""]
        custom = [r["displayName"] for r in body if r["compartmentId"] and r.get("displayName")]
        assert platform == sorted(platform, reverse=True)
        assert custom == sorted(custom, reverse=True)
        assert len(body) == len(pca.world.listing("us-ashburn-1", comp.id))


class TestRecords:
    def test_pca_platform_images_carry_an_empty_compartment(self, pca: EmulatorServer) -> None:
        """On PCA, platform images say compartmentId "" and the SDK reads that as ''."""
        result = pca.world.listing("us-ashburn-1", pca.world.tenancy_id)
        client = oci.core.ComputeClient(sdk_config(pca), service_endpoint=pca.url)
        images = oci.pagination.list_call_get_all_results(
            client.list_images, pca.world.tenancy_id, limit=50
        ).data
        platform = len(pca.world.platform["us-ashburn-1"])
        assert [i.id for i in result] == [i.id for i in images]
        assert {""} == {i.compartment_id for i in images[:platform]}
        assert {pca.world.tenancy_id} == {i.compartment_id for i in images[platform:]}

    def test_oci_platform_images_carry_null_or_nothing(self) -> None:
        """On OCI, a platform image's compartmentId is null, or absent now and then."""
        world = build_world(seed=3, compartments=2, platform_images=150, flavor="oci")
        platform = [i.record() for i in world.platform[world.home_region]]
        assert all(r.get("compartmentId") is None for r in platform)
        assert any("compartmentId" not in r for r in platform)

    @pytest.mark.parametrize("dataset", ["awkward", "realistic"])
    def test_enums_and_values_follow_the_flavor(self, dataset: str) -> None:
        """OCI: ACCELERATEDPV, and with oci_extras tag values of any JSON type and nine-digit
        fractions. PCA: VDPA, string tag values and millisecond times, extras or not."""
        common = {
            "seed": 4,
            "compartments": 40,
            "platform_images": 30,
            "dataset": dataset,
            "oci_extras": True,
        }
        by_flavor = {f: records(build_world(**common, flavor=f)) for f in ("oci", "pca")}  # type: ignore[arg-type]
        for flavor, rows in by_flavor.items():
            modes = {r.get("launchMode") for r in rows}
            networks = {(r.get("launchOptions") or {}).get("networkType") for r in rows}
            values = [
                v
                for r in rows
                for namespace in (r.get("definedTags") or {}).values()
                for v in namespace.values()
            ]
            fractions = {
                len(r["timeCreated"].split(".")[1].rstrip("Z").split("+")[0].split("-")[0])
                for r in rows
                if "." in r["timeCreated"]
            }
            if flavor == "oci":
                assert "ACCELERATEDPV" in modes
                assert "VDPA" not in modes
                assert "ACCELERATEDPV" in networks
                assert "VDPA" not in networks
                assert {int, bool} <= {type(v) for v in values}
                assert any(isinstance(v, dict) for v in values)
                assert 9 in fractions
            else:
                assert "VDPA" in modes
                assert "ACCELERATEDPV" not in modes
                assert "VDPA" in networks
                assert "ACCELERATEDPV" not in networks
                assert {str} == {type(v) for v in values}
                assert 9 not in fractions


class TestGetCompartment:
    def test_sdk_reads_every_compartment(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """GetCompartment returns the Identity record of the root and of any accessible one."""
        client = oci.identity.IdentityClient(sdk_config(emulator), service_endpoint=emulator.url)
        for comp in small_world.compartments:
            if not comp.accessible:
                continue
            response = client.get_compartment(comp.id)
            assert response.headers["etag"]
            got = response.data
            assert (comp.id, comp.parent_id, comp.name, comp.lifecycle_state) == (
                got.id,
                got.compartment_id,
                got.name,
                got.lifecycle_state,
            )

    @pytest.mark.parametrize("which", ["inaccessible", "unknown"])
    def test_404_for_hidden_and_unknown(
        self, emulator: EmulatorServer, small_world: World, which: str
    ) -> None:
        """A compartment the caller may not see, or that does not exist, is 404."""
        target = (
            next(c.id for c in small_world.compartments if not c.accessible)
            if which == "inaccessible"
            else "ocid1.compartment.oc1..aaaaaaaanothere"
        )
        client = oci.identity.IdentityClient(sdk_config(emulator), service_endpoint=emulator.url)
        with pytest.raises(oci.exceptions.ServiceError) as info:
            client.get_compartment(target)
        assert (404, "NotAuthorizedOrNotFound") == (info.value.status, info.value.code)


class TestTls:
    def test_https_with_a_private_ca(
        self, private_ca: PrivateCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With a certificate, the emulator serves HTTPS that verifies against its CA only."""
        # How a user points the SDK (requests) at a private CA.
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(private_ca.ca_file))
        world = build_world(seed=2, compartments=2)
        server = EmulatorServer(
            world,
            oci_config_dir=tmp_path / "oci",
            tls_cert=private_ca.cert_file,
            tls_key=private_ca.key_file,
        )
        with server:
            assert server.url.startswith("https://127.0.0.1:")
            client = oci.core.ComputeClient(sdk_config(server), service_endpoint=server.url)
            images = client.list_images(world.tenancy_id, limit=3).data
            assert [i.id for i in world.listing(world.home_region, world.tenancy_id)[:3]] == [
                i.id for i in images
            ]
            with pytest.raises(requests.exceptions.SSLError):
                requests.get(
                    server.url + IMAGES,
                    params={"compartmentId": world.tenancy_id},
                    auth=sdk_signer(server),
                    timeout=10,
                    verify=requests.certs.where(),
                )

    def test_certificate_and_key_go_together(self, private_ca: PrivateCA) -> None:
        """A certificate without its key is refused before anything is served."""
        with pytest.raises(ValueError, match="certificate and its private key"):
            EmulatorServer(build_world(seed=2, compartments=1), tls_cert=private_ca.cert_file)


def test_extras_are_opt_in() -> None:
    """Without oci_extras, every defined-tag value is a string and no time has nine digits."""
    world = build_world(seed=4, compartments=40, platform_images=30)
    rows = records(world)
    values = [v for r in rows for ns in (r.get("definedTags") or {}).values() for v in ns.values()]
    assert values
    assert all(isinstance(v, str) for v in values)
    assert not any(re.search(r"\.\d{9}", r["timeCreated"]) for r in rows)


def test_flavor_is_checked() -> None:
    """An unknown flavor or data set is a ValueError naming the choices."""
    with pytest.raises(ValueError, match="oci, pca"):
        build_world(flavor="azure")
    with pytest.raises(ValueError, match="realistic, awkward"):
        build_world(dataset="pretty")
