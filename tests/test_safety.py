"""Names checked before they become paths, and the one guarded door for deletions."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from connector import names
from connector.errors import ConfigError
from connector.lake import door
from connector.oci import auth

HOSTILE_RUN_IDS = [
    "../images",
    "../..",
    "..",
    ".",
    "a/b",
    "a\\b",
    "",
    ".hidden",
    "_locks",
    "-rf",
    "a..b",
    "x" * 129,
    "a\x00b",
    "a\nb",
    "café",
    " a",
    "a b",
    "C:",
    "%2e%2e",
    "run/../../etc",
]

REGIONS = [
    "us-ashburn-1",
    "us-gov-ashburn-1",
    "eu-dcc-milan-1",
    "us-langley-1",
    "ap-dcc-canberra-1",
    "sa-riodejaneiro-1",
    "me-abudhabi-4",
    "uk-gov-london-1",
]

HOSTILE_REGIONS = [
    "/../",
    "..",
    "us-ashburn-1/..",
    "../us-ashburn-1",
    "US-ASHBURN-1",
    "us-ashburn-1\n",
    "us_ashburn_1",
    "us-ashburn",
    "iad",
    "",
    "a-b-1",
    "us-" + "a" * 80 + "-1",
    None,
    7,
]


class TestRunIds:
    @pytest.mark.parametrize(
        "run_id", ["20261127T081500Z-a1b2c3", "manual.2026-11-27", "r", "A_b-c.9", "x" * 128]
    )
    def test_safe_run_ids_pass(self, run_id: str) -> None:
        """Letters, digits, dot, underscore and dash, up to 128 characters, are accepted."""
        assert run_id == names.check_run_id(run_id)

    @pytest.mark.parametrize("run_id", HOSTILE_RUN_IDS, ids=repr)
    def test_hostile_run_ids_are_refused_naming_the_key(self, run_id: str) -> None:
        """Separators, dot segments, hidden names and odd characters are a ConfigError."""
        with pytest.raises(ConfigError) as caught:
            names.check_run_id(run_id)
        assert "--run-id" == caught.value.key

    @pytest.mark.parametrize(
        "text",
        [
            "scheduled__2026-11-27T00:00:00+00:00",
            "manual__2026-11-27T08:15:00.123456+00:00",
            "../..",
            "x" * 400,
            "ok-already",
        ],
    )
    def test_run_id_from_any_text_is_valid_and_stable(self, text: str) -> None:
        """Any text maps to a valid run id, the same each time."""
        derived = names.run_id_from(text)
        assert derived == names.check_run_id(derived)
        assert derived == names.run_id_from(text)

    def test_run_id_from_keeps_distinct_inputs_distinct(self) -> None:
        """Two texts that clean up alike still give two run ids."""
        assert names.run_id_from("a:b") != names.run_id_from("a+b")


class TestRegions:
    @pytest.mark.parametrize("region", REGIONS)
    def test_real_region_names_pass(self, region: str) -> None:
        """Every realm's spelling (gov, dcc, one-word) follows the grammar."""
        assert region == names.check_region(region)

    @pytest.mark.parametrize("region", HOSTILE_REGIONS, ids=repr)
    def test_bad_region_from_the_service_is_unsafe(self, region: object) -> None:
        """A region from the API that is not a region name never becomes a path."""
        with pytest.raises(names.UnsafeNameError):
            names.check_region(region)

    def test_bad_region_from_the_config_is_a_config_error(self) -> None:
        """From the config, the error names the key."""
        with pytest.raises(ConfigError) as caught:
            names.check_region("../x", key="oci.regions[0]")
        assert "oci.regions[0]" == caught.value.key


class TestOtherNames:
    @pytest.mark.parametrize("value", ["2026-02-30", "2026-1-1", "../2026-01-01", "", None])
    def test_snapshot_dates_must_be_real_dates(self, value: object) -> None:
        """Only a real YYYY-MM-DD date is a snapshot date."""
        with pytest.raises(ConfigError):
            names.check_snapshot_date(value)

    @pytest.mark.parametrize("value", [".", "..", "a/b", "", "a\x00", "a\\b", "é" * 200])
    def test_unsafe_components_are_refused(self, value: str) -> None:
        """A path component is one plain name of at most 255 bytes."""
        with pytest.raises(names.UnsafeNameError):
            names.check_component(value)

    def test_relative_paths_are_checked_component_by_component(self) -> None:
        """Manifest paths cannot climb out of their partition."""
        assert "region=us-ashburn-1/part-00000.parquet" == names.check_relative(
            "region=us-ashburn-1/part-00000.parquet"
        )
        for bad in ("../x.parquet", "/etc/passwd", "region=a//b", "a/./b"):
            with pytest.raises(names.UnsafeNameError):
                names.check_relative(bad)

    @pytest.mark.parametrize("uri", ["", "   ", "/", "//", "/..", "file:///", "s3://", "s3:///"])
    def test_root_and_empty_outputs_are_refused(self, uri: str) -> None:
        """output.uri may not be empty or the root of a disk or store."""
        with pytest.raises(ConfigError) as caught:
            names.check_output_uri(uri)
        assert "output.uri" == caught.value.key

    @pytest.mark.parametrize("uri", ["out", "/tmp/lake", "s3://bucket/prefix", "s3://bucket"])
    def test_ordinary_outputs_pass(self, uri: str) -> None:
        """Folders and bucket paths are fine."""
        assert uri == names.check_output_uri(uri)


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """An output with staging, trash, a published partition and a sibling team's folder."""
    base = tmp_path / "lake"
    for folder in (
        "_staging/run-1/attempt/images",
        "_trash/run-1/images/snapshot_date=2026-11-26",
        "images/snapshot_date=2026-11-26/region=us-ashburn-1",
    ):
        (base / folder).mkdir(parents=True)
        (base / folder / "f").write_text("x")
    (tmp_path / "sibling").mkdir()
    (tmp_path / "sibling" / "data").write_text("precious")
    return base


