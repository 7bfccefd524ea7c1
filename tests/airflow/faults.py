"""Faults that the test DAGs inject, set by the tests (DAG runs happen in the test process).

The service fault is the emulator's own: with ``fault_rate = 1`` every request meets a 500 or
503, so every listing of the shard fails after the connector's retries and the shard ends
partial, as it would during an outage of the API.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowException

from connector.airflow import OciImagesCommitOperator
from connector.emulator import EmulatorServer

SERVER: EmulatorServer | None = None
FAILING_SHARD: int | None = None
"""The map index of the shard whose tries meet a failing service."""
FAILING_TRIES = 0
"""How many of its tries do."""
PUBLISHED_AT_FIRST_COMMIT: dict[str, Any] = {}


def reset(server: EmulatorServer | None = None) -> None:
    """No fault; ``server`` is the emulator the DAGs export from."""
    global SERVER, FAILING_SHARD, FAILING_TRIES
    SERVER, FAILING_SHARD, FAILING_TRIES = server, None, 0
    PUBLISHED_AT_FIRST_COMMIT.clear()


def fail_shard(index: int, tries: int) -> None:
    """Make the service fail while shard ``index`` runs its first ``tries`` tries."""
    global FAILING_SHARD, FAILING_TRIES
    FAILING_SHARD, FAILING_TRIES = index, tries


def before_shard(context: Any) -> None:
    """``on_execute_callback`` of the shard tasks: switch the service's fault on or off."""
    assert SERVER is not None
    ti = context["ti"]
    failing = ti.map_index == FAILING_SHARD and ti.try_number <= FAILING_TRIES
    SERVER.emulator.behaviour.fault_rate = 1.0 if failing else 0.0


class CommitLostAfterPublishing(OciImagesCommitOperator):
    """A commit whose first try publishes and then fails, as when the worker is lost just
    after the commit; what was published then is recorded for the test."""

    def execute(self, context: Any) -> dict[str, Any]:
        result = super().execute(context)
        if context["ti"].try_number == 1:
            PUBLISHED_AT_FIRST_COMMIT.update(result)
            raise AirflowException("worker lost right after publishing")
        return result
