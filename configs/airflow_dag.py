"""Example Airflow DAG: a nightly, sharded export of OCI Compute images.

plan (discovery, N shard specs) → one mapped task per shard (stage only) → commit (publish one
partition with one manifest). Exit code 3 (some compartments failed) fails the shard task; set
output.allow_partial = true in the config to publish partial results instead.

Copy it into your DAGs folder and adjust CONFIG, SHARDS and the schedule. Needs Airflow 2.4+
(dynamic task mapping) and `oci-images` on the workers' PATH.
"""

from __future__ import annotations

import json
from datetime import datetime

from airflow.decorators import dag, task
from airflow.operators.bash import BashOperator

CONFIG = "/opt/oci-images/tenancy.toml"
SHARDS = 4
COMMON = f"--config {CONFIG} --set output.snapshot_date={{{{ ds }}}}"


@dag(schedule="@daily", start_date=datetime(2026, 11, 1), catchup=False, tags=["oci", "inventory"])
def oci_images_export() -> None:
    plan = BashOperator(
        task_id="plan",
        bash_command=f"oci-images plan {COMMON} --shards {SHARDS} --run-id '{{{{ ts_nodash }}}}'",
        do_xcom_push=True,
    )

    @task
    def shard_commands(plan_json: str) -> list[str]:
        specs = json.loads(plan_json)
        return [f"oci-images run {COMMON} " + " ".join(spec["args"]) for spec in specs]

    shards = BashOperator.partial(task_id="export_shard").expand(
        bash_command=shard_commands(plan.output)
    )
    commit = BashOperator(
        task_id="commit",
        bash_command=f"oci-images commit {COMMON} --run-id '{{{{ ts_nodash }}}}'",
    )
    shards >> commit


oci_images_export()
