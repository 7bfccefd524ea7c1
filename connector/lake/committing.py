"""Commit: publish a run's staged shards as one snapshot date, or nothing, and record it either way.

In order, under the snapshot date's lock (``connector.lake.lock``):

1. ``housekeeping.start``: interrupted swaps and killed commits repaired, dead staging removed;
2. a run whose commit already published it (a retry, perhaps after a kill during its
   clean-up) succeeds again, unchanged, and only its clean-up is redone;
3. read every shard's manifest and ``decide``: all shards present, of this run, of one snapshot
   date; a partial run is published only with ``output.allow_partial`` and when at least
   ``output.min_complete_ratio`` of its listings are complete. Below that floor it fails
   (exit 1) whatever ``allow_partial`` says, so a run in which every listing failed (a lost
   policy, a wrong region) can never replace a good partition with an empty one;
4. no shard still running (each shard's lock is free);
5. verify every file the manifests list: present, its size, its rows (``verify``);
6. gather exactly those files into the commit's own staging (hard links on a local disk), with
   the companion datasets (``compartments``; ``changes``, computed here, with
   ``output.changes``), and hand them to the output's ``Publisher``, which makes every dataset
   of the date visible behind one commit point;
7. write ``_runs/RUN_ID.json``; remove the run's staging;
8. with ``output.keep_days``, delete the dates it expires (``retention``), each under its own
   lock, through the door's rule for expired partitions.

Any failure before the commit point leaves every published partition as it was. A failed or
unpublished run still gets its ``_runs/RUN_ID.json`` (status ``failed``, with each listing's
error).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow.fs as pafs

from connector import formats, interrupt, logs, names
from connector.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    ConnectorError,
    PublishError,
    redact,
)
from connector.lake import (
    changes,
    door,
    durable,
    housekeeping,
    layout,
    lock,
    publisher,
    retention,
    storage,
    tables,
    verify,
)
from connector.lake.layout import Layout
from connector.lake.manifest import Manifest, RunOutcome, merge, read_manifest, utc_now
from connector.sinks import FileInfo, SinkOptions

if TYPE_CHECKING:
    from connector.config import OutputSettings, Settings
    from connector.lake.storage import Store

log = logs.get_logger("connector.lake.committing")


def complete_ratio(manifest: Manifest) -> float:
    """The share of the run's listings that completed (1.0 for a run with none)."""
    total = len(manifest.compartments)
    return 1.0 if total == 0 else (total - len(manifest.failed)) / total


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a run's shards may be published, and if not, why and with which exit code."""

    manifest: Manifest | None
    """The shards merged (None when they cannot be: none, or not one run's set)."""
    refusal: str = ""
    exit_code: int = EXIT_OK

    @property
    def publish(self) -> bool:
        """Whether the commit goes on to verify and publish."""
        return not self.refusal


def decide(run_id: str, shards: Sequence[Manifest], output: OutputSettings) -> Decision:
    """What a commit does with ``shards``, from their manifests and the output settings alone."""
    if not shards:
        return Decision(None, f"nothing staged for run {run_id}", EXIT_FAILED)
    count = shards[0].shard[1] if shards[0].shard else 1
    indexes = sorted(s.shard[0] if s.shard else 0 for s in shards)
    if indexes != list(range(count)) or any(s.shard and s.shard[1] != count for s in shards):
        missing = sorted(set(range(count)) - set(indexes))
        return Decision(None, f"run {run_id} is missing shards {missing} of {count}", EXIT_FAILED)
    dates = {s.snapshot_date for s in shards}
    if len(dates) != 1:
        message = f"shards of run {run_id} disagree on snapshot_date: {sorted(dates)}"
        return Decision(None, message, EXIT_FAILED)
    foreign = sorted({s.run_id for s in shards} - {run_id})
    if foreign:
        message = (
            f"refusing to commit run {run_id}: its staging holds shards of run(s) "
            f"{', '.join(foreign)}"
        )
        return Decision(None, message, EXIT_FAILED)
    manifest = merge(shards)
    ratio = complete_ratio(manifest)
    floor = output.min_complete_ratio
    if manifest.failed and ratio < floor:
        message = (
            f"only {ratio:.0%} of the listings completed ({len(manifest.failed)} of "
            f"{len(manifest.compartments)} failed), below output.min_complete_ratio = "
            f"{floor:g}; nothing published"
        )
        return Decision(manifest, message, EXIT_FAILED)
    if manifest.failed and not output.allow_partial:
        message = (
            f"{len(manifest.failed)} listing(s) failed; nothing published "
            "(output.allow_partial = false)"
        )
        return Decision(manifest, message, EXIT_PARTIAL)
    return Decision(manifest)


