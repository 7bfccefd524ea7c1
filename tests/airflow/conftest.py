"""Real Airflow 3: a temporary AIRFLOW_HOME, a SQLite metadata database made by
``airflow db migrate``, and a DAGs folder holding the example DAG and the test DAGs.

``dag.test()`` runs a DAG run in this process, task by task, retries included, so the tests
reach the emulator (a thread here) and read the published files back afterwards. Airflow reads
its settings when first imported, so the environment is set here, before any test module
imports it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOME = Path(tempfile.mkdtemp(prefix="oci-images-airflow-"))
DAGS = HOME / "dags"
os.environ.update(
    {
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME}/airflow.db",
        "AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACKS": "True",
        # The REST API's tests call it as an admin (its simple auth manager, no login).
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__API_AUTH__JWT_SECRET": "test-only-" + "0" * 64,
    }
)

FETCH = {"page_size": 100, "workers": 0}
"""What the DAGs' configurations set beyond ``tests.helpers.write_config``'s defaults (they
leave ``output.snapshot_date`` to the run, ``snapshot_date=None``): pages of 100, and the rows
converted in a thread, since ``dag.test()`` runs every task in this process."""


@pytest.fixture(scope="session", autouse=True)
def airflow_home() -> Iterator[Path]:
    """AIRFLOW_HOME with a migrated metadata database and the DAGs folder filled."""
    DAGS.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "configs" / "airflow_dag.py", DAGS / "airflow_dag.py")
    for source in (Path(__file__).parent / "dags").glob("*.py"):
        shutil.copy(source, DAGS / source.name)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run(
        [str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy()
    )
    yield HOME
    shutil.rmtree(HOME, ignore_errors=True)


def load_dag(file_name: str, dag_id: str) -> Any:
    """The DAG ``dag_id`` defined in ``file_name`` of the DAGs folder (parsed now, so that it
    sees the environment the test set)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / file_name))
    assert {} == bag.import_errors
    return bag.dags[dag_id]


def task_states(dag_run: Any) -> dict[str, list[str]]:
    """Each task's final state(s) in a finished DAG run, one per map index."""
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = dag_run.get_task_instances(session=session)
        states: dict[str, list[str]] = {}
        for ti in sorted(instances, key=lambda t: (t.task_id, t.map_index)):
            states.setdefault(ti.task_id, []).append(str(ti.state))
    return states


def tries(dag_run: Any, task_id: str) -> list[int]:
    """How many tries each map index of ``task_id`` took."""
    from airflow.utils.session import create_session

    with create_session() as session:
        instances = dag_run.get_task_instances(session=session)
        return [
            t.try_number
            for t in sorted(instances, key=lambda t: t.map_index)
            if t.task_id == task_id
        ]


def asset_events(uri: str) -> list[dict[str, Any]]:
    """The events recorded for the asset with ``uri``: their extra and partition key."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.uri == uri)
        ).scalars()
        return [{"extra": e.extra, "partition_key": e.partition_key} for e in rows]
