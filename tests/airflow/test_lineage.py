"""OpenLineage under real Airflow 3: the example DAG run by ``dag.test()`` with Airflow's
OpenLineage provider and its file transport, the events read back.

The run is in a subprocess: the provider reads its configuration once per process (and is
off without a transport), so the other tests' runs emit nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector import schema
from connector.emulator import EmulatorServer
from tests.airflow.conftest import DAGS, FETCH, ROOT
from tests.helpers import DATE, write_config

RUN_DAG = f"""
from datetime import UTC, datetime
from airflow.dag_processing.dagbag import DagBag

dag = DagBag(dag_folder={str(DAGS / "airflow_dag.py")!r}).dags["oci_images_export"]
run = dag.test(logical_date=datetime(2026, 11, 27, tzinfo=UTC))
print("STATE", run.state)
"""


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def completed(found: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """The COMPLETE events of ``task`` (a job is named DAG.TASK)."""
    name = f"oci_images_export.oci_images.{task}"
    return [e for e in found if e["eventType"] == "COMPLETE" and e["job"]["name"] == name]


def test_commit_and_shards_report_their_datasets(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """The commit's COMPLETE event has one output per published dataset, named by the
    naming spec (namespace `file`, the dataset folder's path), with the schema's columns, the
    manifest's row counts and the run's id and date; each shard's names the Compute API of
    each region it listed."""
    server = make_emulator()
    config = write_config(tmp_path, server, snapshot_date=None, fetch=FETCH)
    lake = (tmp_path / "lake").resolve()
    log = tmp_path / "lineage.jsonl"
    transport = {"type": "file", "log_file_path": str(log), "append": True}
    environ = os.environ | {
        "OCI_IMAGES_CONFIG": str(config),
        "OCI_IMAGES_SHARDS": "2",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(transport),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "oci-images-test",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", RUN_DAG],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "STATE success" in done.stdout, done.stderr[-3000:]
    manifest = json.loads(
        (lake / "images" / f"snapshot_date={DATE}" / "_manifest.json").read_text()
    )
    found = events(log)

    (commit,) = completed(found, "commit")
    outputs = {o["name"].rsplit("/", 1)[-1]: o for o in commit["outputs"]}
    assert ["images", *manifest["datasets"]] == list(outputs)
    assert len(outputs) == len(commit["outputs"])
    files = {"images": manifest["files"]} | {
        name: entry["files"] for name, entry in manifest["datasets"].items()
    }
    for name, output in outputs.items():
        assert ("file", str(lake / name)) == (output["namespace"], output["name"])
        columns = [f["name"] for f in output["facets"]["schema"]["fields"]]
        assert [c.name for c in schema.DATASETS[name]] == columns
        statistics = output["outputFacets"]["outputStatistics"]
        assert statistics.pop("_schemaURL").endswith("OutputStatisticsOutputDatasetFacet")
        del statistics["_producer"]
        assert {
            "rowCount": sum(f["rows"] for f in files[name]),
            "size": sum(f["bytes"] for f in files[name]),
            "fileCount": len(files[name]),
        } == statistics
    assert manifest["rows"] == outputs["images"]["outputFacets"]["outputStatistics"]["rowCount"]
    assert manifest["rows"] > 0
    facet = commit["run"]["facets"]["ociImagesRun"]
    assert (manifest["run_id"], DATE, "succeeded") == (
        facet["runId"],
        facet["snapshotDate"],
        facet["status"],
    )
    assert [] == commit["inputs"]

    shards = completed(found, "export_shard")
    assert 2 == len(shards)
    read = {(i["namespace"], i["name"]) for shard in shards for i in shard["inputs"]}
    tenancy = server.world.tenancy_id
    expected = {
        (server.url, f"{region}/20160918/images/{tenancy}/{region}")
        for region in server.world.regions
    }
    assert expected == read
    assert {manifest["run_id"]} == {s["run"]["facets"]["ociImagesRun"]["runId"] for s in shards}


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/lake/oci/images", ("file", "/lake/oci/images")),
        ("file:///lake/oci/images", ("file", "/lake/oci/images")),
        ("s3://bucket/prefix/images", ("s3://bucket", "prefix/images")),
        ("gs://bucket/images", ("gs://bucket", "images")),
        (
            "abfs://lake@account.dfs.core.windows.net/oci/images",
            ("abfs://lake@account.dfs.core.windows.net", "oci/images"),
        ),
        ("oci://bucket@tenancyns/oci/images", ("oci://bucket@tenancyns", "oci/images")),
    ],
    ids=["path", "file", "s3", "gcs", "azure", "oci-object-storage"],
)
def test_dataset_names_follow_the_naming_spec(location: str, expected: tuple[str, str]) -> None:
    """Namespace scheme://authority (the bucket), name the path within it; `file` and the
    absolute path for a local folder."""
    from connector.airflow.lineage import dataset_name

    assert expected == dataset_name(location)


@pytest.mark.parametrize(
    ("table", "namespace", "name"),
    [
        (
            {"format": "delta", "uri": "s3://lake/oci/images", "version": 4},
            "s3://lake",
            "oci/images",
        ),
        (
            {
                "format": "iceberg",
                "table": "oci_images.images",
                "location": "oci://lake@ns/oci/images",
                "snapshot_id": 7,
            },
            "oci://lake@ns",
            "oci/images",
        ),
    ],
    ids=["delta", "iceberg"],
)
def test_a_table_is_named_by_its_location(
    emulator: EmulatorServer, tmp_path: Path, table: dict[str, Any], namespace: str, name: str
) -> None:
    """With a table format, `images` is the table at its location (the manifest's table
    record), an Iceberg table also by its catalog name; the companions stay folders."""
    import dataclasses

    import connector
    from connector.airflow.lineage import committed

    settings = connector.load_config(
        write_config(tmp_path, emulator, fetch=FETCH), [f'output.uri="{tmp_path / "lake"}"']
    )
    outcome = connector.run(settings)
    assert outcome.manifest is not None
    manifest = dataclasses.replace(outcome.manifest, table=table)
    lineage = committed(settings, dataclasses.replace(outcome, manifest=manifest))

    images, *companions = lineage.outputs
    assert (namespace, name) == (images.namespace, images.name)
    symlinks = images.facets.get("symlinks")
    if table["format"] == "iceberg":
        assert symlinks is not None
        assert ["oci_images.images"] == [i.name for i in symlinks.identifiers]
    else:
        assert symlinks is None
    assert [("file", str((tmp_path / "lake" / "compartments").resolve()))] == [
        (c.namespace, c.name) for c in companions
    ]
