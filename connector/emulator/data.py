"""A deterministic, realistic tenancy for the emulator to serve.

Everything is derived from one seed, so a test can regenerate the ground truth the emulator
serves. Records are encoded to JSON once, at start-up: serving a page is a slice and a join,
which keeps the emulator far from being the bottleneck of any benchmark.

The data is deliberately awkward, as real tenancies are: names with non-ASCII and control
characters, optional keys that are absent or null, int64 sizes beyond 2**31, RFC 3339 times
with and without fractions or with offsets, and a small share of records carrying enum values
and fields that the published schema does not know.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

DEFAULT_REGIONS: tuple[str, ...] = ("us-ashburn-1",)

# Airport codes that OCI puts in regional OCIDs; unknown regions get a derived code.
_REGION_CODES = {
    "us-ashburn-1": "iad",
    "us-phoenix-1": "phx",
    "us-sanjose-1": "sjc",
    "us-chicago-1": "ord",
    "eu-frankfurt-1": "fra",
    "eu-amsterdam-1": "ams",
    "uk-london-1": "lhr",
    "ap-tokyo-1": "nrt",
    "ap-sydney-1": "syd",
    "ca-toronto-1": "yyz",
    "sa-saopaulo-1": "gru",
}

_B32 = string.ascii_lowercase + "234567"

_OS = (
    ("Oracle Linux", ("9", "8", "7.9")),
    ("Canonical Ubuntu", ("24.04", "22.04", "20.04")),
    ("Windows", ("Server 2022 Standard", "Server 2019 Standard")),
    ("CentOS", ("Stream 9", "Stream 8")),
    ("Oracle Autonomous Linux", ("9", "8")),
    ("Rocky Linux", ("9",)),
)
_PLATFORM_VARIANTS = ("", "-aarch64", "-GPU", "-Minimal", "-Minimal-aarch64")
_SHAPES_X86 = ("VM.Standard.E4.Flex", "VM.Standard.E5.Flex", "VM.Standard3.Flex", "BM.Standard3.64")
_SHAPES_ARM = ("VM.Standard.A1.Flex", "BM.Standard.A1.160")
_SHAPES_GPU = ("VM.GPU.A10.1", "BM.GPU.A100-v2.8", "VM.Standard.E4.Flex")
_LIFECYCLE_CUSTOM = (
    ("AVAILABLE", 0.93),
    ("PROVISIONING", 0.01),
    ("IMPORTING", 0.02),
    ("EXPORTING", 0.01),
    ("DISABLED", 0.02),
    ("DELETED", 0.01),
)
_NAME_WORDS = (
    "web",
    "api",
    "golden",
    "base",
    "db-proxy",
    "ñandú",
    "crème-brûlée",
    "データ",
    "Zürich",
    "build",
    "ci-runner",
    "hardened",
    "ΑΒΓ",
    "日本語",
)
# A share of records carries values the documented enums do not list; they must be kept.
_FUTURE_ENUMS = {
    "launchMode": "QUANTUM",
    "listingType": "PARTNER",
    "firmware": "UEFI_128",
    "networkType": "SRIOV_NEXT",
}


@dataclass(frozen=True, slots=True)
class Compartment:
    """One compartment of the tenancy tree."""

    id: str
    parent_id: str
    name: str
    lifecycle_state: str
    accessible: bool
    time_created: str
    depth: int

    def to_api(self) -> dict[str, Any]:
        """The Identity API's Compartment record."""
        return {
            "compartmentId": self.parent_id,
            "definedTags": {},
            "description": f"{self.name} workloads",
            "freeformTags": {},
            "id": self.id,
            "inactiveStatus": None,
            "isAccessible": self.accessible,
            "lifecycleState": self.lifecycle_state,
            "name": self.name,
            "timeCreated": self.time_created,
        }


