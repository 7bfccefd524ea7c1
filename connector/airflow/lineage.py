"""OpenLineage for the operators: what a commit published, and what a shard read.

Airflow 3's lineage is OpenLineage. Its provider (``apache-airflow-providers-openlineage``)
asks an operator for ``get_openlineage_facets_on_complete`` once the task has succeeded; the
operators here answer with what this module builds from the run's settings and manifest:

- the commit: one output dataset per dataset it published (``images``, ``compartments``, and
  ``changes`` when written), never one per file (the flood users of the S3 hook complain of),
  with the dataset's schema (from ``connector.schema``, the one definition), its output
  statistics (rows, bytes, files, from the manifest) and the run's id and snapshot date;
- a shard: the OCI Compute API it read, one input dataset per tenancy and region.

Names follow OpenLineage's naming spec: the namespace is the datasource (``scheme://authority``)
and the name the path within it: ``file`` and the absolute path for a local folder,
``s3://bucket`` (``gs://``, ``abfs://container@account``…) and the key for object stores,
``oci://bucket@namespace`` and the object name for OCI Object Storage (which the spec does not
list; its general rule gives this). A Delta or Iceberg table is named by its location, as the
Spark integration names tables; an Iceberg table also carries its catalog name
(``namespace.table``) as a symlink.

Everything OpenLineage is imported here, and this module only when the provider asks: the
operators work without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attr
import pyarrow as pa  # type: ignore[import-untyped]  # no stubs in the Airflow environment
from airflow.providers.openlineage.extractors import OperatorLineage
from openlineage.client.event_v2 import InputDataset, OutputDataset
from openlineage.client.facet_v2 import (
    RunFacet,
    output_statistics_output_dataset,
    schema_dataset,
    symlinks_dataset,
)

import connector
from connector import ConnectorError, Credentials, RunOutcome, Settings, schema
from connector.formats import FileInfo
from connector.lake import layout
from connector.oci.endpoints import Endpoints

OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "abfss", "wasbs", "oci"})
"""Schemes whose authority is a bucket (or container): the name is the key, without a slash."""
COMPUTE_API = "/20160918/images"


@attr.define
class OciImagesRunFacet(RunFacet):
    """The connector's run: its id (shared by the plan, every shard and the commit), the
    snapshot date it publishes, and how it ended."""

    runId: str  # OpenLineage's facets are camelCase
    snapshotDate: str
    status: str = ""
    shard: str = ""

    @staticmethod
    def _get_schema() -> str:
        return "https://github.com/OpenLineage/OpenLineage/blob/main/spec/OpenLineage.json#/$defs/RunFacet"


def nothing() -> OperatorLineage[Any, Any]:
    """No lineage: the task published or read nothing (it was not run here)."""
    return OperatorLineage()


def dataset_name(location: str) -> tuple[str, str]:
    """OpenLineage's (namespace, name) for a dataset at ``location`` (a URI or a local path)."""
    if "://" not in location:
        return "file", str(Path(location).expanduser().resolve())
    parts = urlsplit(location)
    if parts.scheme == "file":
        return "file", parts.path
    if parts.scheme in OBJECT_STORES:
        return f"{parts.scheme}://{parts.netloc}", parts.path.lstrip("/")
    return f"{parts.scheme}://{parts.netloc}", parts.path


def committed(settings: Settings, outcome: RunOutcome) -> OperatorLineage[Any, Any]:
    """A published run's lineage: one output per published dataset, and the run facet."""
    manifest = outcome.manifest
    if manifest is None or not outcome.published:
        return nothing()
    base = settings.output.uri.rstrip("/")
    outputs = [
        _output(
            _images_location(base, manifest.table),
            layout.IMAGES,
            rows=manifest.rows,
            files=manifest.file_count,
            size=sum(f.bytes for f in manifest.files) or None,
            table=manifest.table,
        )
    ]
    for dataset, files in manifest.datasets.items():
        outputs.append(
            _output(
                layout.dataset_root(base, dataset),
                dataset,
                rows=sum(f.rows for f in files),
                files=len(files),
                size=_size(files),
                table=None,
            )
        )
    facet = OciImagesRunFacet(manifest.run_id, manifest.snapshot_date, outcome.status)
    return OperatorLineage(outputs=outputs, run_facets={"ociImagesRun": facet})


def read(
    settings: Settings,
    credentials: Credentials | None,
    regions: Sequence[str],
    *,
    run_id: str,
    snapshot_date: str,
    shard: str,
) -> OperatorLineage[Any, Any]:
    """A shard's lineage: the Compute API of each region it listed, for its tenancy (of the
    Connection's credentials, else of those the settings name)."""
    if credentials is None:
        try:
            credentials = connector.resolve_credentials(settings)
        except ConnectorError:
            credentials = None
    home = credentials.home_region if credentials else None
    endpoints = Endpoints.from_settings(settings.oci, home)
    tenancy = (credentials.tenancy if credentials else None) or "tenancy"
    inputs = []
    for region in regions:
        parts = urlsplit(endpoints.compute(region))
        name = f"{parts.path.removesuffix('/20160918')}{COMPUTE_API}/{tenancy}/{region}"
        inputs.append(InputDataset(f"{parts.scheme}://{parts.netloc}", name.lstrip("/")))
    facet = OciImagesRunFacet(run_id, snapshot_date, shard=shard)
    return OperatorLineage(inputs=inputs, run_facets={"ociImagesRun": facet})


def schema_facet(dataset: str) -> schema_dataset.SchemaDatasetFacet:
    """The dataset's columns, from ``connector.schema`` (nested fields as nested fields)."""
    columns = schema.DATASETS[dataset]
    return schema_dataset.SchemaDatasetFacet(
        fields=[_field(c.name, c.type, c.description) for c in columns]
    )


def _field(name: str, data_type: pa.DataType, description: str = "") -> Any:
    nested = None
    if pa.types.is_struct(data_type):
        nested = [_field(f.name, f.type) for f in data_type]
    return schema_dataset.SchemaDatasetFacetFields(
        name=name,
        type=schema.type_name(data_type),
        description=description or None,
        fields=nested,
    )


def _output(
    location: str,
    dataset: str,
    *,
    rows: int,
    files: int,
    size: int | None,
    table: Mapping[str, Any] | None,
) -> OutputDataset:
    namespace, name = dataset_name(location)
    facets: dict[str, Any] = {"schema": schema_facet(dataset)}
    if table is not None and table.get("format") == "iceberg" and table.get("table"):
        facets["symlinks"] = symlinks_dataset.SymlinksDatasetFacet(
            identifiers=[
                symlinks_dataset.Identifier(
                    namespace=namespace,
                    name=str(table["table"]),
                    type="TABLE",
                )
            ]
        )
    statistics = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
        rowCount=rows, size=size, fileCount=files
    )
    return OutputDataset(
        namespace, name, facets=facets, outputFacets={"outputStatistics": statistics}
    )


def _images_location(base: str, table: Mapping[str, Any] | None) -> str:
    """Where the ``images`` rows live: a table's location, else the dataset's folder."""
    if table is not None:
        location = table.get("location") or table.get("uri")
        if location:
            return str(location)
    return layout.dataset_root(base, layout.IMAGES)


def _size(files: Sequence[FileInfo]) -> int | None:
    return sum(f.bytes for f in files) or None
