"""The normalizer: pure, bytes in, record batch and rejects out."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from connector import schema
from connector.pages import Page, PageError, RunInfo
from connector.workers.normalize import decode_defined_tags, normalize_page, normalize_records
from tests import reference

RUN = RunInfo("run-1", date(2026, 11, 27))
FETCHED = datetime(2026, 11, 27, 1, 2, 3, 456789, tzinfo=UTC)


def page_of(records: list[Any]) -> Page:
    return Page(
        orjson.dumps(records), "us-ashburn-1", "ocid1.compartment.oc1..aaaa", 3, FETCHED, "req-1"
    )


def image(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": "ocid1.image.oc1.iad.aaaa1",
        "compartmentId": "ocid1.compartment.oc1..aaaa",
        "displayName": "web ñandú\t\u0007",
        "operatingSystem": "Oracle Linux",
        "operatingSystemVersion": "9",
        "lifecycleState": "AVAILABLE",
        "createImageAllowed": True,
        "sizeInMBs": 2**40,
        "billableSizeInGBs": 3,
        "timeCreated": "2024-01-26T21:10:29.600Z",
        "launchMode": "NATIVE",
        "launchOptions": {"firmware": "UEFI_64", "isPvEncryptionInTransitEnabled": False},
        "agentFeatures": {"isManagementSupported": True, "isMonitoringSupported": False},
        "imageVolumeDetails": {
            "dataVolumes": [{"displayName": "d1", "index": 1, "sizeInMBs": 2**33}]
        },
        "definedTags": {"Operations": {"CostCenter": "42"}},
        "freeformTags": {"env": "prod"},
    }
    record.update(overrides)
    return record


def rows(records: list[Any]) -> list[dict[str, Any]]:
    result = normalize_page(page_of(records), RUN)
    assert schema.SCHEMA == result.batch.schema
    return result.batch.to_pylist(maps_as_pydicts="strict")


class TestConversion:
    def test_every_column(self) -> None:
        """A full record lands in every column, nested fields flattened, tags as maps."""
        [row] = rows([image()])
        assert "ocid1.image.oc1.iad.aaaa1" == row["id"]
        assert "web ñandú\t\u0007" == row["display_name"]
        assert 2**40 == row["size_in_mbs"]
        assert datetime(2024, 1, 26, 21, 10, 29, 600000, tzinfo=UTC) == row["time_created"]
        assert "UEFI_64" == row["launch_options__firmware"]
        assert row["launch_options__is_pv_encryption_in_transit_enabled"] is False
        assert row["launch_options__network_type"] is None
        assert row["agent_features__is_monitoring_supported"] is False
        assert [{"display_name": "d1", "index": 1, "size_in_mbs": 2**33}] == row[
            "image_volume_details__data_volumes"
        ]
        assert {"Operations": {"CostCenter": "42"}} == row["defined_tags"]
        assert {"env": "prod"} == row["freeform_tags"]
        assert ("us-ashburn-1", "ocid1.compartment.oc1..aaaa", False) == (
            row["region"],
            row["_source_compartment_id"],
            row["_is_platform"],
        )
        assert (date(2026, 11, 27), FETCHED, "run-1", None) == (
            row["snapshot_date"],
            row["_fetched_at"],
            row["_run_id"],
            row["_extra"],
        )

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2024-01-26T21:10:29Z", datetime(2024, 1, 26, 21, 10, 29, tzinfo=UTC)),
            ("2024-01-26T21:10:29.123456Z", datetime(2024, 1, 26, 21, 10, 29, 123456, tzinfo=UTC)),
            ("2024-01-26T23:10:29.5+02:00", datetime(2024, 1, 26, 21, 10, 29, 500000, tzinfo=UTC)),
            ("2024-01-26T16:10:29-05:00", datetime(2024, 1, 26, 21, 10, 29, tzinfo=UTC)),
            (
                "2024-01-26T21:10:29.123456789Z",
                datetime(2024, 1, 26, 21, 10, 29, 123456, tzinfo=UTC),
            ),
            ("2024-01-26T21:10:29.1234567Z", datetime(2024, 1, 26, 21, 10, 29, 123456, tzinfo=UTC)),
            (
                "2024-01-26T23:10:29.999999999+02:00",
                datetime(2024, 1, 26, 21, 10, 29, 999999, tzinfo=UTC),
            ),
            ("2024-01-26t21:10:29.5z", datetime(2024, 1, 26, 21, 10, 29, 500000, tzinfo=UTC)),
        ],
        ids=[
            "no-fraction",
            "micros",
            "plus-offset",
            "minus-offset",
            "nanos",
            "seven-digits",
            "nanos-offset",
            "lower-case",
        ],
    )
    def test_rfc3339_forms(self, text: str, expected: datetime) -> None:
        """Any RFC 3339 form becomes the same instant in UTC."""
        [row] = rows([image(timeCreated=text)])
        assert expected == row["time_created"]

    def test_platform_and_absent_keys(self) -> None:
        """Platform images (compartmentId null) are flagged; absent optional keys are null."""
        record = {
            k: v
            for k, v in image(compartmentId=None).items()
            if k not in ("launchOptions", "agentFeatures", "imageVolumeDetails", "definedTags")
        }
        [row] = rows([record])
        assert row["_is_platform"] is True
        assert row["launch_options__firmware"] is None
        assert row["image_volume_details__data_volumes"] is None
        assert row["defined_tags"] is None

    @pytest.mark.parametrize("compartment", [None, ""], ids=["oci-null", "pca-empty"])
    def test_platform_images_of_every_flavor(self, compartment: str | None) -> None:
        """compartmentId null (OCI) or "" (PCA) is a platform image with compartment_id null."""
        custom = image(id="ocid1.image.oc1.iad.custom")
        platform, mine = rows([image(compartmentId=compartment), custom])
        assert (None, True) == (platform["compartment_id"], platform["_is_platform"])
        assert ("ocid1.compartment.oc1..aaaa", False) == (
            mine["compartment_id"],
            mine["_is_platform"],
        )

    def test_nine_digit_fraction_in_a_page_of_three_digit_ones(self) -> None:
        """One precise timestamp does not reject its page's other rows or change them."""
        records = [
            image(id="ocid1.image.oc1.iad.a", timeCreated="2024-01-26T21:10:29.600Z"),
            image(id="ocid1.image.oc1.iad.b", timeCreated="2024-01-26T21:10:29.000000001Z"),
        ]
        result = normalize_page(page_of(records), RUN)
        assert [] == result.rejects
        assert [
            datetime(2024, 1, 26, 21, 10, 29, 600000, tzinfo=UTC),
            datetime(2024, 1, 26, 21, 10, 29, tzinfo=UTC),
        ] == result.batch.column("time_created").to_pylist()

    def test_unknown_enum_values_are_kept(self) -> None:
        """Values outside a documented enum are kept as sent."""
        [row] = rows(
            [
                image(
                    launchMode="QUANTUM",
                    lifecycleState="ARCHIVED",
                    launchOptions={"firmware": "UEFI_128"},
                )
            ]
        )
        assert ("QUANTUM", "ARCHIVED", "UEFI_128") == (
            row["launch_mode"],
            row["lifecycle_state"],
            row["launch_options__firmware"],
        )

    def test_unknown_fields_go_to_extra_verbatim(self) -> None:
        """Unknown fields, top-level and nested, are kept in _extra as JSON, values untouched."""
        record = image(systemTags={"orcl-cloud": {"free-tier-retained": "true"}}, futureFlag=1.50)
        record["launchOptions"]["newOption"] = [1, "two", None]
        plain = image(id="ocid1.image.oc1.iad.aaaa2")
        extra, none = rows([record, plain])
        assert {
            "systemTags": {"orcl-cloud": {"free-tier-retained": "true"}},
            "futureFlag": 1.5,
            "launchOptions": {"newOption": [1, "two", None]},
        } == orjson.loads(extra["_extra"])
        assert none["_extra"] is None