@dataclass(frozen=True, slots=True)
class Image:
    """An image as served: its pre-encoded JSON and the keys the API filters and sorts on."""

    json: bytes
    id: str
    display_name: str | None
    operating_system: str
    operating_system_version: str
    lifecycle_state: str
    time_created: datetime
    shapes: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        """The decoded record, as a client receives it."""
        result: dict[str, Any] = orjson.loads(self.json)
        return result


@dataclass(frozen=True, slots=True)
class RegionSubscription:
    """A region the tenancy subscribes to."""

    region_key: str
    region_name: str
    status: str
    is_home_region: bool

    def to_api(self) -> dict[str, Any]:
        """The Identity API's RegionSubscription record."""
        return {
            "isHomeRegion": self.is_home_region,
            "regionKey": self.region_key,
            "regionName": self.region_name,
            "status": self.status,
        }


@dataclass(slots=True)
class World:
    """The whole fake tenancy: compartments, regions and the images in each listing."""

    seed: int
    tenancy_id: str
    regions: tuple[str, ...]
    compartments: list[Compartment]
    subscriptions: list[RegionSubscription]
    platform: dict[str, list[Image]] = field(default_factory=dict)
    custom: dict[tuple[str, str], list[Image]] = field(default_factory=dict)

    @property
    def home_region(self) -> str:
        """The region served at the root path."""
        return self.regions[0]

    def compartment(self, compartment_id: str) -> Compartment | None:
        """The compartment with this OCID, the root included."""
        return self._by_id().get(compartment_id)

    def _by_id(self) -> dict[str, Compartment]:
        return {c.id: c for c in self.compartments}

    def listable_compartments(self) -> list[Compartment]:
        """Compartments whose images a caller may list: ACTIVE and accessible, root first."""
        return [c for c in self.compartments if c.lifecycle_state == "ACTIVE" and c.accessible]

    def listing(self, region: str, compartment_id: str) -> list[Image]:
        """What ListImages returns for a compartment, unfiltered: platform images, then custom."""
        return self.platform[region] + self.custom.get((region, compartment_id), [])

    def truth(self) -> Iterator[dict[str, Any]]:
        """The ground truth, one dict per region's platform images and per custom listing.

        A platform line has ``compartment_id`` null: those images appear in every listable
        compartment's listing of that region, ahead of the compartment's custom images.
        """
        for region in self.regions:
            yield {
                "region": region,
                "compartment_id": None,
                "images": [img.record() for img in self.platform[region]],
            }
            for comp in self.listable_compartments():
                yield {
                    "region": region,
                    "compartment_id": comp.id,
                    "images": [img.record() for img in self.custom.get((region, comp.id), [])],
                }

    def counts(self) -> dict[str, int]:
        """Sizes that benchmarks and tests plan with."""
        comps = self.listable_compartments()
        custom = sum(len(v) for v in self.custom.values())
        platform = sum(len(v) for v in self.platform.values())
        return {
            "regions": len(self.regions),
            "compartments": len(comps),
            "platform_images": platform,
            "custom_images": custom,
            "listing_rows": platform * len(comps) + custom,
        }


def ocid(kind: str, rng: random.Random, region_code: str = "") -> str:
    """An OCID of the documented shape: ocid1.<kind>.oc1.<region>.<60 base32 chars>."""
    unique = "aaaaaaaa" + "".join(rng.choices(_B32, k=52))
    return f"ocid1.{kind}.oc1.{region_code}.{unique}"


def region_code(region: str) -> str:
    """The short code OCI uses for a region inside OCIDs."""
    if region in _REGION_CODES:
        return _REGION_CODES[region]
    letters = "".join(part[0] for part in region.split("-") if part and part[0].isalpha())
    return (letters + "xxx")[:3]


def _rfc3339(moment: datetime, rng: random.Random) -> str:
    """RFC 3339 as services and proxies emit it: millis + Z mostly; bare, micros, offsets."""
    style = rng.random()
    if style < 0.80:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if style < 0.90:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style < 0.96:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    offset = timedelta(hours=rng.choice((-7, 2, 5)), minutes=rng.choice((0, 30)))
    local = moment.astimezone(timezone(offset))
    return local.isoformat(timespec="milliseconds")