def commit_run(
    settings: Settings,
    run_id: str,
    *,
    store: Store | None = None,
    held: lock.Lock | None = None,
    started: float | None = None,
) -> RunOutcome:
    """Publish the staged shards of ``run_id`` (see the module docstring).

    ``held`` is the date lock when the caller (a run that stages and commits) holds it already,
    and has put the output in order (``housekeeping.start``) under it.
    """
    committing = time.monotonic()
    began = started or committing
    run_id = names.check_run_id(run_id, "run_id")
    output = settings.output
    store = store or storage.resolve(output.uri, output.storage_options)
    table = tables.for_output(output, store)
    fs, base = store.fs, store.base
    owner = held.owner if held else lock.Owner.me(run_id, lock.new_attempt_id(), 0.0)
    if held is None:
        housekeeping.start(store, owner, table=table)
    shards = read_shards(fs, base, run_id)
    day = shards[0].snapshot_date if shards else output.effective_snapshot_date
    done = _already_published(store, run_id, day, shards)
    if done is not None:
        return done
    if not shards:
        # As ``diff`` of a date never published: what the command names is not there, so it
        # raises (exit 1, one line) rather than returning an outcome of a run that never was.
        raise PublishError(
            f"nothing staged for run {run_id} under {layout.staging_root(base)}/{run_id}: "
            "check the run id, or run its shards first (run --shard I/N --run-id RUN_ID)"
        )
    staged = Layout(base, run_id, day, f"{layout.COMMIT_PREFIX}{lock.new_attempt_id()}")
    guard: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if held is None:
        guard = lock.date_lock(fs, base, day, owner)
    with guard:
        if held is None:
            housekeeping.start(store, owner, held=(day,), table=table)
        shards = read_shards(fs, base, run_id)  # as they are now, under the lock
        if held is None:
            done = _already_published(store, run_id, day, shards)
            if done is not None:
                return done
        decision = decide(run_id, shards, output)
        if not decision.publish or decision.manifest is None:
            return _refuse(
                fs, staged, decision.manifest, decision.refusal, decision.exit_code, began
            )
        manifest = decision.manifest
        problem = _still_running(fs, base, run_id, len(shards)) or _unverified(fs, staged, shards)
        if problem:
            return _refuse(fs, staged, manifest, problem, EXIT_FAILED, began)
        manifest = replace(manifest, finished_at=utc_now())
        lock.claim_attempt(fs, base, replace(owner, attempt=staged.attempt))
        try:
            manifest = _gather(fs, staged, shards, manifest, output, table)
            interrupt.check()
            timings = replace(manifest.timings, commit_s=time.monotonic() - committing)
            manifest = replace(manifest, timings=timings)
            manifest = publisher.for_store(store, table).publish(staged, manifest)
        except BaseException:
            if layout.exists(fs, staged.journal):
                raise  # past its journal: recovery finishes or rolls back this commit
            with contextlib.suppress(OSError, ConnectorError):
                door.guarded_delete(fs, base, staged.staging)
            raise
    _record(fs, staged, manifest, manifest.status, True, "")
    _clean_up(fs, staged)
    log.info(
        "run.published",
        run_id=run_id,
        partition=staged.partition,
        rows=manifest.rows,
        files=manifest.file_count,
        outcome=manifest.status,
    )
    retention.prune_quietly(store, day, output.keep_days, owner, run_id=run_id, table=table)
    code = EXIT_PARTIAL if manifest.failed else EXIT_OK
    return RunOutcome(run_id, code, True, manifest, elapsed_s=time.monotonic() - began)


