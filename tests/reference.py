"""An independent reference for what the export must publish, built from the emulator's world.

It maps API records to output rows by hand (not through connector.schema's machinery), so
that end-to-end tests compare the connector against something it did not compute itself.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson

from connector.emulator import World

SCALARS = {
    "id": "id", "compartment_id": "compartmentId", "display_name": "displayName",
    "operating_system": "operatingSystem", "operating_system_version": "operatingSystemVersion",
    "lifecycle_state": "lifecycleState", "launch_mode": "launchMode", "listing_type": "listingType",
    "base_image_id": "baseImageId", "create_image_allowed": "createImageAllowed",
    "size_in_mbs": "sizeInMBs", "billable_size_in_gbs": "billableSizeInGBs",
    "freeform_tags": "freeformTags",
}  # fmt: skip
NESTED = {
    "agent_features__is_management_supported": ("agentFeatures", "isManagementSupported"),
    "agent_features__is_monitoring_supported": ("agentFeatures", "isMonitoringSupported"),
    "launch_options__boot_volume_type": ("launchOptions", "bootVolumeType"),
    "launch_options__firmware": ("launchOptions", "firmware"),
    "launch_options__network_type": ("launchOptions", "networkType"),
    "launch_options__remote_data_volume_type": ("launchOptions", "remoteDataVolumeType"),
    "launch_options__is_consistent_volume_naming_enabled": ("launchOptions", "isConsistentVolumeNamingEnabled"),
    "launch_options__is_encryption_in_transit_enabled": ("launchOptions", "isEncryptionInTransitEnabled"),
    "launch_options__is_pv_encryption_in_transit_enabled": ("launchOptions", "isPvEncryptionInTransitEnabled"),
}  # fmt: skip
KNOWN_TOP = set(SCALARS.values()) | {
    "definedTags",
    "timeCreated",
    "agentFeatures",
    "launchOptions",
    "imageVolumeDetails",
}
KNOWN_CHILD = {
    "agentFeatures": {"isManagementSupported", "isMonitoringSupported"},
    "launchOptions": {v[1] for v in NESTED.values() if v[0] == "launchOptions"},
    "imageVolumeDetails": {"dataVolumes"},
}


INTEGERS = ("size_in_mbs", "billable_size_in_gbs")


def _whole(value: Any) -> Any:
    """A JSON number without a fraction (``0.0``) is that integer in an integer column."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def expected_row(
    record: dict[str, Any], region: str, source: str | None, tenancy: str | None = None
) -> dict[str, Any]:
    """The output row for an API record (load-time metadata other than these left out)."""
    row: dict[str, Any] = {name: record.get(key) for name, key in SCALARS.items()}
    for name in INTEGERS:
        row[name] = _whole(row[name])
    # Platform images: compartmentId null (OCI) or "" (Private Cloud Appliance).
    row["compartment_id"] = record.get("compartmentId") or None
    for name, (parent, child) in NESTED.items():
        row[name] = (record.get(parent) or {}).get(child)
    created = record.get("timeCreated")
    # Python reads any number of fractional digits and drops those beyond microseconds.
    row["time_created"] = created and datetime.fromisoformat(created.upper()).astimezone(UTC)
    tags = record.get("definedTags")
    typed: dict[str, dict[str, Any]] = {}
    if tags is not None:
        row["defined_tags"] = {}
        for namespace, keys in tags.items():
            if keys is None:
                row["defined_tags"][namespace] = None
                continue
            row["defined_tags"][namespace] = {}
            for key, value in keys.items():
                if value is None or isinstance(value, str):
                    row["defined_tags"][namespace][key] = value
                else:
                    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
                    row["defined_tags"][namespace][key] = text
                    typed.setdefault(namespace, {})[key] = value
    else:
        row["defined_tags"] = None
    volumes = (record.get("imageVolumeDetails") or {}).get("dataVolumes")
    row["image_volume_details__data_volumes"] = (
        None
        if volumes is None
        else [
            {
                "display_name": v.get("displayName"),
                "index": _whole(v.get("index")),
                "size_in_mbs": _whole(v.get("sizeInMBs")),
            }
            for v in volumes
        ]
    )
    extra = {k: record[k] for k in record if k not in KNOWN_TOP}
    for parent, known in KNOWN_CHILD.items():
        nested = record.get(parent)
        if isinstance(nested, dict) and set(nested) - known:
            extra[parent] = {k: nested[k] for k in nested if k not in known}
    if typed:
        extra["definedTags"] = typed
    row["_extra"] = extra or None
    row["region"] = region
    row["_source_compartment_id"] = source
    row["_is_platform"] = record.get("compartmentId") in (None, "")
    row["_tenancy_id"] = tenancy
    return row


def expected_rows(
    world: World, platform: str, compartments: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every row an export of ``world`` must publish; platform rows' source is None under once."""
    listed = (
        compartments if compartments is not None else [c.id for c in world.listable_compartments()]
    )
    rows = []
    for region in world.regions:
        for comp in listed:
            for image in world.custom.get((region, comp), []):
                rows.append(expected_row(image.record(), region, comp, world.tenancy_id))
            if platform == "every":
                rows += [
                    expected_row(i.record(), region, comp, world.tenancy_id)
                    for i in world.platform[region]
                ]
        if platform == "once":
            rows += [
                expected_row(i.record(), region, None, world.tenancy_id)
                for i in world.platform[region]
            ]
    return rows


def normalise_actual(row: dict[str, Any], platform: str) -> dict[str, Any]:
    """An output row in the reference's shape (parsed _extra; source blanked as the reference does)."""
    result = {k: row[k] for k in row if k not in ("snapshot_date", "_fetched_at", "_run_id")}
    result["_extra"] = orjson.loads(row["_extra"]) if row.get("_extra") else None
    if platform == "once" and row["_is_platform"]:
        result["_source_compartment_id"] = None
    return result


def multiset(rows: list[dict[str, Any]]) -> Counter[bytes]:
    """Rows as a multiset, comparable regardless of order."""
    return Counter(
        orjson.dumps(r, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z, default=str) for r in rows
    )