TAG_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
)
DEFINED_TAGS = st.dictionaries(
    st.text(min_size=1, max_size=6),
    st.none() | st.dictionaries(st.text(min_size=1, max_size=6), TAG_VALUES, max_size=4),
    max_size=3,
)


class TestDefinedTags:
    def test_values_of_every_json_type(self) -> None:
        """Strings stay strings, null stays null, the rest become JSON text and go to _extra."""
        tags = {
            "Operations": {"CostCenter": "42", "Budget": 42, "Ratio": 0.5, "Billable": True},
            "Meta": {"Owners": ["a", "b"], "Limits": {"cpu": 4}, "Empty": None, "Text": "true"},
        }
        [row] = rows([image(definedTags=tags)])
        assert {
            "Operations": {"CostCenter": "42", "Budget": "42", "Ratio": "0.5", "Billable": "true"},
            "Meta": {"Owners": '["a","b"]', "Limits": '{"cpu":4}', "Empty": None, "Text": "true"},
        } == row["defined_tags"]
        assert {
            "definedTags": {
                "Operations": {"Budget": 42, "Ratio": 0.5, "Billable": True},
                "Meta": {"Owners": ["a", "b"], "Limits": {"cpu": 4}},
            }
        } == orjson.loads(row["_extra"])
        assert tags == decode_defined_tags(row["defined_tags"], row["_extra"])

    def test_string_tags_leave_extra_empty(self) -> None:
        """The common case costs nothing: all-string tags leave _extra null."""
        [row] = rows([image(definedTags={"Operations": {"CostCenter": "42"}})])
        assert row["_extra"] is None

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(DEFINED_TAGS, min_size=1, max_size=4))
    def test_round_trip(self, all_tags: list[dict[str, Any]]) -> None:
        """Whatever JSON a tag value holds, the row gives it back exactly (none is rejected)."""
        records = [
            image(id=f"ocid1.image.oc1.iad.t{i}", definedTags=tags)
            for i, tags in enumerate(all_tags)
        ]
        records = orjson.loads(orjson.dumps(records))
        result = normalize_records(records, page_of([]), RUN)
        assert [] == result.rejects
        converted = result.batch.to_pylist(maps_as_pydicts="strict")
        assert [r["definedTags"] for r in records] == [
            decode_defined_tags(row["defined_tags"], row["_extra"]) for row in converted
        ]