def read_shards(fs: pafs.FileSystem, base: str, run_id: str) -> list[Manifest]:
    """The manifests the run's finished shards wrote, in shard order."""
    shards = []
    for path in layout.shard_manifests(fs, base, run_id):
        try:
            shards.append(Manifest.from_dict(durable.read_json(fs, path)))
        except (OSError, KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise PublishError(f"the shard manifest {path} cannot be read: {exc}") from None
    return shards


def _still_running(fs: pafs.FileSystem, base: str, run_id: str, count: int) -> str | None:
    """Why the run cannot be committed now, if one of its shards still holds its lock."""
    for index in range(count):
        probe = lock.shard_lock(fs, base, run_id, index, count, lock.Owner.me(run_id, "probe"))
        try:
            probe.acquire()
        except lock.LockHeld as exc:
            return f"shard {index}/{count} is still running: {exc}"
        probe.release()
    return None


def _unverified(fs: pafs.FileSystem, staged: Layout, shards: Sequence[Manifest]) -> str | None:
    """Why a file the shards list cannot be published, if one cannot."""
    try:
        for shard in shards:
            name = f"{shard.shard[0]}/{shard.shard[1]}" if shard.shard else "0/1"
            verify.verify_files(
                fs, _shard_layout(staged, shard).staged_partition, _entries(shard), name
            )
    except verify.VerificationError as exc:
        return str(exc)
    return None


def _shard_layout(staged: Layout, shard: Manifest) -> Layout:
    """Where a shard's attempt staged its files."""
    return staged.with_attempt(shard.attempt or "")


def _entries(shard: Manifest) -> Iterator[Mapping[str, Any]]:
    for info in (*shard.files, *shard.reject_files):
        yield {"path": info.path, "rows": info.rows, "bytes": info.bytes}


def _gather(
    fs: pafs.FileSystem,
    staged: Layout,
    shards: Sequence[Manifest],
    manifest: Manifest,
    output: OutputSettings,
    table: tables.TableWriter | None,
) -> Manifest:
    """Put the listed files of every shard into the commit's staging, with the companion
    datasets; the manifest with the companions' files."""
    seen: set[str] = set()
    companions: dict[str, tuple[FileInfo, ...]] = {}
    for shard in shards:
        source = _shard_layout(staged, shard)
        for entry in _entries(shard):
            relative = str(entry["path"])
            if relative in seen:
                raise PublishError(f"two shards list the same file {relative}")
            seen.add(relative)
            _link(
                fs, f"{source.staged_partition}/{relative}", f"{staged.staged_partition}/{relative}"
            )
        for name, files in shard.datasets.items():
            for info in files:
                _link(
                    fs,
                    f"{source.staged_dataset(name)}/{info.path}",
                    f"{staged.staged_dataset(name)}/{info.path}",
                )
            companions[name] = companions.get(name, ()) + files
    fs.create_dir(staged.staged_partition, recursive=True)
    if output.changes:
        options = SinkOptions(formats.get(output.format), output.effective_compression)
        companions["changes"] = changes.stage_changes(
            fs, staged, manifest.files, manifest.rows, table, options
        )
    return replace(manifest, datasets=companions)


def _link(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Put a staged file into the commit's staging: a hard link on a local disk (the shard's
    copy stays, so a failed commit can be retried), a copy elsewhere."""
    fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
    if not durable.is_local(fs):
        fs.copy_file(source, target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        durable.fsync_path(target)


def _refuse(
    fs: pafs.FileSystem,
    staged: Layout,
    manifest: Manifest | None,
    message: str,
    code: int,
    began: float,
) -> RunOutcome:
    """Publish nothing; record why."""
    log.error("run.not_published", run_id=staged.run_id, reason=message)
    _record(fs, staged, manifest, "failed", False, message)
    elapsed = time.monotonic() - began
    return RunOutcome(staged.run_id, code, False, manifest, message, elapsed)


def _clean_up(fs: pafs.FileSystem, staged: Layout) -> None:
    """After the commit point: the run's staging goes. Idempotent, and a failure here changes
    nothing published (the next start removes what is left)."""
    with contextlib.suppress(OSError, ConnectorError):
        door.guarded_delete(fs, staged.base, staged.run_staging)
        door.remove_empty_dir(fs, staged.base, layout.staging_root(staged.base))


def run_record(
    run_id: str,
    snapshot_date: str,
    manifest: Manifest | None,
    status: str,
    published: bool,
    message: str,
) -> dict[str, Any]:
    """What ``_runs/RUN_ID.json`` holds: the run's manifest (when there is one), its status,
    whether it was published, and why not."""
    document: dict[str, Any] = manifest.as_dict() if manifest else {}
    document.setdefault("run_id", run_id)
    document.setdefault("snapshot_date", snapshot_date)
    document["status"] = status
    document["published"] = published
    document["message"] = redact(message)
    document["recorded_at"] = utc_now()
    return document


def _record(
    fs: pafs.FileSystem,
    staged: Layout,
    manifest: Manifest | None,
    status: str,
    published: bool,
    message: str,
) -> None:
    document = run_record(staged.run_id, staged.snapshot_date, manifest, status, published, message)
    write_record(fs, staged.run_record(), document)


def write_record(fs: pafs.FileSystem, path: str, document: Mapping[str, Any]) -> None:
    """Write a run's record; a failure to write it is logged, never raised (the outcome the
    record describes has happened either way)."""
    try:
        durable.write_json(fs, path, document)
    except OSError as exc:
        log.error("run.record_failed", path=path, reason=str(exc))


def _already_published(
    store: Store, run_id: str, day: str, shards: Sequence[Manifest]
) -> RunOutcome | None:
    """A repeated commit of a published run: the partition of its date holds this run's
    manifest, and what is staged (if anything is left) is what it published, not a new attempt
    under the same run id. It succeeds unchanged; its record is written again if a kill left it
    unwritten or a failed retry overwrote it, and the clean-up after the commit point is redone."""
    fs, base = store.fs, store.base
    candidates = [day]
    record_path = layout.run_record(base, run_id)
    recorded: Any = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        recorded = durable.read_json(fs, record_path)
        candidates.insert(0, names.check_snapshot_date(recorded.get("snapshot_date")))
    for candidate in dict.fromkeys(candidates):
        staged = Layout(base, run_id, candidate)
        try:
            published = read_manifest(fs, staged.partition)
        except (OSError, KeyError, TypeError, ValueError):
            continue
        if published is None or published.run_id != run_id:
            continue
        if shards and min(s.started_at for s in shards) != published.started_at:
            return None  # staged anew under the same run id: commit that
        if not isinstance(recorded, dict) or recorded.get("published") is not True:
            _record(fs, staged, published, published.status, True, "")
        _clean_up(fs, staged)
        code = EXIT_PARTIAL if published.failed else EXIT_OK
        return RunOutcome(run_id, code, True, published, "already published")
    return None
