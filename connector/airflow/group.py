"""``export_task_group``: plan → one mapped task per shard → commit, in one call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from airflow.sdk import Asset, TaskGroup, XComArg

import connector
from connector import ConfigError
from connector.airflow.operators import (
    SNAPSHOT_DATE,
    OciImagesCommitOperator,
    OciImagesPlanOperator,
    OciImagesShardOperator,
    SectionValues,
    images_asset,
)


def export_task_group(
    group_id: str = "oci_images",
    *,
    config_path: str | None = None,
    config: SectionValues | None = None,
    overrides: Sequence[str] = (),
    shards: int = 4,
    oci_conn_id: str | None = None,
    snapshot_date: str | None = SNAPSHOT_DATE,
    asset: Asset | None = None,
    partition_key: bool = False,
    pool: str | None = None,
    max_active_shards: int | None = None,
    shard_kwargs: Mapping[str, Any] | None = None,
    commit_kwargs: Mapping[str, Any] | None = None,
    **group_kwargs: Any,
) -> TaskGroup:
    """A task group that exports one snapshot: ``plan`` → ``export_shard`` (mapped, one task per
    shard, each retried on its own) → ``commit``, which publishes and emits ``asset``.

    Settings come from ``config_path``, ``config`` and ``overrides`` as for the operators. The
    snapshot date is rendered once, by ``plan``; the shards and the commit use the plan's.

    ``asset`` defaults to the ``images`` dataset of the configured ``output.uri``, read when the
    DAG is parsed (pass an ``Asset`` when the configuration is not readable there).
    ``pool`` bounds, together with each shard's ``fetch.concurrency``, how many requests all
    DAGs sharing the pool send to the tenancy at once; ``max_active_shards`` bounds the shards
    of this run. ``shard_kwargs`` and ``commit_kwargs`` go to those operators (``retries``,
    ``execution_timeout``, callbacks…); ``group_kwargs`` to the ``TaskGroup``.
    """
    if asset is None:
        try:
            settings = connector.load_config(config_path or None, overrides, values=config)
        except ConfigError as exc:
            raise ConfigError(
                exc.key,
                f"{exc.reason} (read when the DAG is parsed, to name the commit's Asset; "
                "pass asset= where the configuration cannot be read then)",
            ) from None
        asset = images_asset(settings.output.uri)
    common: dict[str, Any] = {
        "config_path": config_path,
        "config": config,
        "overrides": overrides,
        "oci_conn_id": oci_conn_id,
    }
    with TaskGroup(group_id, **group_kwargs) as group:
        plan = OciImagesPlanOperator(
            task_id="plan", shards=shards, snapshot_date=snapshot_date, pool=pool, **common
        )
        shard_options: dict[str, Any] = {
            "pool": pool,
            "map_index_template": "{{ task.shard['index'] }}",
            **(shard_kwargs or {}),
        }
        if max_active_shards is not None:
            shard_options["max_active_tis_per_dagrun"] = max_active_shards
        staged = OciImagesShardOperator.partial(
            task_id="export_shard", **common, **shard_options
        ).expand(shard=plan.output)
        # XComArgs in templated fields are resolved when the task runs; they also make the
        # commit depend on the plan.
        commit = OciImagesCommitOperator(
            task_id="commit",
            run_id=cast(str, XComArg(plan, key="run_id")),
            snapshot_date=cast(str, XComArg(plan, key="snapshot_date")),
            asset=asset,
            partition_key=partition_key,
            **common,
            **(commit_kwargs or {}),
        )
        staged >> commit
    return group
