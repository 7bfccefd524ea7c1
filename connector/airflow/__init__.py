"""The Airflow 3 integration (extra ``airflow``): a hook, operators and a task-group factory.

::

    from connector.airflow import export_task_group

    with DAG("oci_images", schedule="@daily", start_date=datetime(2026, 11, 1)):
        export_task_group(config_path="/opt/oci-images/tenancy.toml", shards=4,
                          oci_conn_id="oci_default")

See ``configs/airflow_dag.py`` for a complete DAG and the README for the Connection, pools,
partial runs and what the commit's Asset event carries.
"""

from __future__ import annotations

try:
    import airflow.sdk  # noqa: F401  # Airflow 3's authoring interface; Airflow 2 has none
except ImportError as exc:  # pragma: no cover - exercised without Airflow installed
    raise ImportError(
        "connector.airflow needs Apache Airflow 3 (the airflow.sdk package): "
        "pip install 'oci-images-connector[airflow]'"
    ) from exc

from connector.airflow.group import export_task_group
from connector.airflow.hook import OciHook, credentials_from_connection
from connector.airflow.operators import (
    SNAPSHOT_DATE,
    OciImagesCommitOperator,
    OciImagesPlanOperator,
    OciImagesShardOperator,
    images_asset,
    published_extra,
)

__all__ = [
    "SNAPSHOT_DATE",
    "OciHook",
    "OciImagesCommitOperator",
    "OciImagesPlanOperator",
    "OciImagesShardOperator",
    "credentials_from_connection",
    "export_task_group",
    "images_asset",
    "published_extra",
]
