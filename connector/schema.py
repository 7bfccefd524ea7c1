"""The output schema, defined once.

``COLUMNS`` is the single source of truth: the normalizer derives from it the nested Arrow type
that JSON records are converted into and the flattening into output columns; the ``schema``
command, the README's column table and the tests all read it too.

Naming follows the data-lake conventions of tools such as dlt: snake_case, nested fields
flattened to ``parent__child``, load metadata in columns that start with ``_``, except the
partition columns ``snapshot_date`` and ``region``: one name each, in plain files (where they
are the folder names, not columns inside the files) and in tables alike.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from connector import names

UTC_MICROS = pa.timestamp("us", tz="UTC")

DATA_VOLUME = pa.struct(
    [
        pa.field("display_name", pa.string()),
        pa.field("index", pa.int32()),
        pa.field("size_in_mbs", pa.int64()),
    ]
)
# The same layout under the API's names: records convert into this, then are viewed as above.
DATA_VOLUME_WIRE = pa.struct(
    [
        pa.field("displayName", pa.string()),
        pa.field("index", pa.int32()),
        pa.field("sizeInMBs", pa.int64()),
    ]
)


@dataclass(frozen=True, slots=True)
class Column:
    """One output column: its name, Arrow type, where it comes from and what it means."""

    name: str
    type: pa.DataType
    source: str
    description: str
    nullable: bool = True
    wire_type: pa.DataType | None = None
    partition: bool = False
    """A partition column: in a folder name of plain files (``snapshot_date=D/``), not in the
    files themselves; a partition field of a table."""

    @property
    def is_metadata(self) -> bool:
        """Load metadata (``region``, ``_run_id`` ...) rather than a field of the API record."""
        return self.partition or self.name.startswith("_")

    @property
    def path(self) -> tuple[str, ...]:
        """The API field path, e.g. ``("launchOptions", "firmware")``."""
        return tuple(self.source.split(".")) if not self.is_metadata else ()

    @property
    def input_type(self) -> pa.DataType:
        """The type a JSON value converts into before any post-processing."""
        return self.wire_type or self.type


def _api(name: str, type_: pa.DataType, source: str, description: str, **kw: Any) -> Column:
    return Column(name, type_, source, description, **kw)


S, B, I64 = pa.string(), pa.bool_(), pa.int64()

COLUMNS: tuple[Column, ...] = (
    _api("id", S, "id", "The image OCID.", nullable=False),
    _api("compartment_id", S, "compartmentId", "Compartment holding the image; null for platform images (sent as null, or \"\" by a Private Cloud Appliance)."),
    _api("display_name", S, "displayName", "User-friendly name; not unique."),
    _api("operating_system", S, "operatingSystem", "Operating system, e.g. Oracle Linux."),
    _api("operating_system_version", S, "operatingSystemVersion", "Operating system version, e.g. 9."),
    _api("lifecycle_state", S, "lifecycleState", "PROVISIONING, IMPORTING, AVAILABLE, EXPORTING, DISABLED, DELETED (kept as sent)."),
    _api("launch_mode", S, "launchMode", "NATIVE, EMULATED, PARAVIRTUALIZED, VDPA, CUSTOM (kept as sent)."),
    _api("listing_type", S, "listingType", "COMMUNITY or NONE (kept as sent)."),
    _api("base_image_id", S, "baseImageId", "OCID of the image this one was created from."),
    _api("create_image_allowed", B, "createImageAllowed", "Whether instances from this image can be imaged again."),
    _api("size_in_mbs", I64, "sizeInMBs", "Boot volume size for instances launched from it, in MB."),
    _api("billable_size_in_gbs", I64, "billableSizeInGBs", "Billable internal storage, in GB."),
    _api("time_created", UTC_MICROS, "timeCreated", "Creation time (RFC 3339 in the API), in UTC; finer fractions (up to nanoseconds) are truncated to microseconds.", wire_type=S),
    _api("agent_features__is_management_supported", B, "agentFeatures.isManagementSupported", "Oracle Cloud Agent management support."),
    _api("agent_features__is_monitoring_supported", B, "agentFeatures.isMonitoringSupported", "Oracle Cloud Agent monitoring support."),
    _api("launch_options__boot_volume_type", S, "launchOptions.bootVolumeType", "Boot volume emulation type."),
    _api("launch_options__firmware", S, "launchOptions.firmware", "BIOS or UEFI_64 (kept as sent)."),
    _api("launch_options__network_type", S, "launchOptions.networkType", "NIC emulation type."),
    _api("launch_options__remote_data_volume_type", S, "launchOptions.remoteDataVolumeType", "Remote data volume emulation type."),
    _api("launch_options__is_consistent_volume_naming_enabled", B, "launchOptions.isConsistentVolumeNamingEnabled", "Consistent volume naming."),
    _api("launch_options__is_encryption_in_transit_enabled", B, "launchOptions.isEncryptionInTransitEnabled", "In-transit encryption for data volume attachments."),
    _api("launch_options__is_pv_encryption_in_transit_enabled", B, "launchOptions.isPvEncryptionInTransitEnabled", "Deprecated PV in-transit encryption flag."),
    _api(
        "image_volume_details__data_volumes",
        pa.list_(DATA_VOLUME),
        "imageVolumeDetails.dataVolumes",
        "Data volumes created with instances of this image.",
        wire_type=pa.list_(DATA_VOLUME_WIRE),
    ),
    _api("defined_tags", pa.map_(S, pa.map_(S, S)), "definedTags", "Defined tags: namespace → key → value. A string value as is; null as null; any other JSON value (number, boolean, object, array) as its compact JSON text, and verbatim under `definedTags` in `_extra`."),
    _api("freeform_tags", pa.map_(S, S), "freeformTags", "Free-form tags: key → value."),
    Column("region", S, "", "The region queried (a partition column: the folder `region=R` in plain files).", nullable=False, partition=True),
    Column("_source_compartment_id", S, "", "The compartment whose listing returned the row.", nullable=False),
    Column("_is_platform", B, "", "True for platform images (compartmentId null or \"\").", nullable=False),
    Column("_tenancy_id", S, "", "The tenancy exported; null only when neither scope.tenancy nor the credentials name one."),
    Column("snapshot_date", pa.date32(), "", "The run's snapshot date (a partition column: the folder `snapshot_date=D` in plain files).", nullable=False, partition=True),
    Column("_fetched_at", UTC_MICROS, "", "When the page holding the row arrived.", nullable=False),
    Column("_run_id", S, "", "The run that wrote the row.", nullable=False),
    Column("_extra", S, "", "Fields the schema does not know, verbatim as a JSON object (and defined-tag values that are not strings, under `definedTags`); null when none."),
)  # fmt: skip

SCHEMA = pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in COLUMNS])
"""Every column of ``images``: the rows the normalizer makes, and a table's schema."""
FILE_SCHEMA = pa.schema([field for field in SCHEMA if field.name not in names.PARTITION_COLUMNS])
"""What a plain ``images`` file holds: ``SCHEMA`` without the partition columns, which are the
folder names (``snapshot_date=D/region=R/``); one name per fact for a Hive-aware reader."""
API_COLUMNS = tuple(c for c in COLUMNS if not c.is_metadata)


