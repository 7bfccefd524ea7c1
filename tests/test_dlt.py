"""The dlt source (``connector.dlt``): the emulator's tenancy loaded by dlt into DuckDB and into
its filesystem destination (Parquet), compared with the independent reference
(``tests/reference.py``) and with the connector's own export of the same tenancy."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.dataset as ds
import pytest

dlt = pytest.importorskip("dlt")

from connector import ConfigError, ConnectorError, config  # noqa: E402
from connector.dlt import oci_images  # noqa: E402
from connector.emulator import EmulatorServer, build_world  # noqa: E402
from tests.doc_blocks import blocks  # noqa: E402
from tests.helpers import (  # noqa: E402
    DATE,
    WORLD,
    arrow_rows,
    run,
    settings_for,
    write_config,
)
from tests.reference import expected_rows, multiset, normalise_actual  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def tenancy(make_emulator: Callable[..., EmulatorServer]) -> EmulatorServer:
    return make_emulator(build_world(**WORLD))  # type: ignore[arg-type]


def pipeline(tmp_path: Path, destination: Any, name: str = "oci") -> Any:
    """A dlt pipeline of its own under ``tmp_path`` (its state and working folder too)."""
    return dlt.pipeline(
        name,
        destination=destination,
        dataset_name="oci",
        pipelines_dir=str(tmp_path / "pipelines"),
    )


def exported(tmp_path: Path, server: EmulatorServer) -> dict[str, dict[str, Any]]:
    """The connector's own export of the tenancy (``oci-images run``), rows by id."""
    assert 0 == run(write_config(tmp_path / "own", server, fetch={"workers": 0}))
    return {row["id"]: row for row in arrow_rows(tmp_path / "own")}


def duckdb_table(path: Path, table: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(path), read_only=True) as con:
        relation = con.sql(f"SELECT * FROM oci.{table}")
        names = relation.columns
        return [dict(zip(names, values, strict=True)) for values in relation.fetchall()]


