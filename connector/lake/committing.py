"""Commit: publish a run's staged shards as one partition, or nothing, and record it either way.

In order, under the snapshot date's lock (``connector.lake.lock``):

1. repair interrupted swaps and remove dead attempts' staging (``connector.lake.durable``);
2. read every shard's manifest; all shards present, one snapshot date, no shard still running;
3. decide: a partial run is published only with ``output.allow_partial`` and when at least
   ``output.min_complete_ratio`` of its listings are complete; below that floor it fails
   (exit 1) whatever ``allow_partial`` says, so a run in which every listing failed (a lost
   policy, a wrong region) can never replace a good partition with an empty one;
4. verify every file the manifests list: present, its size, its rows (``connector.lake.verify``);
5. gather exactly those files into one partition (hard links on a local disk), with the
   datasets published beside ``images`` (``compartments``; ``changes``, computed here, with
   ``output.changes``), and publish those first (``connector.lake.datasets``);
6. publish ``images``: on a local disk, plain files get ``_manifest.json``, then ``_SUCCESS``
   (complete) or ``_PARTIAL`` (published partial), all fsynced, and are swapped in; on object
   stores, and for Delta and Iceberg tables, ``objectstore.publish_partition`` publishes by
   copies (or the table's commit), the manifest, then the marker, recoverably;
7. write ``_runs/RUN_ID.json``; remove the run's staging.

Any failure before the swap leaves the published partition as it was. A failed or unpublished
run still gets its ``_runs/RUN_ID.json`` (status ``failed``, with each listing's error). A
second commit of a run that is published already succeeds and changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow.fs as pafs
import structlog

from connector import interrupt, names
from connector.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, ConnectorError, PublishError
from connector.lake import (
    changes,
    datasets,
    door,
    durable,
    lock,
    objectstore,
    publish,
    storage,
    tables,
    verify,
)
from connector.lake.manifest import Manifest, RunOutcome, merge
from connector.sinks import FileInfo, SinkOptions, formats

if TYPE_CHECKING:
    from connector.config import Settings
    from connector.lake.storage import Store
    from connector.lake.tables import TableWriter

log = structlog.get_logger("connector.lake.committing")

SUCCESS = "_SUCCESS"
PARTIAL = "_PARTIAL"
MANIFEST = "_manifest.json"


def complete_ratio(manifest: Manifest) -> float:
    """The share of the run's listings that completed (1.0 for a run with none)."""
    total = len(manifest.compartments)
    return 1.0 if total == 0 else (total - len(manifest.failed)) / total


def commit_run(
    settings: Settings,
    run_id: str,
    *,
    store: Store | None = None,
    held: lock.Lock | None = None,
    started: float | None = None,
) -> RunOutcome:
    """Publish the staged shards of ``run_id`` (see the module docstring).

    ``held`` is the date lock when the caller (a run that stages and commits) holds it already.
    """
    committing = time.monotonic()
    began = started or committing
    run_id = names.check_run_id(run_id, "run_id")
    output = settings.output
    store = store or storage.resolve(output.uri, output.storage_options)
    table = tables.for_output(output, store)
    filesystem, base = store.fs, store.base
    deadline = settings.fetch.run_deadline_s
    owner = held.owner if held else lock.Owner.me(run_id, lock.new_attempt_id(), deadline)
    if held is None:
        # Whatever else happens, a swap that an earlier commit left half done is finished or
        # undone first (each date under its own lock).
        publish.recover(filesystem, base, owner)
    shards = _read_shards(filesystem, base, run_id)
    if not shards:
        done = _already_published(filesystem, base, run_id, store, table, settings)
        if done is not None:
            return done
        message = f"nothing staged for run {run_id} under {base}/{publish.STAGING}/{run_id}"
        return RunOutcome(run_id, EXIT_FAILED, False, None, message, time.monotonic() - began)
    day = shards[0].snapshot_date
    layout = publish.Layout(base, run_id, day, f"commit-{lock.new_attempt_id()}")
    guard: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if held is None:
        guard = lock.date_lock(filesystem, base, day, owner)
    with guard:
        publish.recover(filesystem, base, owner, held=(day,))
        if not store.is_local or table is not None:
            # A commit of this date killed on a store without rename: finish or roll it back.
            objectstore.recover(filesystem, base, layout.partition, table)
        shards = _read_shards(filesystem, base, run_id)  # as they are now, under the lock
        problem = _incomplete(filesystem, base, run_id, shards)
        if problem:
            return _refuse(filesystem, layout, None, problem, EXIT_FAILED, began)
        manifest = merge(shards)
        ratio = complete_ratio(manifest)
        floor = settings.output.min_complete_ratio
        if manifest.failed and not settings.output.allow_partial:
            message = (
                f"{len(manifest.failed)} listing(s) failed; nothing published "
                "(output.allow_partial = false)"
            )
            return _refuse(filesystem, layout, manifest, message, EXIT_PARTIAL, began)
        if manifest.failed and ratio < floor:
            message = (
                f"only {ratio:.0%} of the listings completed ({len(manifest.failed)} of "
                f"{len(manifest.compartments)} failed), below output.min_complete_ratio = "
                f"{floor:g}; nothing published"
            )
            return _refuse(filesystem, layout, manifest, message, EXIT_FAILED, began)
        try:
            for shard in shards:
                root = _shard_root(base, run_id, shard)
                name = f"{shard.shard[0]}/{shard.shard[1]}" if shard.shard else "0/1"
                verify.verify_files(filesystem, root, _entries(shard), name)
        except verify.VerificationError as exc:
            return _refuse(filesystem, layout, manifest, str(exc), EXIT_FAILED, began)
        manifest = replace(manifest, finished_at=publish.utc_now())
        lock.claim_attempt(filesystem, base, replace(owner, attempt=layout.attempt))
        manifest = _publish(
            filesystem, layout, shards, manifest, settings, store, table, committing
        )
    code = EXIT_PARTIAL if manifest.failed else EXIT_OK
    elapsed = time.monotonic() - began
    _record(filesystem, layout, manifest, "partial" if manifest.failed else "succeeded", True, "")
    with contextlib.suppress(OSError):
        door.guarded_delete(filesystem, base, layout.run_staging)
        publish.remove_if_empty(filesystem, base, f"{base}/{publish.STAGING}")
    log.info(
        "run.published",
        run_id=run_id,
        partition=layout.partition,
        rows=manifest.rows,
        status=manifest.status,
    )
    return RunOutcome(run_id, code, True, manifest, elapsed_s=elapsed)