def published(base: Path) -> Path:
    return base / "images/snapshot_date=2026-11-26/region=us-ashburn-1/f"


class TestGuardedDelete:
    def test_staging_and_trash_may_be_deleted(self, lake: Path) -> None:
        """What lives in _staging and _trash is ours to delete."""
        fs = pafs.LocalFileSystem()
        door.guarded_delete(fs, str(lake), f"{lake}/_staging/run-1")
        door.guarded_delete(fs, str(lake), f"{lake}/_trash/run-1")
        assert not (lake / "_staging/run-1").exists()
        assert not (lake / "_trash/run-1").exists()
        assert published(lake).exists()

    @pytest.mark.parametrize(
        "target",
        [
            "{base}",
            "{base}/",
            "{base}/images",
            "{base}/images/snapshot_date=2026-11-26",
            "{base}/_staging",
            "{base}/_trash",
            "{base}/_staging/../images",
            "{base}/_staging/run-1/../../images",
            "{base}/../sibling",
            "{base}/_staging//run-1",
            "{base}/_staging/./run-1",
            "{base}x/_staging/run-1",
            "/",
        ],
    )
    def test_anything_else_is_refused_and_nothing_is_deleted(self, lake: Path, target: str) -> None:
        """Roots, published data, dot segments and siblings are never deleted."""
        with pytest.raises(door.DeletionRefused):
            door.guarded_delete(pafs.LocalFileSystem(), str(lake), target.format(base=lake))
        assert published(lake).exists()
        assert (lake / "_staging/run-1/attempt/images/f").exists()
        assert (lake.parent / "sibling/data").exists()

    def test_a_link_planted_in_staging_is_not_followed(self, lake: Path) -> None:
        """A symbolic link inside _staging pointing elsewhere cannot carry a deletion there."""
        os.symlink(lake.parent / "sibling", lake / "_staging/evil")
        with pytest.raises(door.DeletionRefused):
            door.guarded_delete(pafs.LocalFileSystem(), str(lake), f"{lake}/_staging/evil/data")
        # The link itself may go; its target stays.
        door.guarded_delete(pafs.LocalFileSystem(), str(lake), f"{lake}/_staging/evil")
        assert not (lake / "_staging/evil").is_symlink()
        assert "precious" == (lake.parent / "sibling/data").read_text()

    def test_superseded_files_of_the_partition_may_be_deleted(self, lake: Path) -> None:
        """An object-store commit may delete exactly the old files it lists."""
        partition = f"{lake}/images/snapshot_date=2026-11-26"
        old = f"{partition}/region=us-ashburn-1/f"
        superseded = door.Superseded(partition, frozenset({old}))
        door.guarded_delete(pafs.LocalFileSystem(), str(lake), old, superseded=superseded)
        assert not published(lake).exists()

    def test_superseded_must_stay_inside_a_published_partition(self, lake: Path) -> None:
        """A superseded list cannot name files elsewhere, or a partition that is not one."""
        fs = pafs.LocalFileSystem()
        outside = f"{lake}/../sibling/data"
        with pytest.raises(door.DeletionRefused):
            door.guarded_delete(
                fs,
                str(lake),
                outside,
                superseded=door.Superseded(f"{lake}/images", frozenset({outside})),
            )
        fake = f"{lake}/images/region=x/f"
        with pytest.raises(door.DeletionRefused):
            door.guarded_delete(
                fs,
                str(lake),
                fake,
                superseded=door.Superseded(f"{lake}/images", frozenset({fake})),
            )
        assert (lake.parent / "sibling/data").exists()

    def test_empty_staging_folders_are_removed_only_when_empty(self, lake: Path) -> None:
        """rmdir semantics: a folder with something in it stays."""
        fs = pafs.LocalFileSystem()
        assert not door.remove_empty_dir(fs, str(lake), f"{lake}/_staging")
        (lake / "_staging/empty").mkdir()
        assert door.remove_empty_dir(fs, str(lake), f"{lake}/_staging/empty")
        with pytest.raises(door.DeletionRefused):
            door.remove_empty_dir(fs, str(lake), f"{lake}/images")


class TestPermissions:
    def test_a_key_readable_by_others_is_warned_about(self, tmp_path: Path) -> None:
        """Group- or world-readable key files get the OCI CLI's warning, with the fix."""
        key = tmp_path / "key.pem"
        key.write_text("not a real key")
        key.chmod(0o644)
        message = auth.warn_if_exposed(key, "API key")
        assert message is not None
        assert f"chmod 600 {key}" in message

    def test_a_private_key_file_is_fine(self, tmp_path: Path) -> None:
        """0600 raises no warning."""
        key = tmp_path / "key.pem"
        key.write_text("not a real key")
        key.chmod(0o600)
        assert auth.warn_if_exposed(key, "API key") is None