def without_dlt_columns(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_dlt_")}


def test_duckdb_load_is_the_export(tenancy: EmulatorServer, tmp_path: Path) -> None:
    """A replace load into DuckDB holds exactly the reference's images and the export's
    compartments: same ids, same values, nested columns as JSON."""
    own = exported(tmp_path, tenancy)
    database = tmp_path / "tenancy.duckdb"
    source = oci_images(settings_for(tenancy, tmp_path / "unused"))
    info = pipeline(tmp_path, dlt.destinations.duckdb(str(database))).run(source)
    assert not info.has_failed_jobs

    loaded = {row["id"]: row for row in duckdb_table(database, "images")}
    reference = expected_rows(tenancy.world, "once")
    assert {r["id"] for r in reference} == set(loaded) == set(own)
    assert len(loaded) == len(reference)  # no id twice
    for image_id, row in loaded.items():
        mine = own[image_id]
        for column in ("compartment_id", "display_name", "region", "_is_platform", "size_in_mbs"):
            assert mine[column] == row[column], (image_id, column)
        assert mine["time_created"] == row["time_created"]
        tags = orjson.loads(row["freeform_tags"]) if row["freeform_tags"] is not None else None
        assert mine["freeform_tags"] == tags
        volumes = row["image_volume_details__data_volumes"]
        assert mine["image_volume_details__data_volumes"] == (
            orjson.loads(volumes) if volumes is not None else None
        )

    compartments = duckdb_table(database, "compartments")
    published = ds.dataset(tmp_path / "own" / "lake" / "compartments", format="parquet")
    own_compartments = {r["id"]: r for r in published.to_table().to_pylist()}
    assert {r["id"] for r in compartments} == set(own_compartments)
    for row in compartments:
        assert (row["path"], row["depth"], row["_exported"]) == (
            own_compartments[row["id"]]["path"],
            own_compartments[row["id"]]["depth"],
            own_compartments[row["id"]]["_exported"],
        )
    schema = pipeline(tmp_path, dlt.destinations.duckdb(str(database))).default_schema
    assert ["id"] == [
        n for n, c in schema.get_table_columns("images").items() if c.get("primary_key")
    ]
    assert schema.get_table_columns("images")["defined_tags"]["data_type"] == "json"


def test_filesystem_parquet_rows_equal_the_reference(
    tenancy: EmulatorServer, tmp_path: Path
) -> None:
    """Loaded as Parquet into a local folder (dlt's filesystem destination), every image row
    equals the reference field by field."""
    bucket = tmp_path / "bucket"
    destination = dlt.destinations.filesystem(bucket_url=bucket.as_uri())
    source = oci_images(settings_for(tenancy, tmp_path / "unused"))
    info = pipeline(tmp_path, destination).run(source, loader_file_format="parquet")
    assert not info.has_failed_jobs
    files = sorted((bucket / "oci" / "images").glob("*.parquet"))
    assert files
    rows = ds.dataset(files, format="parquet").to_table().to_pylist(maps_as_pydicts="strict")
    actual = [normalise_actual(without_dlt_columns(r), "once") for r in rows]
    assert multiset(expected_rows(tenancy.world, "once")) == multiset(actual)
    assert {str(r["snapshot_date"]) for r in rows} == {DATE}


def test_dlt_config_and_secrets(tenancy: EmulatorServer, tmp_path: Path) -> None:
    """``oci_images()`` with nothing passed: the connector's keys from
    ``[sources.oci_images.connector]`` in .dlt/config.toml, the API key from
    ``[sources.oci_images.credentials]`` in .dlt/secrets.toml (in a process of its own, as a
    dlt project runs)."""
    assert tenancy.config_file is not None
    profile = configparser.ConfigParser()
    profile.read(tenancy.config_file)
    default = profile["DEFAULT"]
    key = Path(default["key_file"]).read_text()
    dot = tmp_path / ".dlt"
    dot.mkdir()
    regions = orjson.dumps(list(tenancy.world.regions)).decode()
    # The connector's own TOML, named by dlt's config, under the connector tables.
    (tmp_path / "export.toml").write_text(
        f'[fetch]\nworkers = 0\n[output]\nsnapshot_date = "{DATE}"\n'
    )
    (dot / "config.toml").write_text(
        "[sources.oci_images]\n"
        'config = "export.toml"\n'
        "[sources.oci_images.connector.oci]\n"
        f'endpoint = "{tenancy.endpoint_template}"\n'
        f"regions = {regions}\n"
    )
    (dot / "secrets.toml").write_text(
        "[sources.oci_images.credentials]\n"
        f'user = "{default["user"]}"\n'
        f'fingerprint = "{default["fingerprint"]}"\n'
        f'tenancy = "{default["tenancy"]}"\n'
        f'region = "{default["region"]}"\n'
        f'key_content = """{key}"""\n'
    )
    script = (
        "import dlt\n"
        "from connector.dlt import oci_images\n"
        "p = dlt.pipeline('oci', destination=dlt.destinations.duckdb('tenancy.duckdb'),\n"
        "                 dataset_name='oci', pipelines_dir='pipelines')\n"
        "assert not p.run(oci_images()).has_failed_jobs\n"
    )
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("OCI_", "SOURCES__"))}
    environ = inherited | {"PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert 0 == done.returncode, done.stderr[-3000:]
    loaded = duckdb_table(tmp_path / "tenancy.duckdb", "images")
    assert {r["id"] for r in expected_rows(tenancy.world, "once")} == {r["id"] for r in loaded}
    assert {DATE} == {str(r["snapshot_date"]) for r in loaded}  # from export.toml
    # dlt keeps a trace of the configuration it resolved (pipelines/oci/trace.pickle): the key
    # is declared a secret, so the trace holds no part of it.
    body = key.splitlines()[1].encode()
    written = [p for p in (tmp_path / "pipelines").rglob("*") if p.is_file()]
    assert any(p.name == "trace.pickle" for p in written)
    assert [] == [str(p) for p in written if body in p.read_bytes()]


def test_a_bad_configuration_names_the_key_and_sends_nothing(
    tenancy: EmulatorServer, tmp_path: Path
) -> None:
    settings = settings_for(tenancy, tmp_path / "unused")
    before = tenancy.stats()["requests"]
    with pytest.raises(ConfigError) as bad_key:
        oci_images(settings, connector={"fetch": {"page_size": 0}})
    assert bad_key.value.key == "fetch.page_size"
    with pytest.raises(ConfigError) as repeated:
        oci_images(settings, connector={"fetch": {"platform_images": "every"}}, history=True)
    assert repeated.value.key == "fetch.platform_images"
    secret = "-----BEGIN PRIVATE KEY-----\nnot-a-key\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ConfigError) as missing:
        oci_images(settings, credentials={"user": "u", "key_content": secret})
    assert missing.value.key == "sources.oci_images.credentials.fingerprint"
    fields = {"user": "u", "fingerprint": "f", "tenancy": "t", "region": "us-ashburn-1"}
    with pytest.raises(ConfigError) as unreadable:
        oci_images(settings, credentials={**fields, "key_content": secret, "pass_phrase": "pw1"})
    assert unreadable.value.key == "sources.oci_images.credentials.key_content"
    for error in (missing.value, unreadable.value):
        assert "not-a-key" not in str(error)
        assert "pw1" not in str(error)
    assert before == tenancy.stats()["requests"]


def test_importing_the_connector_does_not_import_dlt() -> None:
    script = "import sys, connector\nassert 'dlt' not in sys.modules, 'dlt imported'\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 0 == done.returncode, done.stderr


def test_history_records_no_version_when_nothing_changed(
    tenancy: EmulatorServer, tmp_path: Path
) -> None:
    """Two days of the same tenancy merged with ``history=True`` (scd2): one version per image
    and compartment, none closed, although every run has its own run id and date."""
    database = tmp_path / "history.duckdb"
    for day in (DATE, "2026-11-28"):
        settings = settings_for(tenancy, tmp_path / "unused").replace(
            **{"output.snapshot_date": day}
        )
        destination = dlt.destinations.duckdb(str(database))
        info = pipeline(tmp_path, destination).run(oci_images(settings, history=True))
        assert not info.has_failed_jobs
    images = duckdb_table(database, "images")
    assert len({r["id"] for r in expected_rows(tenancy.world, "once")}) == len(images)
    assert all(r["_dlt_valid_to"] is None for r in images)
    assert "_run_id" not in images[0]
    compartments = duckdb_table(database, "compartments")
    assert len({r["id"] for r in compartments}) == len(compartments)


def test_the_guides_dlt_configuration_is_the_connectors() -> None:
    """The guide's ``.dlt/config.toml`` holds keys the connector knows, in its sections."""
    guide = ROOT / "docs" / "guides" / "dlt.md"
    dlt_config = next(b for b in blocks(guide) if "[sources.oci_images.connector" in b.text)
    values = tomllib.loads(dlt_config.text)["sources"]["oci_images"]["connector"]
    settings = config.load(None, values=values, environ={})
    assert ("us-ashburn-1", "eu-frankfurt-1") == tuple(settings.oci.regions)


def test_a_one_line_key_with_escapes_is_read(tenancy: EmulatorServer) -> None:
    """A PEM given in one line with ``\\n`` escapes (an environment variable) signs as the key."""
    from connector.dlt import credentials_from

    assert tenancy.config_file is not None
    profile = configparser.ConfigParser()
    profile.read(tenancy.config_file)
    default = dict(profile["DEFAULT"])
    one_line = Path(default.pop("key_file")).read_text().strip().replace("\n", "\\n")
    credentials = credentials_from({**default, "key_content": one_line})
    assert credentials.tenancy == default["tenancy"]


def test_history_closes_retired_platform_images(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """A month on, each platform line published a new build and its oldest left: with
    ``history=True`` the retired builds' versions are closed (``_dlt_valid_to``), the new ones
    open, and every other image keeps its one version."""
    world = build_world(**WORLD, reference_date=date.fromisoformat(DATE))  # type: ignore[arg-type]
    server = make_emulator(world)
    database = tmp_path / "history.duckdb"
    listed = {}
    for day in (DATE, "2026-12-27"):
        listed[day] = {i.id for r in world.regions for i in world.platform[r]}
        settings = settings_for(server, tmp_path / "unused").replace(
            **{"output.snapshot_date": day}
        )
        destination = dlt.destinations.duckdb(str(database))
        info = pipeline(tmp_path, destination).run(oci_images(settings, history=True))
        assert not info.has_failed_jobs
        if day == DATE:
            world.publish_platform(date.fromisoformat(DATE) + timedelta(days=30))
    retired = listed[DATE] - listed["2026-12-27"]
    assert retired
    images = duckdb_table(database, "images")
    closed = {r["id"] for r in images if r["_dlt_valid_to"] is not None}
    assert retired == closed
    ids = [r["id"] for r in images]
    assert len(ids) == len(set(ids))  # one version each: nothing else changed
    assert listed["2026-12-27"] <= set(ids)


def test_a_failed_export_loads_nothing(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """An export that fails (every request answered with a server error, no retry) fails the
    dlt run with the connector's error, and nothing is loaded."""
    server = make_emulator(build_world(**WORLD), fault_rate=1.0)  # type: ignore[arg-type]
    settings = settings_for(server, tmp_path / "unused", fetch={"max_attempts": 1})
    database = tmp_path / "failed.duckdb"
    from dlt.pipeline.exceptions import PipelineStepFailed

    with pytest.raises(PipelineStepFailed) as failed:
        pipeline(tmp_path, dlt.destinations.duckdb(str(database))).run(oci_images(settings))
    causes = []
    error: BaseException | None = failed.value
    while error is not None:
        causes.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, ConnectorError) for e in causes)
    assert "opc-request-id" in str(failed.value)  # the connector's message reaches dlt's
    with duckdb.connect(str(database)) as con:
        tables = {
            row[0] for row in con.sql("SELECT table_name FROM information_schema.tables").fetchall()
        }
    assert "images" not in tables
