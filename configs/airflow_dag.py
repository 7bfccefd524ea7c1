"""Example Airflow 3 DAG: a daily, sharded export of OCI Compute images.

plan (discovery: N shard specs) → export_shard, mapped (one task per shard, staging only, each
retried on its own) → commit (publishes one snapshot partition with one manifest, and emits an
event for the dataset's Asset, on which downstream DAGs can be scheduled).

Set OCI_IMAGES_CONFIG to the export's TOML configuration, OCI_IMAGES_SHARDS to the number of
shards (default 4), and OCI_IMAGES_CONN_ID to an Airflow Connection of type ``oci`` holding the
API key (or unset it to use the OCI config profile that the configuration names). The snapshot
date is the run's logical date, or for a manual run without one, the date it was triggered.
Needs ``pip install 'oci-images-connector[airflow]'`` where the DAG is parsed and run.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import dag

from connector.airflow import export_task_group

CONFIG = os.environ.get("OCI_IMAGES_CONFIG", "/opt/oci-images/tenancy.toml")
SHARDS = int(os.environ.get("OCI_IMAGES_SHARDS", "4"))
CONN_ID = os.environ.get("OCI_IMAGES_CONN_ID") or None


@dag(
    schedule="@daily",
    start_date=datetime(2026, 11, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    tags=["oci", "inventory"],
)
def oci_images_export() -> None:
    # A pool (`airflow pools set oci_tenancy 4 "OCI request budget"`) bounds the shards that
    # all DAGs exporting this tenancy run at once; see the README.
    export_task_group(
        config_path=CONFIG,
        shards=SHARDS,
        oci_conn_id=CONN_ID,
        pool=os.environ.get("OCI_IMAGES_POOL") or None,
    )


oci_images_export()
