"""Operators for a sharded export: plan, one shard (stage only), commit (publish).

Each is a thin layer over the public API (``connector.plan``, ``connector.run``,
``connector.commit``). Every operator reads its settings the same way: the TOML file
``config_path`` (optional), then the ``config`` sections (``{"output": {"uri": …}}``), then the
``overrides`` (``"section.key=value"``), then the snapshot date. All of these are templated.

How outcomes map onto task states:

- a configuration error fails the task without retries (no retry can fix it);
- any other error fails it, and Airflow's retries apply (a retried shard replaces only its own
  staged files; a retried commit of a published run changes nothing);
- a partial shard (some listings failed after the connector's own retries) succeeds only when
  ``output.allow_partial`` is true; otherwise it fails, and a retry may complete it;
- commit publishes a partial run only when ``output.allow_partial`` is true;
- a killed task (SIGTERM: Airflow 3's task runner calls ``on_kill`` and lets ``execute`` go on)
  stops as the command line does on SIGTERM: a shard's fetching is cancelled, its staging
  removed and its lock released; a commit stops before its swap, or finishes a swap it has
  begun; then the task fails.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

import connector
from connector import ConfigError, ConnectorError, Credentials, RunOutcome, Settings, interrupt
from connector.airflow.hook import OciHook
from connector.lake import layout

if TYPE_CHECKING:
    from airflow.sdk import Context

SNAPSHOT_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
"""The run's date: its logical date, or for a manual run without one, when it was triggered."""

SectionValues = Mapping[str, Mapping[str, Any]]


