"""The Iceberg table is created once, safely, when two dates start together on a fresh output.

Each date holds its own lock, so two runs of different dates may both find no table and both
create it; the one whose create commits second must use the winner's table, not fail its date.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from connector.lake import storage, tables

pytest.importorskip("pyiceberg.catalog.sql")


def writer(base: Path) -> tables.IcebergWriter:
    """The writer a run of ``base`` builds (the default SQLite catalog under the output)."""
    return tables.IcebergWriter(storage.resolve(str(base)), {})


@pytest.fixture
def creates_meet(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every create waits until two have begun, so both have found no table: the race the
    adversarial test lost 2 times in 4, made certain. Returns the errors pyiceberg raised to
    the loser (so a test can tell the race really happened)."""
    from pyiceberg.catalog.sql import SqlCatalog

    barrier = threading.Barrier(2, timeout=30)
    raised: list[str] = []
    real = SqlCatalog.create_table_transaction

    def meeting(self: SqlCatalog, *args: Any, **kwargs: Any) -> Any:
        barrier.wait()
        transaction = real(self, *args, **kwargs)
        commit = transaction.commit_transaction

        def recorded() -> Any:
            try:
                return commit()
            except Exception as exc:
                raised.append(type(exc).__name__)
                raise

        transaction.commit_transaction = recorded  # type: ignore[method-assign]
        return transaction

    monkeypatch.setattr(SqlCatalog, "create_table_transaction", meeting)
    return raised


def test_two_threads_creating_at_once_share_one_table(
    tmp_path: Path, creates_meet: list[str]
) -> None:
    """Both creates start on a table that does not exist; one commits, the other loses the
    race and loads the winner's table: both return the same table, partitioned, and nothing
    is raised to either date."""
    results: dict[int, Any] = {}
    failures: list[BaseException] = []

    def create(index: int) -> None:
        try:
            results[index] = writer(tmp_path).table(create=True)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [] == failures
    assert 1 == len(creates_meet), "one create lost the race (else this test proves nothing)"
    uuids = {str(table.metadata.table_uuid) for table in results.values()}
    assert 1 == len(uuids)
    fresh = writer(tmp_path).table(create=False)
    assert uuids == {str(fresh.metadata.table_uuid)}
    assert list(tables.PARTITION_BY) == [
        fresh.schema().find_field(f.source_id).name for f in fresh.spec().fields
    ]


SCRIPT = """
import sys, time
from connector.lake import storage, tables
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
table = tables.IcebergWriter(storage.resolve(sys.argv[1]), {}).table(create=True)
print(table.metadata.table_uuid)
"""


def test_two_processes_creating_at_once_share_one_table(tmp_path: Path) -> None:
    """Two processes started at the same instant on a fresh output (as two dates' runs from a
    scheduler): both exit 0 and name the same table, whichever won."""
    for trial in range(2):
        base = tmp_path / f"lake{trial}"
        base.mkdir()  # a run has made its output folder by then
        start = str(time.time() + 1.0)
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT, str(base), start],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=120) for p in processes]
        assert [0, 0] == [p.returncode for p in processes], [err for _, err in outputs]
        assert 1 == len({out.strip() for out, _ in outputs})