def _weighted(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    point = rng.random()
    for value, weight in table:
        point -= weight
        if point < 0:
            return value
    return table[-1][0]


def _awkward_name(rng: random.Random, serial: int) -> str:
    words = rng.sample(_NAME_WORDS, k=2)
    name = f"{words[0]}-{words[1]}-{serial}"
    roll = rng.random()
    if roll < 0.03:
        name += "\t\u0007ctl"
    elif roll < 0.06:
        name += ' "quoted" \\ back'
    elif roll < 0.08:
        name += " 🚀"
    return name


def _launch_options(rng: random.Random, arm: bool) -> dict[str, Any] | None:
    if rng.random() < 0.05:
        return None
    options: dict[str, Any] = {
        "bootVolumeType": rng.choice(("PARAVIRTUALIZED", "ISCSI", "SCSI", "NVME")),
        "firmware": "UEFI_64" if arm or rng.random() < 0.7 else "BIOS",
        "isConsistentVolumeNamingEnabled": rng.random() < 0.8,
        "isPvEncryptionInTransitEnabled": rng.random() < 0.5,
        "networkType": rng.choice(("PARAVIRTUALIZED", "VFIO", "E1000")),
        "remoteDataVolumeType": rng.choice(("PARAVIRTUALIZED", "ISCSI")),
    }
    if rng.random() < 0.7:
        options["isEncryptionInTransitEnabled"] = rng.random() < 0.5
    return options


def _image(
    rng: random.Random,
    *,
    image_id: str,
    compartment_id: str | None,
    display_name: str | None,
    os_name: str,
    os_version: str,
    lifecycle: str,
    created: datetime,
    shapes: tuple[str, ...],
    base_image_id: str | None,
    arm: bool,
) -> Image:
    record: dict[str, Any] = {
        "agentFeatures": None
        if rng.random() < 0.1
        else {"isManagementSupported": rng.random() < 0.5, "isMonitoringSupported": True},
        "baseImageId": base_image_id,
        "billableSizeInGBs": None if compartment_id is None else rng.randint(1, 400),
        "compartmentId": compartment_id,
        "createImageAllowed": rng.random() < 0.95,
        "definedTags": {},
        "displayName": display_name,
        "freeformTags": {},
        "id": image_id,
        "launchMode": rng.choice(("NATIVE", "PARAVIRTUALIZED", "EMULATED", "CUSTOM")),
        "launchOptions": _launch_options(rng, arm),
        "lifecycleState": lifecycle,
        "listingType": "NONE" if rng.random() < 0.9 else "COMMUNITY",
        "operatingSystem": os_name,
        "operatingSystemVersion": os_version,
        "sizeInMBs": rng.choice((47694, 51200, 102400, 262144)),
        "timeCreated": _rfc3339(created, rng),
    }
    roll = rng.random()
    if roll < 0.02:
        record["sizeInMBs"] = rng.randint(2**31, 2**40)  # beyond int32
        record["billableSizeInGBs"] = rng.randint(2**31, 2**33)
    elif roll < 0.04:
        record["sizeInMBs"] = None
    if compartment_id is not None:
        if rng.random() < 0.6:
            record["definedTags"] = {
                "Oracle-Tags": {
                    "CreatedBy": f"ocid1.user.oc1..aaaa{rng.randrange(16**6):06x}",
                    "CreatedOn": created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                }
            }
            if rng.random() < 0.3:
                record["definedTags"]["Operations"] = {"CostCenter": str(rng.randint(1, 99))}
        if rng.random() < 0.5:
            record["freeformTags"] = {"env": rng.choice(("prod", "dev", "ünïcode")), "team": "A&B"}
        if rng.random() < 0.08:
            record["imageVolumeDetails"] = {
                "dataVolumes": [
                    {
                        "displayName": None if i == 2 else f"data-{i}",
                        "index": i,
                        "sizeInMBs": rng.choice((51200, 1024000, 2**32 + i)),
                    }
                    for i in range(1, rng.randint(1, 4) + 1)
                ]
            }
    # Optional keys go missing, as a record from an older API version would be.
    if rng.random() < 0.05:
        for key in ("agentFeatures", "billableSizeInGBs", "launchOptions", "listingType"):
            record.pop(key, None)
    if display_name is None:
        record.pop("displayName")
    # A small share carries what the schema does not know: it must survive, verbatim.
    if rng.random() < 0.02:
        key = rng.choice(tuple(_FUTURE_ENUMS))
        if key in ("firmware", "networkType"):
            if record.get("launchOptions"):
                record["launchOptions"][key] = _FUTURE_ENUMS[key]
        else:
            record[key] = _FUTURE_ENUMS[key]
    if rng.random() < 0.02:
        record["systemTags"] = {"orcl-cloud": {"free-tier-retained": "true"}}
    if rng.random() < 0.01:
        record["futureFeature"] = {"enabled": True, "level": 3}
    return Image(
        json=orjson.dumps(record),
        id=image_id,
        display_name=display_name,
        operating_system=os_name,
        operating_system_version=os_version,
        lifecycle_state=lifecycle,
        time_created=created,
        shapes=shapes,
    )


def _platform_images(rng: random.Random, region: str, count: int) -> list[Image]:
    code = region_code(region)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    images: list[Image] = []
    serial = 0
    while len(images) < count:
        os_name, versions = _OS[serial % len(_OS)]
        version = versions[(serial // len(_OS)) % len(versions)]
        variant = _PLATFORM_VARIANTS[(serial // 17) % len(_PLATFORM_VARIANTS)]
        build = now - timedelta(days=serial * 3 + rng.randint(0, 2), seconds=rng.randint(0, 86399))
        stem = f"{os_name}-{version}".replace(" ", "-")
        name = f"{stem}{variant}-{build:%Y.%m.%d}-{serial % 3}"
        arm = "aarch64" in variant
        shapes = _SHAPES_ARM if arm else _SHAPES_GPU if "GPU" in variant else _SHAPES_X86
        images.append(
            _image(
                rng,
                image_id=ocid("image", rng, code),
                compartment_id=None,
                display_name=name,
                os_name=os_name,
                os_version=version,
                lifecycle="AVAILABLE",
                created=build,
                shapes=shapes,
                base_image_id=None,
                arm=arm,
            )
        )
        serial += 1
    # Recent platform images first, as the service lists them.
    images.sort(key=lambda img: img.time_created, reverse=True)
    return images


def _custom_count(rng: random.Random, scale: float) -> int:
    """Skewed: most compartments hold a few dozen images, a few need several 1000-row pages."""
    roll = rng.random()
    if roll < 0.88:
        base = rng.randint(0, 40)
    elif roll < 0.93:
        base = rng.randint(40, 900)
    else:
        base = rng.randint(1500, 7000)
    return int(base * scale)


def _corrupt(image: Image, rng: random.Random) -> Image:
    """A record as a buggy proxy or a future API version might send it."""
    record = image.record()
    kind = rng.choice(("no-id", "size-text", "bool-text", "bad-time"))
    if kind == "no-id":
        del record["id"]
    elif kind == "size-text":
        record["sizeInMBs"] = f"{record.get('sizeInMBs')} MB"
    elif kind == "bool-text":
        record["createImageAllowed"] = "yes"
    else:
        record["timeCreated"] = "yesterday at noon"
    fields = {f: getattr(image, f) for f in Image.__slots__ if f != "json"}
    return Image(json=orjson.dumps(record), **fields)


def _custom_images(
    rng: random.Random, region: str, comp: Compartment, count: int, bases: list[Image]
) -> list[Image]:
    code = region_code(region)
    images = []
    start = datetime(2019, 1, 1, tzinfo=UTC)
    for serial in range(count):
        base = rng.choice(bases)
        created = start + timedelta(
            seconds=rng.randint(0, 7 * 365 * 86400), microseconds=rng.randint(0, 999999)
        )
        images.append(
            _image(
                rng,
                image_id=ocid("image", rng, code),
                compartment_id=comp.id,
                display_name=None if rng.random() < 0.01 else _awkward_name(rng, serial),
                os_name=base.operating_system,
                os_version=base.operating_system_version,
                lifecycle=_weighted(rng, _LIFECYCLE_CUSTOM),
                created=created,
                shapes=base.shapes,
                base_image_id=base.id if rng.random() < 0.9 else None,
                arm="A1" in base.shapes[0],
            )
        )
    images.sort(key=lambda img: img.time_created)
    return images


def _compartments(rng: random.Random, tenancy_id: str, active: int) -> list[Compartment]:
    """The root plus ``active`` ACTIVE accessible compartments, and some DELETED/inaccessible."""
    root = Compartment(
        id=tenancy_id,
        parent_id=tenancy_id,
        name="root",
        lifecycle_state="ACTIVE",
        accessible=True,
        time_created="2019-01-01T00:00:00.000Z",
        depth=0,
    )
    deleted = max(1, active // 20) if active else 0
    hidden = max(1, active // 30) if active else 0
    kinds = ["active"] * active + ["deleted"] * deleted + ["hidden"] * hidden
    rng.shuffle(kinds)
    comps = [root]
    for serial, kind in enumerate(kinds):
        # Nest under an earlier compartment now and then, up to five levels deep.
        parent = root
        if serial and rng.random() < 0.5:
            parent = rng.choice(comps[max(1, len(comps) - 20) :])
            if parent.depth >= 5:
                parent = root
        comps.append(
            Compartment(
                id=ocid("compartment", rng),
                parent_id=parent.id,
                name=f"{parent.name}-c{serial}" if parent is not root else f"c{serial}",
                lifecycle_state="DELETED" if kind == "deleted" else "ACTIVE",
                accessible=kind != "hidden",
                time_created=f"2020-{1 + serial % 12:02d}-{1 + serial % 28:02d}T08:00:00.000Z",
                depth=parent.depth + 1,
            )
        )
    return comps


def build_world(
    *,
    seed: int = 42,
    compartments: int = 180,
    regions: tuple[str, ...] = DEFAULT_REGIONS,
    platform_images: int = 60,
    custom_scale: float = 1.0,
    bad_records: float = 0.0,
) -> World:
    """Generate the tenancy for ``seed``; the same arguments always give the same world.

    ``bad_records`` is the share of custom images sent malformed (no id, text where a number
    or boolean belongs, an unparseable time), for testing rejects end to end.
    """
    if not regions:
        raise ValueError("at least one region is needed")
    rng = random.Random(seed)
    tenancy_id = ocid("tenancy", rng)
    comps = _compartments(rng, tenancy_id, compartments)
    subscriptions = [
        RegionSubscription(region_code(r).upper(), r, "READY", i == 0)
        for i, r in enumerate(regions)
    ]
    # A subscription still being set up, as tenancies have; it must not be listed.
    pending = next(r for r in ("ca-toronto-1", "sa-saopaulo-1", "ap-sydney-1") if r not in regions)
    subscriptions.append(
        RegionSubscription(region_code(pending).upper(), pending, "IN_PROGRESS", False)
    )
    world = World(
        seed=seed,
        tenancy_id=tenancy_id,
        regions=tuple(regions),
        compartments=comps,
        subscriptions=subscriptions,
    )
    listable = world.listable_compartments()
    for region in regions:
        region_rng = random.Random(f"{seed}/{region}")
        world.platform[region] = _platform_images(region_rng, region, platform_images)
        bases = world.platform[region]
        for comp in listable:
            comp_rng = random.Random(f"{seed}/{region}/{comp.id}")
            count = _custom_count(comp_rng, custom_scale)
            if count:
                images = _custom_images(comp_rng, region, comp, count, bases)
                if bad_records:
                    images = [
                        _corrupt(i, comp_rng) if comp_rng.random() < bad_records else i
                        for i in images
                    ]
                world.custom[(region, comp.id)] = images
    return world
