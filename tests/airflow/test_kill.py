"""A killed task under real Airflow 3: SIGTERM to the process running a DAG, while its shard
task fetches from a slow emulator. Airflow's task runner then calls the operator's ``on_kill``
and does not raise; the shard must stop as the command line does on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from connector.emulator import EmulatorServer
from tests.airflow.conftest import DAGS, ROOT
from tests.helpers import write_config

RUN_DAG = f"""
import json
from datetime import UTC, datetime
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.session import create_session

dag = DagBag(dag_folder={str(DAGS / "oci_images_test_dags.py")!r}).dags["one_shard"]
run = dag.test(logical_date=datetime(2026, 11, 27, tzinfo=UTC))
with create_session() as session:
    instances = run.get_task_instances(session=session)
    states = {{t.task_id: str(t.state) for t in instances}}
    ended = {{t.task_id: t.end_date.timestamp() for t in instances if t.end_date}}
print(json.dumps({{"run": str(run.state), "tasks": states, "ended": ended}}))
"""


def files_under(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]


def test_sigterm_stops_a_running_shard_and_cleans_up(
    make_emulator: Callable[..., EmulatorServer], tmp_path: Path
) -> None:
    """SIGTERM while the shard fetches (pages of 2, 150 ms each): the task fails within a
    few seconds, having removed its staging and released its lock; nothing is published and
    no request is sent after."""
    server = make_emulator(latency_ms=150, jitter=0)
    config = write_config(
        tmp_path, server, snapshot_date=None, fetch={"page_size": 2, "workers": 0, "concurrency": 1}
    )
    lake = tmp_path / "lake"
    locks = lake / "_staging" / "_locks"
    environ = os.environ | {"OCI_IMAGES_TEST_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_DAG],
        env=environ,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # The shard holds its lock (_staging/_locks) and its attempt's folder, and fetches.
        while len(files_under(lake / "_staging")) < 2 or not files_under(locks):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the shard never started staging"
            time.sleep(0.05)
        fetched = server.stats()["requests"]
        while server.stats()["requests"] < fetched + 3:
            time.sleep(0.02)

        process.send_signal(signal.SIGTERM)
        sent = time.time()
        out, err = process.communicate(timeout=60)
        exited_s = time.time() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert 0 == process.returncode, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert "failed" == result["tasks"]["oci_images.export_shard"]
    assert "upstream_failed" == result["tasks"]["oci_images.commit"]
    assert "interrupted by SIGTERM" in out + err
    ended_s = result["ended"]["oci_images.export_shard"] - sent
    print(f"shard task ended {ended_s:.2f} s after SIGTERM, the process {exited_s:.2f} s")
    assert ended_s < 5, f"the task ran on for {ended_s:.1f} s after SIGTERM"
    assert [] == files_under(lake / "_staging")  # the attempt's files and the lock
    assert not (lake / "images").exists()
    requests = server.stats()["requests"]
    time.sleep(0.5)
    assert requests == server.stats()["requests"]
