"""The DAGs the Airflow tests run besides the example. Parsed when the test has set
OCI_IMAGES_TEST_CONFIG (an export configuration file) or OCI_IMAGES_TEST_VALUES (the same as
JSON sections, with no file at all); faults come from tests.airflow.faults."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, XComArg

import connector
from connector.airflow import (
    OciImagesPlanOperator,
    OciImagesShardOperator,
    export_task_group,
    images_asset,
)
from tests.airflow import faults

CONFIG = os.environ.get("OCI_IMAGES_TEST_CONFIG")
VALUES = json.loads(os.environ.get("OCI_IMAGES_TEST_VALUES", "null"))
START = datetime(2026, 11, 1)
RETRY_AT_ONCE = {"retries": 1, "retry_delay": timedelta(0)}

if CONFIG:
    with DAG("shard_fault", schedule=None, start_date=START, default_args=RETRY_AT_ONCE):
        export_task_group(
            config_path=CONFIG, shards=3, shard_kwargs={"on_execute_callback": faults.before_shard}
        )

    with DAG("commit_retry", schedule=None, start_date=START, default_args=RETRY_AT_ONCE):
        plan = OciImagesPlanOperator(task_id="plan", config_path=CONFIG, shards=2)
        staged = OciImagesShardOperator.partial(task_id="export_shard", config_path=CONFIG).expand(
            shard=plan.output
        )
        commit = faults.CommitLostAfterPublishing(
            task_id="commit",
            config_path=CONFIG,
            run_id=XComArg(plan, key="run_id"),
            snapshot_date=XComArg(plan, key="snapshot_date"),
            asset=images_asset(connector.load_config(CONFIG).output.uri),
        )
        staged >> commit

    with DAG("one_shard", schedule=None, start_date=START):
        export_task_group(config_path=CONFIG, shards=1)

if VALUES:
    with DAG("connection_only", schedule=None, start_date=START):
        export_task_group(config=VALUES, shards=2, oci_conn_id="oci_emulator", partition_key=True)
