"""End to end on both flavors of the emulator: commercial OCI and the Private Cloud Appliance.

Each flavor answers as its platform does: PCA platform images carry ``compartmentId: ""`` and
only ``sortBy=NAME`` is accepted there; OCI accepts only ``DISPLAYNAME`` and (with its extras)
sends defined-tag values of any JSON type and nine-digit fractions. The rows published must
equal the independent reference's, under every ``platform_images`` mode.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from connector.emulator import EmulatorServer, build_world
from tests.helpers import WORLD, arrow_rows, manifest_of, run, write_config
from tests.reference import expected_rows, multiset, normalise_actual


def flavored(flavor: str) -> dict[str, object]:
    return {**WORLD, "flavor": flavor, "oci_extras": flavor == "oci"}


@pytest.mark.parametrize("platform", ["once", "every", "skip"])
@pytest.mark.parametrize("flavor", ["oci", "pca"])
def test_rows_equal_ground_truth(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path, flavor: str, platform: str
) -> None:
    """Sorted by name (each flavor's spelling), every row equals the reference, none rejected."""
    world = build_world(**flavored(flavor))  # type: ignore[arg-type]
    server = make_emulator(world)
    config = write_config(
        tmp_path,
        server,
        oci={"flavor": flavor},
        filters={"sort_by": "NAME"},
        fetch={"platform_images": platform, "workers": 2, "page_size": 300},
    )
    assert 0 == run(config)
    expected = multiset(expected_rows(world, platform))
    rows = arrow_rows(tmp_path)
    assert expected == multiset([normalise_actual(r, platform) for r in rows])
    manifest = manifest_of(tmp_path)
    assert (0, sum(expected.values())) == (manifest["rejects"], manifest["rows"])
    platform_rows = [r for r in rows if r["_is_platform"]]
    assert all(r["compartment_id"] is None for r in platform_rows)
    assert (platform == "skip") == (not platform_rows)


def test_oci_extras_are_present_and_kept(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """The OCI flavor's typed tag values and nine-digit times reach the output, losslessly."""
    world = build_world(**flavored("oci"))  # type: ignore[arg-type]
    server = make_emulator(world)
    assert 0 == run(write_config(tmp_path, server, fetch={"platform_images": "every"}))
    rows = arrow_rows(tmp_path)
    typed = [r for r in rows if r["_extra"] and "definedTags" in orjson.loads(r["_extra"])]
    assert typed, "the emulator was meant to send defined tags that are not strings"
    sent = {
        img["id"]: img
        for region in world.regions
        for comp in world.listable_compartments()
        for img in (i.record() for i in world.listing(region, comp.id))
    }
    nine = [i for i, rec in sent.items() if len((rec.get("timeCreated") or "").split(".")[-1]) > 7]
    assert nine, "the emulator was meant to send nine-digit fractions"


def test_wrong_flavor_is_explained(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A PCA run without flavor pca: the appliance refuses DISPLAYNAME, and the message says
    which key to set."""
    server = make_emulator(build_world(**flavored("pca")))  # type: ignore[arg-type]
    config = write_config(tmp_path, server, filters={"sort_by": "NAME"})
    assert 0 != run(config)
    err = capsys.readouterr().err
    assert "InvalidParameter" in err
    assert 'set oci.flavor = \\"pca\\"' in err  # in a JSON log line
