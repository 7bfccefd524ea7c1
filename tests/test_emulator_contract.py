"""Contract tests: the official OCI SDK, unmodified, against the emulator."""

from __future__ import annotations

from pathlib import Path

import oci
import pytest

from connector.emulator import EmulatorServer, World
from tests.conftest import sdk_config


def compute(server: EmulatorServer, region: str | None = None) -> oci.core.ComputeClient:
    endpoint = server.region_url(region) if region else server.url
    return oci.core.ComputeClient(sdk_config(server), service_endpoint=endpoint)


def identity(server: EmulatorServer) -> oci.identity.IdentityClient:
    return oci.identity.IdentityClient(sdk_config(server), service_endpoint=server.url)


class TestIdentity:
    def test_list_compartments_subtree_accessible(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """Subtree + ACCESSIBLE returns every accessible compartment below the root, any state."""
        result = oci.pagination.list_call_get_all_results(
            identity(emulator).list_compartments,
            small_world.tenancy_id,
            compartment_id_in_subtree=True,
            access_level="ACCESSIBLE",
            limit=5,
        )
        expected = {c.id for c in small_world.compartments[1:] if c.accessible}
        assert expected == {c.id for c in result.data}
        assert {"ACTIVE", "DELETED"} == {c.lifecycle_state for c in result.data}

    def test_list_compartments_active_any(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """accessLevel ANY includes inaccessible compartments; lifecycleState filters."""
        result = oci.pagination.list_call_get_all_results(
            identity(emulator).list_compartments,
            small_world.tenancy_id,
            compartment_id_in_subtree=True,
            access_level="ANY",
            lifecycle_state="ACTIVE",
        )
        expected = {c.id for c in small_world.compartments[1:] if c.lifecycle_state == "ACTIVE"}
        assert expected == {c.id for c in result.data}
        assert any(not c.is_accessible for c in result.data)

    def test_subtree_only_on_tenancy(self, emulator: EmulatorServer, small_world: World) -> None:
        """compartmentIdInSubtree on a non-root compartment is a 400 InvalidParameter."""
        child = small_world.listable_compartments()[1].id
        with pytest.raises(oci.exceptions.ServiceError) as info:
            identity(emulator).list_compartments(child, compartment_id_in_subtree=True)
        assert (info.value.status, info.value.code) == (400, "InvalidParameter")

    def test_region_subscriptions(self, emulator: EmulatorServer, small_world: World) -> None:
        """Every served region is READY; one more subscription is still IN_PROGRESS."""
        subs = identity(emulator).list_region_subscriptions(small_world.tenancy_id).data
        ready = [s.region_name for s in subs if s.status == "READY"]
        assert list(small_world.regions) == ready
        assert sum(s.status == "IN_PROGRESS" for s in subs) == 1
        assert [small_world.home_region] == [s.region_name for s in subs if s.is_home_region]


class TestListImages:
    @pytest.mark.parametrize("limit", [7, 100, 1000], ids=["limit7", "limit100", "limit1000"])
    def test_all_results_equal_ground_truth(
        self, emulator: EmulatorServer, small_world: World, limit: int
    ) -> None:
        """Paging with any page size yields exactly the listing, platform images first."""
        client = compute(emulator)
        for comp in small_world.listable_compartments()[:4]:
            result = oci.pagination.list_call_get_all_results(
                client.list_images, comp.id, limit=limit
            )
            truth = small_world.listing(small_world.home_region, comp.id)
            assert [img.id for img in truth] == [img.id for img in result.data]
            platform = len(small_world.platform[small_world.home_region])
            assert all(img.compartment_id is None for img in result.data[:platform])
            assert all(img.compartment_id == comp.id for img in result.data[platform:])

    def test_records_deserialize_field_by_field(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """The SDK's models carry the same values the emulator's ground truth holds."""
        comp = max(
            small_world.listable_compartments(),
            key=lambda c: len(small_world.custom.get((small_world.home_region, c.id), [])),
        )
        result = oci.pagination.list_call_get_all_results(
            compute(emulator).list_images, comp.id, limit=1000
        )
        records = [img.record() for img in small_world.listing(small_world.home_region, comp.id)]
        assert len(records) == len(result.data)
        for model, record in zip(result.data, records, strict=True):
            assert record["id"] == model.id
            assert record.get("displayName") == model.display_name
            assert record.get("sizeInMBs") == model.size_in_mbs
            assert record.get("definedTags") == model.defined_tags
            assert record.get("freeformTags") == model.freeform_tags
            firmware = (record.get("launchOptions") or {}).get("firmware")
            sdk_firmware = model.launch_options.firmware if model.launch_options else None
            # The SDK replaces values outside its enums; the emulator sends them as a service would.
            assert sdk_firmware == (
                firmware if firmware in (None, "BIOS", "UEFI_64") else "UNKNOWN_ENUM_VALUE"
            )

    def test_regions_are_separate(self, emulator: EmulatorServer, small_world: World) -> None:
        """A region prefix serves that region's images, whose OCIDs carry its code."""
        comp = small_world.tenancy_id
        client = compute(emulator, "eu-frankfurt-1")
        result = oci.pagination.list_call_get_all_results(client.list_images, comp, limit=1000)
        assert [i.id for i in small_world.listing("eu-frankfurt-1", comp)] == [
            i.id for i in result.data
        ]
        assert all(".fra." in i.id for i in result.data)

    def test_filters_and_sort(self, emulator: EmulatorServer, small_world: World) -> None:
        """Filters narrow the listing; sortBy DISPLAYNAME (the SDK's name for NAME) sorts each group."""
        client = compute(emulator)
        comp = small_world.tenancy_id
        result = oci.pagination.list_call_get_all_results(
            client.list_images,
            comp,
            operating_system="Oracle Linux",
            sort_by="DISPLAYNAME",
            sort_order="DESC",
            limit=3,
        )
        assert result.data
        assert {"Oracle Linux"} == {i.operating_system for i in result.data}
        platform = [i.display_name for i in result.data if i.compartment_id is None]
        assert sorted(platform, reverse=True) == platform
        available = oci.pagination.list_call_get_all_results(
            client.list_images, comp, lifecycle_state="AVAILABLE"
        )
        assert available.data
        assert {"AVAILABLE"} == {i.lifecycle_state for i in available.data}


class TestErrors:
    def test_400_has_code_and_request_id(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """An out-of-range limit is a ServiceError 400 InvalidParameter with a request id."""
        with pytest.raises(oci.exceptions.ServiceError) as info:
            compute(emulator).list_images(small_world.tenancy_id, limit=1001)
        assert (info.value.status, info.value.code) == (400, "InvalidParameter")
        assert info.value.request_id

    def test_401_for_unknown_key(
        self, emulator: EmulatorServer, small_world: World, tmp_path: object
    ) -> None:
        """A key the service does not know is 401 NotAuthenticated."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = stranger.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        config = sdk_config(emulator)
        signer = oci.signer.Signer(
            config["tenancy"], config["user"], "aa:bb", None, private_key_content=pem.decode()
        )
        client = oci.core.ComputeClient(config, signer=signer, service_endpoint=emulator.url)
        with pytest.raises(oci.exceptions.ServiceError) as info:
            client.list_images(small_world.tenancy_id)
        assert (info.value.status, info.value.code) == (401, "NotAuthenticated")
        assert info.value.request_id

    def test_404_for_unknown_compartment(self, emulator: EmulatorServer) -> None:
        """An unknown compartment is 404 NotAuthorizedOrNotFound."""
        with pytest.raises(oci.exceptions.ServiceError) as info:
            compute(emulator).list_images("ocid1.compartment.oc1..aaaaaaaanotthere")
        assert (info.value.status, info.value.code) == (404, "NotAuthorizedOrNotFound")
        assert info.value.request_id

    @pytest.mark.parametrize("state", ["DELETED", "hidden"])
    def test_404_for_deleted_and_inaccessible(
        self, emulator: EmulatorServer, small_world: World, state: str
    ) -> None:
        """Deleted and inaccessible compartments cannot be listed."""
        comp = next(
            c
            for c in small_world.compartments
            if (c.lifecycle_state == "DELETED" if state == "DELETED" else not c.accessible)
        )
        with pytest.raises(oci.exceptions.ServiceError) as info:
            compute(emulator).list_images(comp.id)
        assert info.value.status == 404


class TestSessionToken:
    def test_security_token_profile_signs(
        self, emulator: EmulatorServer, small_world: World
    ) -> None:
        """The SESSION profile's token, used by the SDK's SecurityTokenSigner, is accepted."""
        config = sdk_config(emulator, "SESSION")
        token = Path(config["security_token_file"]).read_text()
        key = oci.signer.load_private_key_from_file(config["key_file"])
        signer = oci.auth.signers.SecurityTokenSigner(token, key)
        client = oci.core.ComputeClient(
            {"region": config["region"]}, signer=signer, service_endpoint=emulator.url
        )
        assert client.list_images(small_world.tenancy_id, limit=1).data