class TestRejects:
    @pytest.mark.parametrize(
        ("record", "reason"),
        [
            (image(id=None), "no id"),
            ({k: v for k, v in image().items() if k != "id"}, "no id"),
            (image(id=""), "id is empty"),
            (image(sizeInMBs="47694 MB"), "cannot convert"),
            (image(createImageAllowed="yes"), "cannot convert"),
            (image(id=42), "cannot convert"),
            (image(launchOptions="fast"), "cannot convert"),
            (image(timeCreated="yesterday"), "timeCreated"),
            (image(timeCreated="2024-01-26T21:10:29"), "timeCreated"),
            ("not an object", "not an object"),
            (None, "not an object"),
            (image(sizeInMBs=1.5), "not an integer"),
            (image(launchOptions=[["firmware", "BIOS"]]), "launchOptions is not an object"),
            (image(agentFeatures=[]), "agentFeatures is not an object"),
            (image(freeformTags=[]), "freeformTags is not an object"),
            (image(definedTags={"Operations": []}), "namespace is not an object"),
            (image(definedTags=[]), "definedTags is not an object"),
            (image(imageVolumeDetails={"dataVolumes": [[]]}), "data volume is not an object"),
            (image(imageVolumeDetails={"dataVolumes": {}}), "dataVolumes is not an array"),
            (image(imageVolumeDetails={"dataVolumes": [{"index": 0.5}]}), "not an integer"),
        ],
        ids=[
            "null-id",
            "no-id",
            "empty-id",
            "size-text",
            "bool-text",
            "id-number",
            "nested-not-object",
            "bad-time",
            "naive-time",
            "string",
            "null",
            "size-fraction",
            "nested-pairs",
            "nested-empty-array",
            "tags-empty-array",
            "namespace-array",
            "tags-array",
            "volume-array",
            "volumes-object",
            "volume-index-fraction",
        ],
    )
    def test_bad_record_is_rejected_with_reason(self, record: Any, reason: str) -> None:
        """One bad record is rejected with its reason and original; its neighbours convert."""
        good = [image(id="ocid1.image.oc1.iad.good1"), image(id="ocid1.image.oc1.iad.good2")]
        result = normalize_page(page_of([good[0], record, good[1]]), RUN)
        assert ["ocid1.image.oc1.iad.good1", "ocid1.image.oc1.iad.good2"] == result.batch.column(
            "id"
        ).to_pylist()
        [reject] = result.rejects
        assert reason in reject.reason
        assert record == reject.record
        assert (3, "req-1") == (reject.page, reject.opc_request_id)
        assert record == orjson.loads(reject.to_json())["record"]

    def test_integer_beyond_64_bits(self) -> None:
        """A number beyond 64 bits rejects its record, not the page.

        orjson reads it as a float (2.0**64), which no int64 column accepts.
        """
        good = orjson.dumps(image()).decode()
        huge = (
            orjson.dumps(image(id="ocid1.image.oc1.iad.big"))
            .decode()
            .replace('"sizeInMBs":1099511627776', '"sizeInMBs":18446744073709551616')
        )
        page = Page(f"[{good},{huge}]".encode(), "r", "c", 1, FETCHED, None)
        result = normalize_page(page, RUN)
        assert ["ocid1.image.oc1.iad.aaaa1"] == result.batch.column("id").to_pylist()
        assert 1 == len(result.rejects)
        assert 2.0**64 == result.rejects[0].record["sizeInMBs"]

    @pytest.mark.parametrize(
        "body", [b"{}", b'"x"', b"[1,", b"<html>"], ids=["object", "string", "truncated", "html"]
    )
    def test_page_that_is_not_an_array(self, body: bytes) -> None:
        """A page whose body is not a JSON array is a PageError, not a crash."""
        with pytest.raises(PageError):
            normalize_page(Page(body, "r", "c", 1, FETCHED, None), RUN)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    ["id", "compartmentId", "displayName", "sizeInMBs", "createImageAllowed", "timeCreated", "launchOptions", "agentFeatures",
     "imageVolumeDetails", "definedTags", "freeformTags", "lifecycleState", "mystery"]
)  # fmt: skip