def _read_shards(fs: pafs.FileSystem, base: str, run_id: str) -> list[Manifest]:
    folder = f"{base}/{publish.STAGING}/{run_id}/shards"
    entries = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    shards = []
    for entry in sorted(entries, key=lambda e: e.path):
        if not entry.base_name.endswith(".json"):
            continue
        try:
            shards.append(Manifest.from_dict(publish.read_json(fs, entry.path)))
        except (OSError, KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise PublishError(f"the shard manifest {entry.path} cannot be read: {exc}") from None
    return shards


def _incomplete(fs: pafs.FileSystem, base: str, run_id: str, shards: list[Manifest]) -> str | None:
    """Why the shards cannot be committed as they are, if they cannot."""
    if not shards:
        return f"nothing staged for run {run_id}"
    count = shards[0].shard[1] if shards[0].shard else 1
    indexes = sorted(s.shard[0] if s.shard else 0 for s in shards)
    if indexes != list(range(count)) or any(s.shard and s.shard[1] != count for s in shards):
        missing = sorted(set(range(count)) - set(indexes))
        return f"run {run_id} is missing shards {missing} of {count}"
    dates = {s.snapshot_date for s in shards}
    if len(dates) != 1:
        return f"shards of run {run_id} disagree on snapshot_date: {sorted(dates)}"
    foreign = sorted({s.run_id for s in shards} - {run_id})
    if foreign:
        return (
            f"refusing to commit run {run_id}: its staging holds shards of run(s) "
            f"{', '.join(foreign)}"
        )
    for index in range(count):
        probe = lock.shard_lock(fs, base, run_id, index, count, _probe_owner(run_id))
        try:
            probe.acquire()
        except lock.LockHeld as exc:
            return f"shard {index}/{count} is still running: {exc}"
        probe.release()
    return None


def _probe_owner(run_id: str) -> lock.Owner:
    return lock.Owner.me(run_id, "commit-probe")


def _shard_root(base: str, run_id: str, shard: Manifest) -> str:
    """Where a shard's partition was staged (its attempt's folder)."""
    return publish.Layout(base, run_id, shard.snapshot_date, shard.attempt or "").staged_partition


def _entries(shard: Manifest) -> Iterator[Mapping[str, Any]]:
    for info in (*shard.files, *shard.reject_files):
        yield {"path": info.path, "rows": info.rows, "bytes": info.bytes}


def _publish(
    fs: pafs.FileSystem,
    layout: publish.Layout,
    shards: list[Manifest],
    manifest: Manifest,
    settings: Settings,
    store: Store,
    table: TableWriter | None,
    committing: float,
) -> Manifest:
    """Gather the listed files, publish the datasets beside images, then images: manifest and
    marker and a swap on a local disk, the recoverable copy commit elsewhere. The manifest as
    published; its ``commit`` timing runs from ``committing`` to the manifest's writing (what
    follows, a swap or the deletion of superseded files, is not in it)."""
    target = layout.staged_partition
    try:
        seen: set[str] = set()
        companions: dict[str, tuple[FileInfo, ...]] = {}
        for shard in shards:
            root = _shard_root(layout.base, layout.run_id, shard)
            for entry in _entries(shard):
                relative = str(entry["path"])
                if relative in seen:
                    raise PublishError(f"two shards list the same file {relative}")
                seen.add(relative)
                _gather(fs, f"{root}/{relative}", f"{target}/{relative}")
            shard_layout = publish.Layout(
                layout.base, layout.run_id, shard.snapshot_date, shard.attempt or ""
            )
            for name, files in shard.datasets.items():
                for info in files:
                    _gather(
                        fs,
                        f"{shard_layout.staged_dataset(name)}/{info.path}",
                        f"{layout.staged_dataset(name)}/{info.path}",
                    )
                companions[name] = companions.get(name, ()) + files
        fs.create_dir(target, recursive=True)
        output = settings.output
        if output.changes:
            options = SinkOptions(formats.get(output.format), output.effective_compression)
            companions["changes"] = changes.stage_changes(
                fs, layout, manifest.files, manifest.rows, table, options
            )
        interrupt.check()
        # Before images: when images' marker appears, its companions are in place.
        manifest = replace(manifest, datasets=datasets.publish_all(fs, layout, companions))
        timings = replace(manifest.timings, commit_s=time.monotonic() - committing)
        manifest = replace(manifest, timings=timings)
        if store.is_local and table is None:
            publish.write_json(fs, f"{target}/{MANIFEST}", manifest.as_dict())
            marker = PARTIAL if manifest.failed else SUCCESS
            durable.write_durably(fs, f"{target}/{marker}", b"")
            interrupt.check()
            publish.swap_in(fs, layout, target)
        else:
            document = objectstore.publish_partition(
                fs, layout, manifest.as_dict(), layout.partition, table
            )
            manifest = Manifest.from_dict(document)
    except BaseException:
        with contextlib.suppress(OSError, ConnectorError):
            door.guarded_delete(fs, layout.base, layout.staging)
        raise
    return manifest


def _gather(fs: pafs.FileSystem, source: str, target: str) -> None:
    """Put a staged file into the partition being built: a hard link on a local disk (the
    shard's copy stays, so a failed commit can be retried), a copy elsewhere."""
    parent = target.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
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
    layout: publish.Layout,
    manifest: Manifest | None,
    message: str,
    code: int,
    began: float,
) -> RunOutcome:
    """Publish nothing; record why."""
    log.error("run.not_published", run_id=layout.run_id, reason=message)
    _record(fs, layout, manifest, "failed", False, message)
    elapsed = time.monotonic() - began
    return RunOutcome(layout.run_id, code, False, manifest, message, elapsed)


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
    document["message"] = message
    document["recorded_at"] = publish.utc_now()
    return document


