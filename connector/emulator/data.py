"""A deterministic tenancy for the emulator to serve, generated lazily.

Everything is derived from the seed (and, for the realistic data set, a reference date), so a
test can regenerate the ground truth the emulator serves. Only the compartment tree and each
region's platform catalogue are built at start-up. A compartment's custom images are generated
when first asked for, from ``(seed, region, compartment)`` alone, and kept in a cache bounded by
bytes, so 5,000 compartments x 4 regions start in well under a second and a few dozen MB.

Two data sets:

- ``realistic`` (the CLI's and the demo's default): sizes from a few GB to a few hundred GB,
  times up to the reference date, names such as ``prod-payments-ol9-2026-10-14``, the tags
  that cost and security teams set, and compartments in a tree (``Finance/Prod/payments``).
  Records are assembled from pre-encoded fragments, which is what makes lazy generation fast
  enough to serve well over 150k records per CPU second even on a cold cache.
- ``awkward`` (``build_world``'s default, used by the tests): names with non-ASCII and control
  characters, optional keys absent or null, int64 sizes beyond 2**31, RFC 3339 times in every
  style a proxy might produce, and a share of enum values and fields no schema knows.

Two flavors, for the API's spelling differences: ``oci`` (commercial OCI: platform images
carry ``compartmentId`` null, defined-tag values of any JSON type, now and then nine digits of
fractional seconds, ``ACCELERATEDPV``) and ``pca`` (Private Cloud Appliance 3.0: platform
images carry ``compartmentId`` ``""``, defined-tag values are strings, ``VDPA``).
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, NamedTuple

import orjson

DEFAULT_REGIONS: tuple[str, ...] = ("us-ashburn-1",)
FLAVORS: tuple[str, ...] = ("oci", "pca")
DATASETS: tuple[str, ...] = ("realistic", "awkward")
SHAPES: tuple[str, ...] = ("skewed", "tenancy")
"""How custom images spread over compartments. ``skewed`` (the default, which the tests and
benchmarks measure with): every listing holds some, most a few dozen, a few several thousand.
``tenancy`` (the demo's): as real tenancies hold them, a few shared-image compartments hold most
custom images, a few teams keep a handful of their own, and most compartments hold none (their
listings return the region's platform images only)."""
HUB_SHARE = 0.025
"""Under ``tenancy``: the share of compartments that hold shared images (at least one)."""

# What each flavor's ListImages accepts as sortBy. The PCA reference documents NAME; the
# commercial SDK (ComputeClient.list_images) allows, and so sends, DISPLAYNAME only.
SORT_BY: dict[str, tuple[str, ...]] = {
    "oci": ("TIMECREATED", "DISPLAYNAME"),
    "pca": ("TIMECREATED", "NAME"),
}
# Values each flavor's Image.launchMode and LaunchOptions.networkType may take, beyond the
# common NATIVE/EMULATED/PARAVIRTUALIZED/CUSTOM and E1000/VFIO/PARAVIRTUALIZED.
_FLAVOR_MODE = {"oci": "ACCELERATEDPV", "pca": "VDPA"}

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

# Base32 as OCIDs spell it; a byte maps to a letter through this table (bytes.translate).
_B32 = b"abcdefghijklmnopqrstuvwxyz234567"
_B32_TABLE = bytes(_B32[b % 32] for b in range(256))

# The awkward data set's clock, fixed so that its ground truth never moves.
_AWKWARD_NOW = datetime(2026, 11, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- records ----------------------------------------------------------------------------------


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
    description: str = ""
    freeform_tags: tuple[tuple[str, str], ...] = ()

    def to_api(self) -> dict[str, Any]:
        """The Identity API's Compartment record."""
        return {
            "compartmentId": self.parent_id,
            "definedTags": {},
            "description": self.description or f"{self.name} workloads",
            "freeformTags": dict(self.freeform_tags),
            "id": self.id,
            "inactiveStatus": None,
            "isAccessible": self.accessible,
            "lifecycleState": self.lifecycle_state,
            "name": self.name,
            "timeCreated": self.time_created,
        }


class Image(NamedTuple):
    """An image as served: its encoded JSON and the keys the API filters and sorts on.

    A named tuple rather than a frozen dataclass: millions are built lazily, and a frozen
    dataclass costs several times as much to construct.
    """

    json: bytes
    id: str
    display_name: str | None
    operating_system: str
    operating_system_version: str
    lifecycle_state: str
    created_us: int
    shapes: tuple[str, ...]

    @property
    def time_created(self) -> datetime:
        """When the image was created (the sort key of sortBy=TIMECREATED)."""
        return _EPOCH + timedelta(microseconds=self.created_us)

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


# -- the world --------------------------------------------------------------------------------


# Python objects per cached image beyond its JSON: the tuple, its id and its name (measured
# about 330 bytes; the operating system strings and shapes are shared).
_IMAGE_OVERHEAD = 350


class CustomImages(Mapping[tuple[str, str], list[Image]]):
    """Custom images per (region, compartment id), generated on first use and cached.

    Behaves as the dict it replaces: keys are the listings that hold at least one custom image.
    The cache is bounded by the memory its images take, JSON and Python objects (least recently
    used first out); an evicted listing is regenerated identically when asked for again. A
    listing whose last page was served (``served``) goes first: clients page through a listing
    once, and what a service keeps for the listings still being paged must not be pushed out by
    those already done, or every page of a large listing would generate it again.
    """

    def __init__(self, world: World, cache_bytes: int) -> None:
        self._world = world
        self._cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[str, str], tuple[list[Image], int]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._listable: set[str] | None = None

    def count(self, region: str, compartment_id: str) -> int:
        """How many custom images the listing holds, without generating them."""
        key = (region, compartment_id)
        known = self._counts.get(key)
        if known is None:
            if (
                region not in self._world.regions
                or compartment_id not in self._listable_ids()
                or self._world.holds_none(compartment_id)
            ):
                known = 0
            else:
                known = self._world.custom_count(region, compartment_id)
            self._counts[key] = known
        return known

    def _listable_ids(self) -> set[str]:
        if self._listable is None:
            self._listable = {c.id for c in self._world.listable_compartments()}
        return self._listable

    def __getitem__(self, key: tuple[str, str]) -> list[Image]:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit[0]
        region, compartment_id = key
        if not self.count(region, compartment_id):
            raise KeyError(key)
        images = self._world.generate_custom(region, compartment_id)
        size = sum(len(image.json) for image in images) + _IMAGE_OVERHEAD * len(images)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = (images, size)
                self._held += size
                while self._held > self._cache_bytes and len(self._cache) > 1:
                    _, (_, dropped) = self._cache.popitem(last=False)
                    self._held -= dropped
        return images

    def ready(self, key: tuple[str, str]) -> bool:
        """Whether the listing can be served without generating it first."""
        with self._lock:
            return key in self._cache or not self.count(*key)

    def served(self, key: tuple[str, str]) -> None:
        """The listing's last page went out: make it the first to be evicted."""
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key, last=False)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for region in self._world.regions:
            for comp in self._world.listable_compartments():
                if self.count(region, comp.id):
                    yield (region, comp.id)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 2):
            return False
        region, compartment_id = key
        return isinstance(region, str) and bool(self.count(region, str(compartment_id)))

    @property
    def cached_bytes(self) -> int:
        """Memory the cached images take now, estimated as their JSON plus object overhead."""
        return self._held


@dataclass(slots=True, eq=False)
class World:
    """The whole fake tenancy: compartments, regions and the images in each listing."""

    seed: int
    tenancy_id: str
    regions: tuple[str, ...]
    compartments: list[Compartment]
    subscriptions: list[RegionSubscription]
    flavor: str = "oci"
    dataset: str = "awkward"
    oci_extras: bool = False
    reference: datetime = _AWKWARD_NOW
    custom_scale: float = 1.0
    bad_records: float = 0.0
    shape: str = "skewed"
    empty_share: float = 0.0
    """The share of compartments that hold no custom image in any region (chosen by their
    OCIDs), as in tenancies whose images live in a few shared compartments."""
    platform: dict[str, list[Image]] = field(default_factory=dict)
    platform_count: int = 0
    """Platform images per region (``build_world``'s ``platform_images``)."""
    platform_date: date | None = None
    """The day the platform catalogue is listed as of (``publish_platform``)."""
    bases: dict[str, list[Image]] = field(default_factory=dict)
    """The catalogue custom images were built from: the one of the world's creation, so that
    rotating platform images changes no custom image."""
    custom: CustomImages = field(init=False)
    _by_id: dict[str, Compartment] = field(init=False)
    _listable: list[Compartment] = field(init=False)
    _palettes: dict[str, _Palette] = field(init=False)
    _families: dict[str, _Family] = field(init=False)
    _hubs: frozenset[str] = field(init=False)
    cache_bytes: int = 128 * 2**20

    def __post_init__(self) -> None:
        self._by_id = {c.id: c for c in self.compartments}
        self._listable = [
            c for c in self.compartments if c.lifecycle_state == "ACTIVE" and c.accessible
        ]
        self._palettes = {}
        self._families = {}
        self._hubs = self._shared_image_compartments() if self.shape == "tenancy" else frozenset()
        self.custom = CustomImages(self, self.cache_bytes)

    def _shared_image_compartments(self) -> frozenset[str]:
        """Under ``tenancy``: the few compartments that hold the shared images, chosen from the
        seed among the tree's upper levels (a department's or an environment's), where teams
        keep images others build on."""
        listable = [c for c in self._listable if c.id != self.tenancy_id]
        upper = [c for c in listable if c.depth <= 2] or listable
        count = min(len(upper), max(1, round(len(listable) * HUB_SHARE)))
        return frozenset(c.id for c in random.Random(self.seed ^ 0x5EED).sample(upper, count))

    def custom_count(self, region: str, compartment_id: str) -> int:
        """How many custom images a listing holds (drawn from its key: no images generated)."""
        key = _listing_key(self.seed, region, compartment_id)
        if self.shape != "tenancy":
            return _custom_count(key, self.custom_scale)
        pick = key >> 32
        if compartment_id in self._hubs:
            # Golden images and their builds; other regions hold the copies teams need there.
            base = 150 + pick % 451
            if region != self.home_region:
                base = base * 2 // 5
        elif (key & 0xFFFFFFFF) / 2**32 < 0.15:
            base = 1 + pick % 12  # a team's own builds
        else:
            base = 0
        return int(base * self.custom_scale)

    @property
    def home_region(self) -> str:
        """The region served at the root path."""
        return self.regions[0]

    @property
    def extras(self) -> bool:
        """Whether records carry commercial OCI's values that strict clients reject."""
        return self.flavor == "oci" and self.oci_extras

    @property
    def sort_by(self) -> tuple[str, ...]:
        """The sortBy values this flavor's ListImages accepts."""
        return SORT_BY[self.flavor]

    def compartment(self, compartment_id: str) -> Compartment | None:
        """The compartment with this OCID, the root included."""
        return self._by_id.get(compartment_id)

    def listable_compartments(self) -> list[Compartment]:
        """Compartments whose images a caller may list: ACTIVE and accessible, root first."""
        return self._listable

    def path(self, compartment_id: str) -> str:
        """The compartment's readable path from the root, e.g. ``root/Finance/Prod``."""
        names: list[str] = []
        comp = self._by_id.get(compartment_id)
        while comp is not None:
            names.append("root" if comp.id == self.tenancy_id else comp.name)
            if comp.id == self.tenancy_id:
                break
            comp = self._by_id.get(comp.parent_id)
        return "/".join(reversed(names))

    def publish_platform(self, day: date) -> None:
        """List the platform catalogue as of ``day`` from now on, in every region: the lines
        that published a build since the catalogue's date list it, and no longer list their
        oldest (retired: it still exists, as on OCI). Deterministic: ``(seed, day)`` fix it."""
        on = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for region in self.regions:
            self.platform[region] = _platform_images(self, region, self.platform_count, on)
        self.platform_date = day

    def holds_none(self, compartment_id: str) -> bool:
        """Whether ``empty_share`` leaves this compartment without custom images."""
        if not self.empty_share:
            return False
        digest = hashlib.blake2b(f"{self.seed}/empty/{compartment_id}".encode(), digest_size=4)
        return int.from_bytes(digest.digest(), "big") / 2**32 < self.empty_share

    def listing(self, region: str, compartment_id: str) -> list[Image]:
        """What ListImages returns for a compartment, unfiltered: platform images, then custom."""
        return self.platform[region] + self.custom.get((region, compartment_id), [])

    def generate_custom(self, region: str, compartment_id: str) -> list[Image]:
        """Generate a listing's custom images from (seed, region, compartment); no caching."""
        comp = self._by_id[compartment_id]
        key = _listing_key(self.seed, region, compartment_id)
        count = self.custom_count(region, compartment_id)
        rng = random.Random(key)
        palette = self._palettes.get(region)
        if palette is None:
            palette = self._palettes[region] = _Palette(self, region)
        if self.dataset == "realistic":
            images = _realistic_custom(rng, palette, comp, count, self.path(compartment_id))
        else:
            images = _awkward_custom(rng, palette, comp, count)
        if self.bad_records:
            images = [_corrupt(i, rng) if rng.random() < self.bad_records else i for i in images]
        return images

    def truth(self) -> Iterator[dict[str, Any]]:
        """The ground truth, one dict per region's platform images and per custom listing.

        A platform line has ``compartment_id`` null: those images appear in every listable
        compartment's listing of that region, ahead of the compartment's custom images.
        Listings are generated as the iteration reaches them, so this streams at any scale.
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
        """Sizes that benchmarks and tests plan with (computed without generating images)."""
        comps = self.listable_compartments()
        custom = sum(self.custom.count(r, c.id) for r in self.regions for c in comps)
        platform = sum(len(v) for v in self.platform.values())
        return {
            "regions": len(self.regions),
            "compartments": len(comps),
            "platform_images": platform,
            "custom_images": custom,
            "listing_rows": platform * len(comps) + custom,
        }


# -- identifiers and small helpers ------------------------------------------------------------


def ocid(kind: str, rng: random.Random, region_code: str = "") -> str:
    """An OCID of the documented shape: ocid1.<kind>.oc1.<region>.<60 base32 chars>."""
    return (
        f"ocid1.{kind}.oc1.{region_code}.aaaaaaaa{rng.randbytes(52).translate(_B32_TABLE).decode()}"
    )


def region_code(region: str) -> str:
    """The short code OCI uses for a region inside OCIDs."""
    if region in _REGION_CODES:
        return _REGION_CODES[region]
    letters = "".join(part[0] for part in region.split("-") if part and part[0].isalpha())
    return (letters + "xxx")[:3]


def _listing_key(seed: int, region: str, compartment_id: str) -> int:
    """64 bits that seed a listing's generator and, alone, decide its size."""
    digest = hashlib.blake2b(f"{seed}/{region}/{compartment_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big")


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _custom_count(key: int, scale: float) -> int:
    """Skewed: most compartments hold a few dozen images, a few need several 1000-row pages.

    Drawn from the listing's key rather than its generator, so that counting every listing of
    a large tenancy costs a hash each, not a generator each."""
    roll = (key & 0xFFFFFFFF) / 2**32
    pick = key >> 32
    if roll < 0.88:
        base = pick % 41
    elif roll < 0.93:
        base = 40 + pick % 861
    else:
        base = 1500 + pick % 5501
    return int(base * scale)


def _weighted(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    point = rng.random()
    for value, weight in table:
        point -= weight
        if point < 0:
            return value
    return table[-1][0]


def _lookup(table: tuple[tuple[str, float], ...], size: int = 256) -> tuple[str, ...]:
    """A weighted table unrolled into ``size`` slots, for an index drawn from random bits."""
    slots: list[str] = []
    for value, weight in table:
        slots += [value] * round(weight * size)
    slots += [table[0][0]] * (size - len(slots))
    return tuple(slots[:size])


# -- the platform catalogue -------------------------------------------------------------------

_X86 = ("VM.Standard.E4.Flex", "VM.Standard.E5.Flex", "VM.Standard3.Flex", "BM.Standard3.64")
_ARM = ("VM.Standard.A1.Flex", "VM.Standard.A2.Flex", "BM.Standard.A1.160")
_GPU = ("VM.GPU.A10.1", "VM.GPU.A10.2", "BM.GPU.A100-v2.8", "BM.GPU.H100.8")
_WIN = ("VM.Standard.E4.Flex", "VM.Standard.E5.Flex", "VM.Standard3.Flex")
_WIN_BM = ("BM.Standard3.64", "BM.Standard.E4.128", "BM.Standard.E5.192")


@dataclass(frozen=True, slots=True)
class _Family:
    """One line of the platform catalogue, published as a new build every few weeks."""

    os: str
    version: str
    stem: str
    shapes: tuple[str, ...]
    size_mb: int = 47694
    billable_gb: int = 3
    firmware: str = "UEFI_64"

    @property
    def arm(self) -> bool:
        return self.shapes is _ARM

    @property
    def short(self) -> str:
        """The OS as engineers abbreviate it in image names: ol9, ubuntu2204, win2022."""
        if self.os.startswith("Oracle Autonomous"):
            return "oal" + self.version.replace(".", "")
        if self.os.startswith("Oracle Linux"):
            return "ol" + self.version.replace(".", "")
        if self.os == "Canonical Ubuntu":
            return "ubuntu" + self.version.replace(".", "")
        if self.os == "Windows":
            return "win" + self.version.split()[1]
        if self.os == "CentOS":
            return "cs" + self.version.split()[-1]
        return "rocky" + self.version


# Ordered so that a short catalogue (a small platform_images) still spans distributions,
# architectures and GPU builds; the full list is about 50 lines, 3 builds each.
_CATALOGUE: tuple[_Family, ...] = (
    _Family("Oracle Linux", "9", "Oracle-Linux-9.6", _X86),
    _Family("Canonical Ubuntu", "24.04", "Canonical-Ubuntu-24.04", _X86, billable_gb=2),
    _Family("Oracle Linux", "9", "Oracle-Linux-9.6-aarch64", _ARM),
    _Family("Windows", "Server 2022 Standard", "Windows-Server-2022-Standard-Edition-VM", _WIN,
            262144, 24),
    _Family("Oracle Linux", "8", "Oracle-Linux-8.10", _X86),
    _Family("Oracle Linux", "9", "Oracle-Linux-9.6-Gen2-GPU", _GPU, billable_gb=9),
    _Family("Canonical Ubuntu", "22.04", "Canonical-Ubuntu-22.04", _X86, billable_gb=2),
    _Family("Rocky Linux", "9", "Rocky-Linux-9.6", _X86, billable_gb=2),
    _Family("CentOS", "Stream 9", "CentOS-Stream-9", _X86, billable_gb=2),
    _Family("Oracle Autonomous Linux", "8", "Oracle-Autonomous-Linux-8.10", _X86),
    _Family("Canonical Ubuntu", "24.04", "Canonical-Ubuntu-24.04-aarch64", _ARM, billable_gb=2),
    _Family("Oracle Linux", "7.9", "Oracle-Linux-7.9", _X86, firmware="BIOS"),
    _Family("Windows", "Server 2019 Standard", "Windows-Server-2019-Standard-Edition-VM", _WIN,
            262144, 22),
    _Family("Oracle Linux", "8", "Oracle-Linux-8.10-aarch64", _ARM),
    _Family("Canonical Ubuntu", "24.04", "Canonical-Ubuntu-24.04-Minimal", _X86, billable_gb=1),
    _Family("Oracle Linux", "8", "Oracle-Linux-8.10-Gen2-GPU", _GPU, billable_gb=9),
    _Family("Canonical Ubuntu", "20.04", "Canonical-Ubuntu-20.04", _X86, billable_gb=2),
    _Family("Canonical Ubuntu", "22.04", "Canonical-Ubuntu-22.04-aarch64", _ARM, billable_gb=2),
    _Family("Windows", "Server 2022 Datacenter", "Windows-Server-2022-Datacenter-Edition-BM-E4",
            _WIN_BM, 262144, 25),
    _Family("Canonical Ubuntu", "22.04", "Canonical-Ubuntu-22.04-Minimal", _X86, billable_gb=1),
    _Family("Oracle Linux", "9", "Oracle-Linux-9.6-Minimal", _X86, billable_gb=2),
    _Family("Rocky Linux", "8", "Rocky-Linux-8.10", _X86, billable_gb=2),
    _Family("Canonical Ubuntu", "24.04", "Canonical-Ubuntu-24.04-Minimal-aarch64", _ARM,
            billable_gb=1),
    _Family("Oracle Linux", "7.9", "Oracle-Linux-7.9-Gen2-GPU", _GPU, billable_gb=8,
            firmware="BIOS"),
    _Family("Windows", "Server 2016 Standard", "Windows-Server-2016-Standard-Edition-VM", _WIN,
            262144, 20),
    _Family("Oracle Autonomous Linux", "9", "Oracle-Autonomous-Linux-9.6", _X86),
    _Family("CentOS", "Stream 9", "CentOS-Stream-9-aarch64", _ARM, billable_gb=2),
    _Family("Canonical Ubuntu", "20.04", "Canonical-Ubuntu-20.04-aarch64", _ARM, billable_gb=2),
    _Family("Oracle Linux", "9", "Oracle-Linux-9.6-Minimal-aarch64", _ARM, billable_gb=2),
    _Family("Canonical Ubuntu", "22.04", "Canonical-Ubuntu-22.04-Minimal-aarch64", _ARM,
            billable_gb=1),
    _Family("Windows", "Server 2019 Datacenter", "Windows-Server-2019-Datacenter-Edition-BM-E4",
            _WIN_BM, 262144, 23),
    _Family("Rocky Linux", "9", "Rocky-Linux-9.6-aarch64", _ARM, billable_gb=2),
    _Family("Oracle Linux", "8", "Oracle-Linux-8.10-Minimal", _X86, billable_gb=2),
    _Family("Canonical Ubuntu", "20.04", "Canonical-Ubuntu-20.04-Minimal", _X86, billable_gb=1),
    _Family("Oracle Linux Cloud Developer", "8", "Oracle-Linux-Cloud-Developer-8.10", _X86,
            billable_gb=6),
    _Family("Canonical Ubuntu", "24.04", "Canonical-Ubuntu-24.04-Gen2-GPU", _GPU, billable_gb=8),
    _Family("Oracle Linux", "7.9", "Oracle-Linux-7.9-aarch64", _ARM, firmware="BIOS"),
    _Family("Windows", "Server 2025 Standard", "Windows-Server-2025-Standard-Edition-VM", _WIN,
            262144, 26),
    _Family("Oracle Autonomous Linux", "7.9", "Oracle-Autonomous-Linux-7.9", _X86,
            firmware="BIOS"),
    _Family("Canonical Ubuntu", "22.04", "Canonical-Ubuntu-22.04-Gen2-GPU", _GPU, billable_gb=8),
    _Family("Oracle Linux Cloud Developer", "9", "Oracle-Linux-Cloud-Developer-9.6", _X86,
            billable_gb=6),
    _Family("Oracle Linux", "8", "Oracle-Linux-8.10-Minimal-aarch64", _ARM, billable_gb=2),
    _Family("Rocky Linux", "8", "Rocky-Linux-8.10-aarch64", _ARM, billable_gb=2),
    _Family("Canonical Ubuntu", "20.04", "Canonical-Ubuntu-20.04-Minimal-aarch64", _ARM,
            billable_gb=1),
    _Family("Windows", "Server 2022 Standard", "Windows-Server-2022-Standard-Edition-BM-E5",
            _WIN_BM, 262144, 25),
    _Family("Oracle Linux", "9", "Oracle-Linux-9.6-Gen2-GPU-A100", _GPU, billable_gb=10),
    _Family("CentOS", "Stream 10", "CentOS-Stream-10", _X86, billable_gb=2),
    _Family("Oracle Linux", "10", "Oracle-Linux-10.0", _X86),
    _Family("Oracle Linux", "10", "Oracle-Linux-10.0-aarch64", _ARM),
    _Family("Windows", "Server 2025 Datacenter", "Windows-Server-2025-Datacenter-Edition-BM-E5",
            _WIN_BM, 262144, 27),
)  # fmt: skip


def _catalogue(count: int) -> list[tuple[_Family, int]]:
    """(family, age rank) for ``count`` platform images: three newest builds of each family,
    family by family; a count beyond the catalogue reaches further back in each family."""
    chosen: list[tuple[_Family, int]] = []
    rank = 0
    while len(chosen) < count:
        for family in _CATALOGUE:
            for age in range(rank, rank + 3):
                if len(chosen) < count:
                    chosen.append((family, age))
        rank += 3
    return chosen


_BUILD_DAYS = 30
"""A platform image line publishes a new build about monthly."""
_BUILDS_FROM = datetime(2020, 1, 1, tzinfo=UTC)
"""Build numbers count from here: build ``n`` of a line is published ``n`` periods later."""
_SETTLE_DAYS = 3
"""A build is listed from this many days after its build date."""


def _platform_images(world: World, region: str, count: int, on: datetime) -> list[Image]:
    """The region's platform catalogue as ListImages shows it on ``on``: per line, its newest
    builds (``_catalogue``). Each build is drawn from ``(seed, region, line, build number)``
    alone, so the same build is the same record on every date; when a line publishes a new
    build, the new one appears and the oldest leaves the list (its OCID still exists)."""
    code = region_code(region)
    awkward = world.dataset == "awkward"
    images: list[Image] = []
    for family, age in _catalogue(count):
        # Each line has its own day in the period on which it publishes.
        phase = random.Random(f"{world.seed}/{region}/{family.stem}").randrange(_BUILD_DAYS)
        listed = (on - _BUILDS_FROM).days - phase - _SETTLE_DAYS
        number = listed // _BUILD_DAYS - age
        rng = random.Random(f"{world.seed}/{region}/{family.stem}/{number}")
        build = _BUILDS_FROM + timedelta(
            days=phase + number * _BUILD_DAYS, seconds=rng.randint(0, 86399)
        )
        name = f"{family.stem}-{build:%Y.%m.%d}-{rng.choice((0, 0, 0, 1))}"
        image_id = ocid("image", rng, code)
        world._families[image_id] = family
        if awkward:
            images.append(
                _awkward_image(
                    rng,
                    world.flavor,
                    world.extras,
                    image_id=image_id,
                    compartment_id=None,
                    display_name=name,
                    family=family,
                    lifecycle="AVAILABLE",
                    created=build,
                    base_image_id=None,
                )
            )
        else:
            images.append(
                _realistic_platform(rng, world.flavor, world.extras, image_id, name, family, build)
            )
    # Recent platform images first, as the service lists them.
    images.sort(key=lambda img: img.created_us, reverse=True)
    return images


def _platform_compartment(flavor: str) -> str | None:
    return "" if flavor == "pca" else None


def _stamp(moment: datetime, extras: bool, rng: random.Random) -> str:
    """RFC 3339 as the service writes it: milliseconds and Z; OCI now and then sends nine digits."""
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if extras and rng.random() < 0.03:
        text = text[:-1] + f"{moment.microsecond % 1000:03d}{rng.randrange(1000):03d}Z"
    return text


def _launch_options(firmware: str, network: str, boot: str = "PARAVIRTUALIZED") -> dict[str, Any]:
    return {
        "bootVolumeType": boot,
        "firmware": firmware,
        "isConsistentVolumeNamingEnabled": True,
        "isPvEncryptionInTransitEnabled": True,
        "networkType": network,
        "remoteDataVolumeType": "PARAVIRTUALIZED",
    }


def _realistic_platform(
    rng: random.Random,
    flavor: str,
    extras: bool,
    image_id: str,
    name: str,
    family: _Family,
    build: datetime,
) -> Image:
    network = "VFIO" if family.shapes in (_WIN_BM, _GPU) else "PARAVIRTUALIZED"
    record = {
        "agentFeatures": {"isManagementSupported": False, "isMonitoringSupported": True},
        "baseImageId": None,
        "billableSizeInGBs": family.billable_gb,
        "compartmentId": _platform_compartment(flavor),
        "createImageAllowed": True,
        "definedTags": {},
        "displayName": name,
        "freeformTags": {},
        "id": image_id,
        "launchMode": "NATIVE",
        "launchOptions": _launch_options(family.firmware, network),
        "lifecycleState": "AVAILABLE",
        "listingType": "NONE",
        "operatingSystem": family.os,
        "operatingSystemVersion": family.version,
        "sizeInMBs": family.size_mb,
        "timeCreated": _stamp(build, extras, rng),
    }
    return Image(
        orjson.dumps(record),
        image_id,
        name,
        family.os,
        family.version,
        "AVAILABLE",
        _micros(build),
        family.shapes,
    )


class _Palette:
    """Per region: the platform bases and pre-encoded fragments that custom records share."""

    def __init__(self, world: World, region: str) -> None:
        self.flavor = world.flavor
        self.extras = world.extras
        self.code = region_code(region)
        self.reference = world.reference
        self.bases = world.bases[region]
        self.base_family = [world._families[b.id] for b in self.bases]
        special = _FLAVOR_MODE[world.flavor]
        self.options: dict[bool, tuple[str, ...]] = {}
        for arm in (False, True):
            variants = []
            for boot in ("PARAVIRTUALIZED", "PARAVIRTUALIZED", "ISCSI", "PARAVIRTUALIZED"):
                for network in ("PARAVIRTUALIZED", "VFIO", "PARAVIRTUALIZED", "E1000"):
                    for firmware in ("UEFI_64", "UEFI_64", "UEFI_64", "BIOS"):
                        fw = "UEFI_64" if arm else firmware
                        variants.append(orjson.dumps(_launch_options(fw, network, boot)).decode())
            # A few carry the flavor's own network type.
            variants[-1] = orjson.dumps(_launch_options("UEFI_64", special)).decode()
            self.options[arm] = tuple(variants)
        self.modes = _lookup(
            (
                ("PARAVIRTUALIZED", 0.5),
                ("NATIVE", 0.36),
                ("CUSTOM", 0.07),
                ("EMULATED", 0.04),
                (special, 0.03),
            )
        )
        self.states = _lookup(
            (
                ("AVAILABLE", 0.95),
                ("DISABLED", 0.02),
                ("DELETED", 0.01),
                ("IMPORTING", 0.01),
                ("PROVISIONING", 0.005),
                ("EXPORTING", 0.005),
            )
        )
        self.bases_json = [orjson.dumps(b.id).decode() for b in self.bases]
        retired = random.Random(f"{world.seed}/{region}/retired")
        self.retired = tuple(f'"{ocid("image", retired, self.code)}"' for _ in range(256))
        self.os_json = [
            f'"operatingSystem":{orjson.dumps(b.operating_system).decode()},'
            f'"operatingSystemVersion":{orjson.dumps(b.operating_system_version).decode()}'
            for b in self.bases
        ]
        # What a custom image takes from its base, in one tuple per base.
        self.per_base = [
            (base, self.bases_json[i], self.os_json[i], family.short, self.options[family.arm],
             family.size_mb >= 262144)
            for i, (base, family) in enumerate(zip(self.bases, self.base_family, strict=True))
        ]  # fmt: skip
        self.users = tuple(
            f"oracleidentitycloudservice/{first}.{last}@example.com"
            for first, last in zip(_FIRST, _LAST, strict=False)
        )
        self.days = _day_strings(world.reference)


# -- the realistic data set -------------------------------------------------------------------

_FIRST = (
    "jane",
    "omar",
    "li",
    "priya",
    "lukas",
    "maria",
    "kwame",
    "sofia",
    "tom",
    "aiko",
    "diego",
    "fatima",
)
_LAST = (
    "doe",
    "haddad",
    "wei",
    "sharma",
    "becker",
    "garcia",
    "mensah",
    "rossi",
    "baker",
    "tanaka",
    "lopez",
    "khan",
)
_DEPARTMENTS = (
    "Finance",
    "Engineering",
    "Marketing",
    "Sales",
    "Security",
    "Networking",
    "Shared-Services",
    "Data-Platform",
    "HR",
    "Operations",
    "Legal",
    "Research",
)
_ENVIRONMENTS = ("Prod", "Dev", "Test", "Staging", "DR", "Sandbox")
_APPS = (
    "payments",
    "billing",
    "web",
    "api",
    "crm",
    "erp",
    "analytics",
    "ml",
    "search",
    "checkout",
    "ledger",
    "reporting",
    "identity",
    "mobile",
    "etl",
    "warehouse",
    "portal",
    "inventory",
    "logistics",
    "support",
)
_PARTS = ("frontend", "backend", "db", "batch", "cache", "queue", "workers", "gateway")
_ROLES = ("web", "app", "db", "build", "runner", "bastion", "proxy", "worker", "base", "golden")
_COST_CENTERS = tuple(f"CC-{n}" for n in (1042, 1107, 2210, 2315, 3400, 4210, 5150, 6120))
_TEAMS = ("platform", "sre", "dba", "appdev", "secops", "netops", "data", "finops")


_HHMM = tuple(f"{m // 60:02d}:{m % 60:02d}" for m in range(1440))
_SS = tuple(f"{n:02d}" for n in range(60))
_MS = tuple(f"{n:03d}" for n in range(1000))
_WIN_SIZES = (262144, 262144, 307200, 512000)
_IMPORTED_SIZES = (8192, 12288, 20480, 51200)
_LINUX_SIZES = (47694, 51200, 51200, 102400, 153600, 204800, 256000, 409600)
# Image ages in seconds at 4096 quantiles of an exponential with a 120-day mean, capped at
# three years: most images are weeks old, a long tail is years old.
_AGES = tuple(
    min(int(-math.log(1 - (q + 0.5) / 4096) * 120 * 86400), 3 * 365 * 86400) for q in range(4096)
)


def _day_strings(reference: datetime) -> list[str]:
    """``YYYY-MM-DD`` for each day back from the reference, index = days before it."""
    start = reference.date()
    return [(start - timedelta(days=d)).isoformat() for d in range(0, 4 * 366)]


_ENV_OF = {e.lower(): e.lower() for e in _ENVIRONMENTS}


def _realistic_custom(
    rng: random.Random, palette: _Palette, comp: Compartment, count: int, path: str
) -> list[Image]:
    """Custom images for one listing, assembled from fragments (a few microseconds each)."""
    parts = [p.lower() for p in path.split("/")[1:]]
    at = next((i for i, p in enumerate(parts) if p in _ENV_OF), None)
    env = "prod" if at is None else parts[at]
    if at is not None and at + 1 < len(parts):
        app = parts[at + 1]
    else:
        app = next((p for p in reversed(parts) if p not in _ENV_OF), "shared")
    freeform = tuple(
        orjson.dumps(tags).decode()
        for tags in (
            {},
            {"Environment": env},
            {"Environment": env, "Project": app},
            {
                "Environment": env,
                "Project": app,
                "Owner": f"{_TEAMS[rng.randrange(8)]}@example.com",
            },
            {"CostCenter": _COST_CENTERS[rng.randrange(8)], "Environment": env},
            {"Project": app, "CreatedWith": "packer"},
            {"Project": app, "CreatedWith": "terraform", "Environment": env},
            {"Owner": f"{palette.users[rng.randrange(12)].split('/')[1]}"},
        )
    )
    cost = _COST_CENTERS[rng.randrange(len(_COST_CENTERS))]
    operations = [
        f'"Operations":{{"CostCenter":"{cost}","Environment":"{env}"}}',
        f'"Operations":{{"CostCenter":"{cost}","Environment":"{env}","Owner":"{app}-team"}}',
    ] * 12
    if palette.extras:
        # Commercial OCI types defined-tag values as any JSON: now and then a number, a
        # boolean or an object (about one image in twenty).
        operations += [
            f'"Operations":{{"CostCenter":{cost[3:]},"Environment":"{env}"}}',
            f'"Operations":{{"Backup":true,"RetentionDays":30,"Environment":"{env}"}}',
            f'"Security":{{"Approved":true,"Controls":{{"pci":{str(env == "prod").lower()},'
            '"level":2}}',
        ]
    days = palette.days
    # Ages skew recent (images are rebuilt often), with a tail of up to three years.
    ages = _AGES
    moments = sorted(
        ages[bits & 4095] + (bits >> 12) % 86400 + 1
        for bits in (rng.getrandbits(32) for _ in range(count))
    )
    reference_us = _micros(palette.reference)
    nbases = len(palette.bases)
    per_base, retired = palette.per_base, palette.retired
    users, states, modes = palette.users, palette.states, palette.modes
    prefix = f"ocid1.image.oc1.{palette.code}.aaaaaaaa"
    comp_id = comp.id
    nanos = palette.extras
    new_image = tuple.__new__
    images: list[Image] = []
    for serial, age_s in enumerate(moments):
        bits = rng.getrandbits(64)
        more = rng.getrandbits(64)
        base, base_json, os_part, short, options, windows = per_base[(bits & 0xFFFF) % nbases]
        day_index, second = divmod(age_s, 86400)
        if second:
            day_index, second = day_index + 1, 86400 - second
        day = days[day_index]
        millis = ((bits >> 16) & 1023) % 1000
        created_us = reference_us - age_s * 1_000_000 + millis * 1000
        millis_stamp = f"{day}T{_HHMM[second // 60]}:{_SS[second % 60]}.{_MS[millis]}Z"
        if nanos and (more & 63) == 0:
            stamp = f"{millis_stamp[:-1]}{_MS[(more >> 6) & 511]}{_MS[(more >> 15) & 511]}Z"
        else:
            stamp = millis_stamp
        imported = (bits >> 26) & 15 == 0
        if imported:
            base_ref = "null"
        elif base.created_us <= created_us:
            base_ref = base_json
        else:
            # Older than today's catalogue: built from a platform image since retired.
            base_ref = retired[(more >> 24) & 255]
        if windows:
            size_mb = _WIN_SIZES[(bits >> 30) & 3]
        elif imported:
            size_mb = _IMPORTED_SIZES[(bits >> 30) & 3]
        else:
            size_mb = _LINUX_SIZES[(bits >> 30) & 7]
        billable = -(-size_mb // 1024) * (5 + ((bits >> 33) & 31)) // 100 or 1
        state = states[(bits >> 38) & 255]
        mode = modes[(bits >> 46) & 255]
        name = f"{env}-{app}-{_ROLES[(more >> 32) % 10]}-{short}-{day}"
        if serial & 3 == 1:
            name += f"-v{1 + (more >> 36) % 9}"
        defined = ""
        if (more >> 40) & 7 < 6:
            defined = (
                f'"Oracle-Tags":{{"CreatedBy":"{users[(more >> 43) % 12]}",'
                f'"CreatedOn":"{millis_stamp}"}}'
            )
        if (more >> 47) & 3 < 2:
            extra = operations[(more >> 49) % len(operations)]
            defined = f"{defined},{extra}" if defined else extra
        image_id = (
            prefix + rng.getrandbits(416).to_bytes(52, "little").translate(_B32_TABLE).decode()
        )
        allowed = "false" if (more >> 52) & 63 == 0 else "true"
        text = (
            '{"agentFeatures":{"isManagementSupported":false,"isMonitoringSupported":true},'
            f'"baseImageId":{base_ref},"billableSizeInGBs":{billable},'
            f'"compartmentId":"{comp_id}","createImageAllowed":{allowed},'
            f'"definedTags":{{{defined}}},"displayName":"{name}",'
            f'"freeformTags":{freeform[(more >> 58) & 7]},"id":"{image_id}",'
            f'"launchMode":"{mode}","launchOptions":{options[(bits >> 54) & 63]},'
            f'"lifecycleState":"{state}",'
            f'"listingType":"NONE",{os_part},"sizeInMBs":{size_mb},'
            f'"timeCreated":"{stamp}"}}'
        )
        # tuple.__new__ skips the named tuple's Python-level constructor: a third of a microsecond.
        images.append(
            new_image(
                Image,
                (
                    text.encode(),
                    image_id,
                    name,
                    base.operating_system,
                    base.operating_system_version,
                    state,
                    created_us,
                    base.shapes,
                ),
            )
        )
    images.reverse()  # oldest first, as the service lists custom images
    return images


def _realistic_compartments(
    rng: random.Random, tenancy_id: str, active: int, reference: datetime
) -> list[Compartment]:
    """A tree as organisations build them: departments, environments, applications, parts.

    Levels fill breadth first and round-robin, so every department gets its environments
    before any environment gets a third application.
    """
    deleted = max(1, active // 20) if active else 0
    hidden = max(1, active // 30) if active else 0
    total = active + deleted + hidden
    root = Compartment(
        tenancy_id,
        tenancy_id,
        "root",
        "ACTIVE",
        True,
        "2019-03-04T09:12:40.215Z",
        0,
        "The tenancy's root compartment",
    )
    levels: list[tuple[str, ...]] = [
        _DEPARTMENTS[: min(len(_DEPARTMENTS), max(1, round(total**0.4)))],
        _ENVIRONMENTS,
        _APPS,
        _PARTS,
        _ROLES,
    ]
    comps = [root]
    paths = {tenancy_id: ""}
    start = reference - timedelta(days=2100)
    frontier = [root]
    depth = 0
    while len(comps) - 1 < total and frontier:
        names = levels[min(depth, len(levels) - 1)]
        next_frontier: list[Compartment] = []
        for index in range(len(names)):
            for parent in frontier:
                if len(comps) - 1 >= total:
                    break
                name = names[index] if depth < len(levels) else f"{names[index]}-{depth}"
                created = start + timedelta(
                    days=(len(comps) * 7) % 2000, seconds=rng.randrange(86400)
                )
                path = f"{paths[parent.id]}/{name}".lstrip("/")
                comp = Compartment(
                    id=ocid("compartment", rng),
                    parent_id=parent.id,
                    name=name,
                    lifecycle_state="ACTIVE",
                    accessible=True,
                    time_created=created.strftime("%Y-%m-%dT%H:%M:%S.")
                    + f"{created.microsecond // 1000:03d}Z",
                    depth=depth + 1,
                    description=f"Workloads of {path}",
                    freeform_tags=(("Owner", f"{_TEAMS[len(comps) % len(_TEAMS)]}@example.com"),),
                )
                paths[comp.id] = path
                comps.append(comp)
                next_frontier.append(comp)
        frontier = next_frontier
        depth += 1
    # Deleted and inaccessible compartments are leaves: OCI deletes a compartment only once
    # it is empty, and a policy hides a branch's end more often than its middle.
    parents = {c.parent_id for c in comps}
    leaves = [i for i, c in enumerate(comps) if i and c.id not in parents]
    marked = rng.sample(leaves, min(len(leaves), deleted + hidden))
    for n, index in enumerate(marked):
        changes: dict[str, Any] = (
            {"lifecycle_state": "DELETED"} if n < deleted else {"accessible": False}
        )
        comps[index] = _replace(comps[index], **changes)
    return comps


def _replace(comp: Compartment, **changes: Any) -> Compartment:
    values = {name: getattr(comp, name) for name in Compartment.__slots__}
    values.update(changes)
    return Compartment(**values)


# -- the awkward data set ---------------------------------------------------------------------

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


def _rfc3339(moment: datetime, rng: random.Random, extras: bool) -> str:
    """RFC 3339 as services and proxies emit it: millis + Z mostly; bare, micros, nanos, offsets."""
    style = rng.random()
    if style < 0.78:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if style < 0.88:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if style < 0.94:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if style < 0.96 and extras:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{rng.randrange(1000):03d}Z"
    offset = timedelta(hours=rng.choice((-7, 2, 5)), minutes=rng.choice((0, 30)))
    local = moment.astimezone(timezone(offset))
    return local.isoformat(timespec="milliseconds")


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


def _awkward_launch_options(rng: random.Random, arm: bool, flavor: str) -> dict[str, Any] | None:
    if rng.random() < 0.05:
        return None
    networks = ("PARAVIRTUALIZED", "VFIO", "E1000", _FLAVOR_MODE[flavor])
    options: dict[str, Any] = {
        "bootVolumeType": rng.choice(("PARAVIRTUALIZED", "ISCSI", "SCSI", "NVME")),
        "firmware": "UEFI_64" if arm or rng.random() < 0.7 else "BIOS",
        "isConsistentVolumeNamingEnabled": rng.random() < 0.8,
        "isPvEncryptionInTransitEnabled": rng.random() < 0.5,
        "networkType": rng.choice(networks),
        "remoteDataVolumeType": rng.choice(("PARAVIRTUALIZED", "ISCSI")),
    }
    if rng.random() < 0.7:
        options["isEncryptionInTransitEnabled"] = rng.random() < 0.5
    return options


def _awkward_defined_value(rng: random.Random, extras: bool) -> Any:
    """A defined-tag value: text on PCA; on OCI, now and then a number, boolean or object."""
    roll = rng.random()
    if not extras or roll < 0.6:
        return str(rng.randint(1, 99))
    if roll < 0.75:
        return rng.randint(1, 99)
    if roll < 0.85:
        return rng.random() < 0.5
    if roll < 0.92:
        return 2.5
    return {"tier": rng.randint(1, 3), "approved": True, "labels": ["a", "b"]}


def _awkward_image(
    rng: random.Random,
    flavor: str,
    extras: bool,
    *,
    image_id: str,
    compartment_id: str | None,
    display_name: str | None,
    family: _Family,
    lifecycle: str,
    created: datetime,
    base_image_id: str | None,
) -> Image:
    platform = compartment_id is None
    modes = ("NATIVE", "PARAVIRTUALIZED", "EMULATED", "CUSTOM", _FLAVOR_MODE[flavor])
    record: dict[str, Any] = {
        "agentFeatures": None
        if rng.random() < 0.1
        else {"isManagementSupported": rng.random() < 0.5, "isMonitoringSupported": True},
        "baseImageId": base_image_id,
        "billableSizeInGBs": None if platform else rng.randint(1, 400),
        "compartmentId": _platform_compartment(flavor) if platform else compartment_id,
        "createImageAllowed": rng.random() < 0.95,
        "definedTags": {},
        "displayName": display_name,
        "freeformTags": {},
        "id": image_id,
        "launchMode": rng.choice(modes),
        "launchOptions": _awkward_launch_options(rng, family.arm, flavor),
        "lifecycleState": lifecycle,
        "listingType": "NONE" if rng.random() < 0.9 else "COMMUNITY",
        "operatingSystem": family.os,
        "operatingSystemVersion": family.version,
        "sizeInMBs": rng.choice((47694, 51200, 102400, 262144)),
        "timeCreated": _rfc3339(created, rng, extras),
    }
    roll = rng.random()
    if roll < 0.02:
        record["sizeInMBs"] = rng.randint(2**31, 2**40)  # beyond int32
        record["billableSizeInGBs"] = rng.randint(2**31, 2**33)
    elif roll < 0.04:
        record["sizeInMBs"] = None
    if not platform:
        if rng.random() < 0.6:
            record["definedTags"] = {
                "Oracle-Tags": {
                    "CreatedBy": f"ocid1.user.oc1..aaaa{rng.randrange(16**6):06x}",
                    "CreatedOn": created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                }
            }
            if rng.random() < 0.3:
                record["definedTags"]["Operations"] = {
                    "CostCenter": _awkward_defined_value(rng, extras)
                }
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
    if platform and flavor == "oci" and rng.random() < 0.1:
        del record["compartmentId"]  # null and absent mean the same on OCI
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
        orjson.dumps(record),
        image_id,
        display_name,
        family.os,
        family.version,
        lifecycle,
        _micros(created),
        family.shapes,
    )


def _awkward_custom(
    rng: random.Random, palette: _Palette, comp: Compartment, count: int
) -> list[Image]:
    start = datetime(2019, 1, 1, tzinfo=UTC)
    images = []
    for serial in range(count):
        index = rng.randrange(len(palette.bases))
        base = palette.bases[index]
        created = start + timedelta(
            seconds=rng.randint(0, 7 * 365 * 86400), microseconds=rng.randint(0, 999999)
        )
        images.append(
            _awkward_image(
                rng,
                palette.flavor,
                palette.extras,
                image_id=ocid("image", rng, palette.code),
                compartment_id=comp.id,
                display_name=None if rng.random() < 0.01 else _awkward_name(rng, serial),
                family=palette.base_family[index],
                lifecycle=_weighted(rng, _LIFECYCLE_CUSTOM),
                created=created,
                base_image_id=base.id if rng.random() < 0.9 else None,
            )
        )
    images.sort(key=lambda img: img.created_us)
    return images


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
    return image._replace(json=orjson.dumps(record))


def _awkward_compartments(rng: random.Random, tenancy_id: str, active: int) -> list[Compartment]:
    """The root plus ``active`` ACTIVE accessible compartments, and some DELETED/inaccessible."""
    root = Compartment(
        tenancy_id, tenancy_id, "root", "ACTIVE", True, "2019-01-01T00:00:00.000Z", 0
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


# -- building a world -------------------------------------------------------------------------


def build_world(
    *,
    seed: int = 42,
    compartments: int = 180,
    regions: tuple[str, ...] = DEFAULT_REGIONS,
    platform_images: int = 60,
    custom_scale: float = 1.0,
    bad_records: float = 0.0,
    flavor: str = "oci",
    dataset: str = "awkward",
    reference_date: date | None = None,
    cache_mb: float = 128.0,
    oci_extras: bool = False,
    shape: str = "skewed",
    empty_share: float = 0.0,
) -> World:
    """Generate the tenancy for ``seed``; the same arguments always give the same world.

    ``dataset`` is ``"awkward"`` by default, so that tests exercise every odd value the API
    can send; the CLI and the demo pass ``"realistic"``. ``reference_date`` is the realistic
    data set's "today" (default: today, UTC): every time lies before its midnight. ``flavor``
    is ``"oci"`` or ``"pca"``. ``bad_records`` is the share of custom images sent malformed
    (no id, text where a number or boolean belongs, an unparseable time). ``cache_mb`` bounds
    the encoded custom images held in memory.

    ``oci_extras`` (flavor ``oci`` only) adds values commercial OCI legitimately sends and
    strict clients reject: defined-tag values that are numbers, booleans or objects, and
    timestamps with nine fractional digits. It is off by default until the connector keeps
    them (issue 12); turn it on to test that it does. ``shape`` is how custom images spread
    over compartments (``SHAPES``: ``skewed`` by default; the demo's ``tenancy``).

    ``empty_share`` is the share of compartments holding no custom image at all (most
    compartments of a real tenancy), which is where Resource Search saves requests.
    """
    if not regions:
        raise ValueError("at least one region is needed")
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}; got {flavor!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}; got {shape!r}")
    if dataset == "realistic":
        day = reference_date or datetime.now(UTC).date()
        reference = datetime(day.year, day.month, day.day, tzinfo=UTC)
    else:
        reference = _AWKWARD_NOW
    rng = random.Random(seed)
    tenancy_id = ocid("tenancy", rng)
    if dataset == "realistic":
        comps = _realistic_compartments(rng, tenancy_id, compartments, reference)
    else:
        comps = _awkward_compartments(rng, tenancy_id, compartments)
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
        flavor=flavor,
        dataset=dataset,
        reference=reference,
        custom_scale=custom_scale,
        bad_records=bad_records,
        cache_bytes=int(cache_mb * 2**20),
        oci_extras=oci_extras,
        shape=shape,
        empty_share=empty_share,
    )
    world.platform_count = platform_images
    world.publish_platform(reference_date or reference.date())
    world.bases = dict(world.platform)
    return world