class TestProperties:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(st.dictionaries(FIELDS.filter(lambda f: f != "id"), JSON, max_size=3), max_size=5)
    )
    @example([{"sizeInMBs": 0.5}, {"launchOptions": [["firmware", "BIOS"]]}, {"definedTags": {}}])
    def test_converted_rows_are_faithful(self, changes: list[dict[str, Any]]) -> None:
        """A record that converts is converted exactly: its row equals the independent
        reference's mapping of it. pyarrow alone would accept a list of pairs as an object or
        truncate 1.5 to 1; such records must be rejected, not reinterpreted."""
        records = [image(**c, id=f"ocid1.image.oc1.iad.h{i}") for i, c in enumerate(changes)]
        try:  # records as a page can carry them (orjson reads integers beyond 64 bits as floats)
            records = orjson.loads(orjson.dumps(records))
        except orjson.JSONEncodeError:
            assume(False)
        result = normalize_records(records, page_of([]), RUN)
        converted = {r["id"]: r for r in result.batch.to_pylist(maps_as_pydicts="strict")}
        assert len(records) == len(converted) + len(result.rejects)
        for record in records:
            if record["id"] in converted:
                expected = reference.expected_row(
                    record, "us-ashburn-1", page_of([]).compartment_id
                )
                actual = reference.normalise_actual(converted[record["id"]], "every")
                assert reference.multiset([expected]) == reference.multiset([actual])

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.one_of(
                JSON,
                st.dictionaries(FIELDS, JSON, max_size=6),
                st.builds(lambda o: image(**o), st.dictionaries(FIELDS, JSON, max_size=2)),
            ),
            max_size=6,
        )
    )
    def test_every_record_is_converted_or_rejected(self, records: list[Any]) -> None:
        """On arbitrary JSON, each record becomes a row or a reject with a reason; none is lost."""
        result = normalize_records(records, page_of([]), RUN)
        assert len(records) == result.batch.num_rows + len(result.rejects)
        assert all(r.reason for r in result.rejects)
        assert result.batch.column("id").null_count == 0
        assert schema.SCHEMA == result.batch.schema