def _record(
    fs: pafs.FileSystem,
    layout: publish.Layout,
    manifest: Manifest | None,
    status: str,
    published: bool,
    message: str,
) -> None:
    document = run_record(layout.run_id, layout.snapshot_date, manifest, status, published, message)
    write_record(fs, layout.run_record(), document)


def write_record(fs: pafs.FileSystem, path: str, document: Mapping[str, Any]) -> None:
    """Write a run's record; a failure to write it is logged, never raised (the outcome the
    record describes has happened either way)."""
    try:
        publish.write_json(fs, path, document)
    except OSError as exc:
        log.error("run.record_failed", path=path, reason=str(exc))


def _already_published(
    fs: pafs.FileSystem,
    base: str,
    run_id: str,
    store: Store,
    table: TableWriter | None,
    settings: Settings,
) -> RunOutcome | None:
    """A repeated commit of a published run: its record says so, and the partition it names
    still holds this run's manifest. On a store without rename, a commit killed past its
    commit point (no record written yet) is finished first and counts as published."""
    record_path = f"{base}/{publish.RUNS}/{run_id}.json"
    if not publish.exists(fs, record_path):
        if store.is_local and table is None:
            return None
        place = publish.Layout(base, run_id, settings.output.effective_snapshot_date).partition
        objectstore.recover(fs, base, place, table)
        document = objectstore.published_manifest(fs, place)
        if document is None or document.get("run_id") != run_id:
            return None
        published = Manifest.from_dict(document)
        code = EXIT_PARTIAL if published.failed else EXIT_OK
        return RunOutcome(run_id, code, True, published, "already published")
    try:
        record = publish.read_json(fs, record_path)
        day = names.check_snapshot_date(record.get("snapshot_date"))
        partition = publish.Layout(base, run_id, day).partition
        published = Manifest.from_dict(publish.read_json(fs, f"{partition}/{MANIFEST}"))
    except (OSError, KeyError, TypeError, ValueError, ConnectorError):
        return None
    if not record.get("published") or published.run_id != run_id:
        return None
    code = EXIT_PARTIAL if published.failed else EXIT_OK
    return RunOutcome(run_id, code, True, published, "already published")