class _ConnectorOperator(BaseOperator):
    """What every operator here shares: how it reads its settings and its credentials."""

    template_fields: Sequence[str] = (
        "config_path",
        "config",
        "overrides",
        "snapshot_date",
        "oci_conn_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {"config": "json"}
    ui_color = "#f0e4dc"

    def __init__(
        self,
        *,
        config_path: str | None = None,
        config: SectionValues | None = None,
        overrides: Sequence[str] = (),
        snapshot_date: str | None = SNAPSHOT_DATE,
        oci_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path
        self.config = config
        self.overrides = overrides
        self.snapshot_date = snapshot_date
        self.oci_conn_id = oci_conn_id

    def settings(self, snapshot_date: str | None = None) -> Settings:
        """The validated settings; ``snapshot_date`` (else the operator's) is applied last."""
        overrides = list(self.overrides)
        date = snapshot_date or self.snapshot_date
        if date:
            overrides.append(f"output.snapshot_date={json.dumps(str(date))}")
        with translated_errors():
            return connector.load_config(self.config_path or None, overrides, values=self.config)

    def credentials(self) -> Credentials | None:
        """The Connection's credentials, or None: then ``settings.oci`` names them (a profile
        in an OCI config file, or a principal)."""
        if not self.oci_conn_id:
            return None
        with translated_errors():
            return OciHook(self.oci_conn_id).get_credentials()

    def on_kill(self) -> None:
        """Note the stop for the running export (Airflow 3 calls this from its SIGTERM handler,
        or on an execution timeout, and does not raise): it is cancelled within
        ``interrupt.POLL_S`` and cleans up as the command does on SIGTERM. Only a flag is set,
        as befits a signal handler."""
        interrupt.request(signal.SIGTERM)


class OciImagesPlanOperator(_ConnectorOperator):
    """Discover the listings (a few Identity requests) and divide them into ``shards``.

    Returns one JSON-safe spec per shard, for ``OciImagesShardOperator.partial(…).expand(
    shard=plan.output)``, and pushes ``run_id`` and ``snapshot_date`` as XComs of their own
    (``plan.output["run_id"]``) for the commit. Every shard and the commit use the plan's
    snapshot date, so that a run crossing midnight stays one partition.
    """

    template_fields: Sequence[str] = (*_ConnectorOperator.template_fields, "run_id")

    def __init__(self, *, shards: int = 4, run_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shards = shards
        self.run_id = run_id

    def execute(self, context: Context) -> list[dict[str, Any]]:
        settings = self.settings()
        with translated_errors(), interrupt.noting():
            plan = connector.plan(
                settings, self.shards, run_id=self.run_id or None, credentials=self.credentials()
            )
            # Discovery is a few requests and stages nothing: a kill is honoured after it.
            interrupt.check()
        listings = sum(s.listings for s in plan.shards)
        self.log.info(
            "Planned run %s for %s: %d listings in %d shards",
            plan.run_id,
            plan.snapshot_date,
            listings,
            len(plan.shards),
        )
        ti = context["ti"]
        ti.xcom_push(key="run_id", value=plan.run_id)
        ti.xcom_push(key="snapshot_date", value=plan.snapshot_date)
        return [spec.as_dict() | {"snapshot_date": plan.snapshot_date} for spec in plan.shards]


class OciImagesShardOperator(_ConnectorOperator):
    """Export one shard of a planned run into the run's staging; publishes nothing.

    ``shard`` is one of the plan's specs (``ShardSpec.as_dict()``, usually through
    ``.expand(shard=plan.output)``); its snapshot date, when it has one, wins over the
    operator's own. Returns a summary of what the shard staged.
    """

    def __init__(self, *, shard: Mapping[str, Any], **kwargs: Any) -> None:
        kwargs.setdefault("map_index_template", "{{ task.shard['index'] }}")
        super().__init__(**kwargs)
        self.shard = shard
        self._read: tuple[Settings, Credentials | None, connector.ShardSpec, RunOutcome] | None
        self._read = None

    def execute(self, context: Context) -> dict[str, Any]:
        spec = connector.ShardSpec.from_dict(self.shard)
        settings = self.settings(self.shard.get("snapshot_date"))
        with translated_errors(), interrupt.noting():
            credentials = self.credentials()
            work = partial(connector.run_async, settings, shard=spec, credentials=credentials)
            outcome = _raise_if_killed(anyio.run(interrupt.until_noted, work))
        self._read = (settings, credentials, spec, outcome)
        summary = _summary(outcome) | {"shard": f"{spec.index}/{spec.count}"}
        if outcome.status == "succeeded":
            self.log.info("Shard %d/%d staged: %s", spec.index, spec.count, summary)
            return summary
        reason = _failures(outcome) or outcome.message
        if outcome.status == "partial" and settings.output.allow_partial:
            self.log.warning(
                "Shard %d/%d is partial (%s); staged anyway, as output.allow_partial is set",
                spec.index,
                spec.count,
                reason,
            )
            return summary
        raise AirflowException(
            f"shard {spec.index}/{spec.count} of run {spec.run_id} {outcome.status}: {reason}"
            + (" (output.allow_partial is false)" if outcome.status == "partial" else "")
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """What the OpenLineage provider reports for this task: the OCI Compute API of each
        region the shard listed, as input datasets (``connector.airflow.lineage``)."""
        import connector.airflow.lineage as lineage

        if self._read is None:
            return lineage.nothing()
        settings, credentials, spec, outcome = self._read
        return lineage.read(
            settings,
            credentials,
            spec.regions,
            run_id=spec.run_id,
            snapshot_date=outcome.manifest.snapshot_date if outcome.manifest else "",
            shard=f"{spec.index}/{spec.count}",
        )


class OciImagesCommitOperator(_ConnectorOperator):
    """Publish the staged shards of ``run_id`` as one snapshot partition.

    Idempotent: committing a run that is already published succeeds and changes nothing, so
    the task can be retried. On success it emits an event for ``asset`` (see ``images_asset``)
    whose extra tells what was published (``uri``, ``snapshot_date``, ``run_id``, ``status``,
    ``rows``, ...); with ``partition_key=True`` the event also carries the snapshot date as
    its partition key, for downstream DAGs scheduled with ``PartitionedAssetTimetable``.
    """

    template_fields: Sequence[str] = (*_ConnectorOperator.template_fields, "run_id")

    def __init__(
        self,
        *,
        run_id: str,
        asset: Asset | None = None,
        partition_key: bool = False,
        **kwargs: Any,
    ) -> None:
        if asset is not None:
            kwargs["outlets"] = [*kwargs.get("outlets", ()), asset]
        super().__init__(**kwargs)
        self.run_id = run_id
        self.asset = asset
        self.partition_key = partition_key
        self._published: tuple[Settings, RunOutcome] | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        settings = self.settings()
        with translated_errors(), interrupt.noting():
            # A kill stops the commit before its swap (``interrupt.check``); one noted during
            # the swap is honoured once the partition is whole, and then changes nothing.
            outcome = connector.commit(settings, self.run_id)
        if not outcome.published:
            message = f"run {self.run_id} not published ({outcome.status}): {outcome.message}"
            if outcome.status == "partial":
                # The run's listings failed and allow_partial is off: a retried commit would
                # decide the same. Re-running the failed shards is what can help.
                raise AirflowFailException(message)
            raise AirflowException(message)
        self._published = (settings, outcome)
        extra = published_extra(settings, outcome)
        if outcome.status == "partial":
            self.log.warning("Published a partial run, as output.allow_partial is set: %s", extra)
        else:
            self.log.info("Published: %s", extra)
        if self.asset is not None:
            event = context["outlet_events"][self.asset]
            event.extra = extra
            if self.partition_key:
                event.add_partitions(str(extra["snapshot_date"]))
        return extra

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """What the OpenLineage provider reports for this task: one output dataset per
        dataset the commit published, with schema, statistics and the run's id and date
        (``connector.airflow.lineage``; imported only when the provider asks)."""
        import connector.airflow.lineage as lineage

        if self._published is None:
            return lineage.nothing()
        return lineage.committed(*self._published)


def images_asset(output_uri: str, *, name: str | None = None) -> Asset:
    """The Asset standing for the ``images`` dataset under ``output.uri``.

    Its URI is the dataset's location (``file:///…/images`` for a local directory), its name
    that URI unless given; downstream DAGs schedule on it with ``schedule=[asset]``.
    """
    uri = f"{_location(output_uri)}/images"
    return Asset(name=name or uri, uri=uri, group="oci-images")


def published_extra(settings: Settings, outcome: RunOutcome) -> dict[str, Any]:
    """What a published run's asset event carries: where it is, which run, how much."""
    manifest = outcome.manifest
    date = manifest.snapshot_date if manifest else settings.output.effective_snapshot_date
    partition = layout.partition_of(_location(settings.output.uri), layout.IMAGES, date)
    return _summary(outcome) | {
        "uri": partition,
        "manifest": f"{partition}/{layout.MANIFEST}",
        "snapshot_date": date,
        "format": settings.output.format,
    }


def _summary(outcome: RunOutcome) -> dict[str, Any]:
    manifest = outcome.manifest
    return {
        "run_id": outcome.run_id,
        "status": outcome.status,
        "published": outcome.published,
        "rows": manifest.rows if manifest else 0,
        "rejects": manifest.rejects if manifest else 0,
        "files": manifest.file_count if manifest else 0,
        "listings": len(manifest.compartments) if manifest else 0,
        "listings_failed": len(manifest.failed) if manifest else 0,
        "elapsed_s": round(outcome.elapsed_s, 3),
    }


def _failures(outcome: RunOutcome) -> str:
    """The failed listings, counted, with the first one's error (never a secret)."""
    failed = outcome.manifest.failed if outcome.manifest else ()
    if not failed:
        return ""
    first = failed[0]
    error = f"{first.error.code}: {first.error.message}" if first.error else "failed"
    return (
        f"{len(failed)} listing(s) failed after retries; first: {first.region} "
        f"{first.compartment_id}: {error}"
    )


def _location(uri: str) -> str:
    if "://" in uri:
        return uri.rstrip("/")
    return Path(uri).expanduser().resolve().as_uri()


def _raise_if_killed(outcome: RunOutcome | None) -> RunOutcome:
    """The outcome, unless a kill stopped the work before it published anything."""
    signum = interrupt.received()
    if outcome is None or (signum is not None and not outcome.published):
        raise AirflowException(str(interrupt.Interrupted(signum or signal.SIGTERM)))
    return outcome


@contextmanager
def translated_errors() -> Iterator[None]:
    """The connector's errors as Airflow's: a configuration error is final (no retry)."""
    try:
        yield
    except ConfigError as exc:
        raise AirflowFailException(f"configuration error: {exc}") from exc
    except ConnectorError as exc:
        raise AirflowException(str(exc) or type(exc).__name__) from exc