def test_schema_drives_the_wire_type() -> None:
    """Every API column's path exists in the nested type that JSON converts into."""
    for column in schema.API_COLUMNS:
        field: Any = schema.IMAGE_WIRE_TYPE
        for part in column.path:
            field = field.field(part).type
        assert column.input_type == field
    assert isinstance(schema.IMAGE_WIRE_TYPE, pa.StructType)


def test_unknown_field_beyond_64_bits_is_kept() -> None:
    """Records from any parser: an unknown integer beyond 64 bits lands in _extra exactly."""
    import json

    result = normalize_records([image(mystery=2**64 + 1)], page_of([]), RUN)
    assert [] == result.rejects
    assert {"mystery": 2**64 + 1} == json.loads(result.batch.column("_extra")[0].as_py())


class TestPlatformPreScan:
    def test_platform_records_are_recognised_before_conversion(self) -> None:
        """compartmentId null, "" (a Private Cloud Appliance) or absent marks a platform image;
        everything else, malformed records included, goes on to conversion."""
        from connector.workers.normalize import custom_records

        custom = image(id="ocid1.image.oc1.iad.custom")
        absent = {k: v for k, v in image(id="ocid1.image.oc1.iad.absent").items()}
        del absent["compartmentId"]
        malformed = [7, image(id="ocid1.image.oc1.iad.zero", compartmentId=0)]
        records = [
            image(id="ocid1.image.oc1.iad.null", compartmentId=None),
            custom,
            image(id="ocid1.image.oc1.iad.pca", compartmentId=""),
            absent,
            *malformed,
        ]
        assert [custom, *malformed] == custom_records(records)
        assert [custom] == custom_records(records[:4])
        assert [] == custom_records(records[:1])
        unhashable = image(compartmentId={"not": "a string"})
        assert [unhashable] == custom_records([unhashable, records[0]])

    def test_custom_rows_are_the_same_without_platform_images(self) -> None:
        """Leaving platform images out changes nothing else: the custom rows, their ids and the
        rejects are those of the full conversion."""
        records: list[Any] = [
            image(id=f"ocid1.image.oc1.iad.p{n}", compartmentId=None) for n in range(5)
        ]
        records += [image(id=f"ocid1.image.oc1.iad.c{n}") for n in range(3)]
        records += [image(id="ocid1.image.oc1.iad.bad", sizeInMBs="big"), "not an object"]
        full = normalize_page(page_of(records), RUN)
        lean = normalize_page(page_of(records), RUN, platform=False)
        is_custom = [not p for p in full.batch.column("_is_platform").to_pylist()]
        assert full.batch.filter(pa.array(is_custom)).to_pylist() == lean.batch.to_pylist()
        assert [i for i, keep in zip(full.ids, is_custom, strict=True) if keep] == lean.ids
        assert [r.reason for r in full.rejects] == [r.reason for r in lean.rejects]
        assert 2 == len(lean.rejects)

    def test_a_page_that_is_not_json_still_fails(self) -> None:
        """Skipping platform images does not skip parsing: a broken page is still an error."""
        body = orjson.dumps([image(compartmentId=None)])[:-5]
        page = Page(body, "us-ashburn-1", "ocid1.compartment.oc1..aaaa", 1, FETCHED, None)
        with pytest.raises(PageError):
            normalize_page(page, RUN, platform=False)
