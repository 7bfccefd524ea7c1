"""``output.keep_days``: old dates and run records go after a successful commit, through the
door's rule for expired partitions, on plain files and in Delta and Iceberg tables."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import orjson
import pyarrow.fs as pafs
import pytest

from connector import config
from connector.emulator import EmulatorServer
from connector.lake import door, lock, retention, storage, tables
from tests import helpers
from tests.helpers import write_config

oci_images = partial(helpers.oci_images, "--log-level", "info", "--log-format", "json", timeout=300)

DAYS = ("2026-11-24", "2026-11-25", "2026-11-26")


def dates(lake: Path, dataset: str) -> list[str]:
    folder = lake / dataset
    return sorted(p.name.split("=", 1)[1] for p in folder.glob("snapshot_date=*"))


def recorded_dates(lake: Path) -> list[str]:
    return sorted(
        orjson.loads(p.read_bytes())["snapshot_date"] for p in (lake / "_runs").glob("*.json")
    )


@pytest.mark.parametrize("output", [{}, {"table_format": "delta"}, {"table_format": "iceberg"}])
def test_keep_days_prunes_old_dates_after_a_commit(
    emulator: EmulatorServer, tmp_path: Path, output: dict[str, str]
) -> None:
    """Three daily runs with keep_days = 1: the third removes the first date's partitions of
    every dataset, its run record and (with a table format) its rows in the table; the two
    dates kept are untouched."""
    lake = tmp_path / "lake"
    for day in DAYS:
        settings = {**output, "snapshot_date": day, "keep_days": 1, "changes": True}
        path = write_config(tmp_path, emulator, output=settings)
        result = oci_images("run", "--config", str(path))
        assert 0 == result.returncode, result.stderr
    for dataset in ("images", "compartments", "changes"):
        assert list(DAYS[1:]) == dates(lake, dataset), dataset
    assert list(DAYS[1:]) == recorded_dates(lake)
    events = [orjson.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    pruned = next(e for e in events if e["event"] == "retention.pruned")
    assert ([DAYS[0]], DAYS[1], 1) == (pruned["dates"], pruned["keep_from"], pruned["records"])
    if output:
        settings_ = config.load(path)
        store = storage.resolve(str(lake))
        table = tables.for_output(settings_.output, store)
        assert table is not None
        assert 0 == sum(b.num_rows for b in table.scan(DAYS[0]))
        kept = orjson.loads(
            (lake / "images" / f"snapshot_date={DAYS[1]}" / "_manifest.json").read_bytes()
        )
        assert kept["rows"] == sum(b.num_rows for b in table.scan(DAYS[1])) > 0


def test_keep_days_zero_keeps_everything(emulator: EmulatorServer, tmp_path: Path) -> None:
    """The default keeps every date and record."""
    for day in DAYS:
        path = write_config(tmp_path, emulator, output={"snapshot_date": day})
        assert 0 == oci_images("run", "--config", str(path)).returncode
    assert list(DAYS) == dates(tmp_path / "lake", "images") == recorded_dates(tmp_path / "lake")


def partition(lake: Path, dataset: str, day: str, marker: str = "_SUCCESS") -> Path:
    folder = lake / dataset / f"snapshot_date={day}"
    (folder / "region=r").mkdir(parents=True)
    (folder / "region=r" / "part-00000.parquet").write_bytes(b"x")
    (folder / "_manifest.json").write_text("{}")
    if marker:
        (folder / marker).write_text("")
    return folder


def test_prune_keeps_the_newest_complete_snapshot_and_dates_in_use(tmp_path: Path) -> None:
    """When the newer dates are only partial, the newest complete one stays however old; a
    date another live process holds is skipped; a date older than that goes."""
    lake = tmp_path / "lake"
    store = storage.resolve(str(lake))
    oldest = partition(lake, "images", "2026-11-01")
    partition(lake, "compartments", "2026-11-01")
    complete = partition(lake, "images", "2026-11-02")
    partition(lake, "compartments", "2026-11-02")
    partial = partition(lake, "images", "2026-11-03", "_PARTIAL")
    busy = partition(lake, "images", "2026-11-04", "_PARTIAL")
    recent = partition(lake, "images", "2026-11-09", "_PARTIAL")
    other = lock.Owner.me("r-other", lock.new_attempt_id())
    me = lock.Owner.me("r-prune", lock.new_attempt_id())
    with lock.date_lock(store.fs, store.base, "2026-11-04", other):
        pruned = retention.prune(store, "2026-11-10", 3, me, run_id="r-prune")
    assert ("2026-11-07", ("2026-11-01", "2026-11-03")) == (pruned.keep_from, pruned.dates)
    assert ("2026-11-02", "2026-11-04") == pruned.skipped
    assert not oldest.exists()
    assert not partial.exists()
    assert not (lake / "compartments" / "snapshot_date=2026-11-01").exists()
    assert complete.exists()
    assert busy.exists()
    assert recent.exists()
    assert (lake / "compartments" / "snapshot_date=2026-11-02").exists()


class TestExpiryRule:
    """The door's rule for expired partitions and run records, hit directly."""

    def lake(self, tmp_path: Path) -> tuple[pafs.FileSystem, str, Path]:
        lake = tmp_path / "lake"
        partition(lake, "images", "2026-11-01")
        partition(lake, "images", "2026-11-02", "_PARTIAL")
        partition(lake, "images", "2026-11-05")
        return pafs.LocalFileSystem(), lake.as_posix(), lake

    def test_an_old_partition_goes(self, tmp_path: Path) -> None:
        fs, base, lake = self.lake(tmp_path)
        rule = door.expiry(fs, base, "2026-11-04")
        assert "2026-11-05" == rule.newest_complete
        door.guarded_delete(fs, base, f"{base}/images/snapshot_date=2026-11-01", expired=rule)
        assert not (lake / "images" / "snapshot_date=2026-11-01").exists()

    @pytest.mark.parametrize(
        "target",
        [
            "images/snapshot_date=2026-11-05",  # not before keep_from
            "images",  # a dataset's root
            "images/snapshot_date=2026-11-01/region=r",  # part of a partition
            "images/snapshot_date=2026-11-01/_SUCCESS",
            "elsewhere/snapshot_date=2026-11-01",  # not a dataset
            "_runs",
        ],
    )
    def test_anything_else_is_refused(self, tmp_path: Path, target: str) -> None:
        fs, base, lake = self.lake(tmp_path)
        rule = door.expiry(fs, base, "2026-11-04")
        (lake / "elsewhere" / "snapshot_date=2026-11-01").mkdir(parents=True)
        (lake / "_runs").mkdir()
        with pytest.raises(door.DeletionRefused):
            door.guarded_delete(fs, base, f"{base}/{target}", expired=rule)
        assert (lake / target).exists()

    def test_never_the_newest_complete_snapshot(self, tmp_path: Path) -> None:
        fs, base, lake = self.lake(tmp_path)
        rule = door.expiry(fs, base, "2026-12-01")
        with pytest.raises(door.DeletionRefused, match="newest complete"):
            door.guarded_delete(fs, base, f"{base}/images/snapshot_date=2026-11-05", expired=rule)
        door.guarded_delete(fs, base, f"{base}/images/snapshot_date=2026-11-02", expired=rule)
        assert (lake / "images" / "snapshot_date=2026-11-05").exists()
        assert not (lake / "images" / "snapshot_date=2026-11-02").exists()

    def test_never_a_date_someone_else_locks(self, tmp_path: Path) -> None:
        fs, base, lake = self.lake(tmp_path)
        owner = lock.Owner.me("r-live", lock.new_attempt_id())
        target = f"{base}/images/snapshot_date=2026-11-01"
        with lock.date_lock(fs, base, "2026-11-01", owner):
            with pytest.raises(door.DeletionRefused, match="holds it"):
                door.guarded_delete(fs, base, target, expired=door.expiry(fs, base, "2026-11-04"))
            held = door.expiry(fs, base, "2026-11-04", held=("2026-11-01",))
            door.guarded_delete(fs, base, target, expired=held)
        assert not (lake / "images" / "snapshot_date=2026-11-01").exists()

    def test_run_records_by_their_date(self, tmp_path: Path) -> None:
        fs, base, lake = self.lake(tmp_path)
        runs = lake / "_runs"
        runs.mkdir()
        (runs / "r-old.json").write_bytes(orjson.dumps({"snapshot_date": "2026-11-01"}))
        (runs / "r-new.json").write_bytes(orjson.dumps({"snapshot_date": "2026-11-04"}))
        (runs / "r-bad.json").write_text("not json")
        rule = door.expiry(fs, base, "2026-11-04")
        door.guarded_delete(fs, base, f"{base}/_runs/r-old.json", expired=rule)
        for kept in ("r-new.json", "r-bad.json"):
            with pytest.raises(door.DeletionRefused):
                door.guarded_delete(fs, base, f"{base}/_runs/{kept}", expired=rule)
        assert sorted(p.name for p in runs.iterdir()) == ["r-bad.json", "r-new.json"]