def _wire_type() -> pa.StructType:
    """The nested Arrow type of an API Image record, built from the columns' paths."""
    top: dict[str, Any] = {}
    for column in API_COLUMNS:
        head, *rest = column.path
        if rest:
            top.setdefault(head, {})[rest[0]] = column.input_type
        else:
            top[head] = column.input_type
    fields = [
        pa.field(name, pa.struct(list(value.items())) if isinstance(value, dict) else value)
        for name, value in top.items()
    ]
    return pa.struct(fields)


IMAGE_WIRE_TYPE = _wire_type()
KNOWN_FIELDS: frozenset[str] = frozenset(f.name for f in IMAGE_WIRE_TYPE)
KNOWN_NESTED: dict[str, frozenset[str]] = {
    f.name: frozenset(child.name for child in f.type)
    for f in IMAGE_WIRE_TYPE
    if pa.types.is_struct(f.type)
}


def fingerprint() -> str:
    """A stable digest of the output schema, recorded in every manifest."""
    text = orjson.dumps(describe(), option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(text).hexdigest()


def type_name(data_type: pa.DataType) -> str:
    """A readable name for an Arrow type, as the docs show it."""
    if data_type == UTC_MICROS:
        return "timestamp(us, UTC)"
    text = str(data_type)
    text = re.sub(r"<item: ", "<", text)
    text = re.sub(r"entries: struct<key: (\w+) not null, value: (.+?)>", r"\1, \2", text)
    text = text.replace("timestamp[us, tz=UTC]", "timestamp(us, UTC)").replace(
        "date32[day]", "date32"
    )
    return text


def describe(columns: tuple[Column, ...] = COLUMNS) -> list[dict[str, Any]]:
    """A dataset's schema (images by default) as JSON-ready records."""
    return [
        {
            "name": c.name,
            "type": type_name(c.type),
            "nullable": c.nullable,
            "source": c.source or None,
            "description": c.description,
        }
        for c in columns
    ]


def markdown_table(columns: tuple[Column, ...] = COLUMNS) -> str:
    """A dataset's column table (images by default), as the README embeds it."""
    lines = ["| column | type | from | description |", "|---|---|---|---|"]
    for c in columns:
        # Columns the connector computes (a compartment's path, a change's kind) are not load
        # metadata, which starts with "_".
        origin = f"`{c.source}`" if c.source else "metadata" if c.is_metadata else "derived"
        null = "" if c.nullable else ", not null"
        lines.append(f"| `{c.name}` | {type_name(c.type)}{null} | {origin} | {c.description} |")
    return "\n".join(lines)


def _schema_of(columns: tuple[Column, ...]) -> pa.Schema:
    """A companion dataset's file schema: its partition column (``snapshot_date``) is the
    folder name, not a column of the file."""
    return pa.schema(
        [
            pa.field(c.name, c.type, nullable=c.nullable, metadata={"description": c.description})
            for c in columns
            if not c.partition
        ]
    )


TAGS = pa.map_(S, pa.map_(S, S))

COMPARTMENT_COLUMNS: tuple[Column, ...] = (
    Column("id", S, "id", "The compartment OCID (the tenancy OCID for the root).", nullable=False),
    Column("name", S, "name", "The compartment's name; the tenancy's root is named root."),
    Column("description", S, "description", "Its description."),
    Column("parent_id", S, "compartmentId", "The parent compartment; null for the root."),
    Column("path", S, "", "Names from the root down, joined by /, e.g. root/Finance/Prod.", nullable=False),
    Column("depth", pa.int32(), "", "Levels below the root: 0 for the root, 1 for its children.", nullable=False),
    Column("lifecycle_state", S, "lifecycleState", "ACTIVE, ... (kept as sent)."),
    Column("time_created", UTC_MICROS, "timeCreated", "Creation time, in UTC."),
    Column("defined_tags", TAGS, "definedTags", "Defined tags, as images carry them."),
    Column("freeform_tags", pa.map_(S, S), "freeformTags", "Free-form tags."),
    Column("_exported", B, "", "Whether this run listed images in it.", nullable=False),
    Column("_excluded_reason", S, "", "Why not, when not: scope.exclude, an excluded ancestor, include_root = false, not listed."),
    Column("_tenancy_id", S, "", "The tenancy exported.", nullable=False),
    Column("snapshot_date", pa.date32(), "", "The run's snapshot date (a partition column: the folder `snapshot_date=D`).", nullable=False, partition=True),
    Column("_run_id", S, "", "The run that wrote the row.", nullable=False),
)  # fmt: skip
COMPARTMENTS_SCHEMA = _schema_of(COMPARTMENT_COLUMNS)

CHANGE_COLUMNS: tuple[Column, ...] = (
    Column("change", S, "", "added, removed, changed, or retired (a platform image that left the listings: Oracle published a newer build; custom images that leave are removed).", nullable=False),
    Column("region", S, "", "The image's region.", nullable=False),
    Column("id", S, "", "The image OCID.", nullable=False),
    Column("compartment_id", S, "", "Its compartment; null for platform images. Part of the key: a moved image is removed and added."),
    Column("display_name", S, "", "Its display name (the new one when it changed)."),
    Column("_is_platform", B, "", "Whether it is a platform image."),
    Column("changed_fields", pa.list_(S), "", "For changed: the columns whose value changed; empty otherwise."),
    Column("before", S, "", "For changed: the changed columns' previous values, a JSON object."),
    Column("after", S, "", "For changed: the changed columns' new values, a JSON object."),
    Column("_from_snapshot_date", pa.date32(), "", "The snapshot compared against; null when there was none."),
    Column("snapshot_date", pa.date32(), "", "The snapshot these changes lead to (a partition column: the folder `snapshot_date=D`).", nullable=False, partition=True),
    Column("_tenancy_id", S, "", "The tenancy exported."),
    Column("_run_id", S, "", "The run that computed the changes.", nullable=False),
)  # fmt: skip
CHANGES_SCHEMA = _schema_of(CHANGE_COLUMNS)

DATASETS: dict[str, tuple[Column, ...]] = dict(
    zip(names.DATASETS, (COLUMNS, COMPARTMENT_COLUMNS, CHANGE_COLUMNS), strict=True)
)
"""Every dataset the connector publishes, with its columns. The names are written once, in
``connector.names.DATASETS`` (images, compartments, changes: the columns follow that order)."""
