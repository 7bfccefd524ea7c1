"""Change capture: which images appeared, disappeared (removed, or retired for platform
images) or changed between two snapshots.

Rows are matched by ``(region, id, compartment_id)``: a custom image moved to another
compartment is removed from one and added to the other, as an analyst keyed by compartment
expects; a platform image (``compartment_id`` null) is matched by region and id alone, so the
listing that happened to donate it does not matter. Every API column, and ``_extra``, is
compared; load metadata (``_run_id``, ``_fetched_at``, ...) is not.

Memory stays flat however many images there are: both snapshots stream once through a
spill step that writes only their rows, bucketed by a hash of the id, into Arrow IPC files in
a temporary directory; buckets are then compared one at a time. Comparison is vectorized
(``_same``), null-safe and recursive over lists, maps and structs; only rows whose maps differ
in entry order alone are looked at row by row, and they are judged equal.

Either snapshot may be a plain partition (its region in the folder names, added back by
``snapshots.read_batches``), a table's, or one written before the partition columns had one
name (``_region`` and ``_snapshot_date`` inside the files, which the comparison ignores): a
change is found across that boundary as between any two snapshots.
"""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

from connector import logs, schema
from connector.lake.layout import IMAGES, partition_of
from connector.sinks import FileInfo, SinkOptions

if TYPE_CHECKING:
    from connector.lake.layout import Layout
    from connector.lake.tables import TableWriter

log = logs.get_logger("connector.lake.changes")

KEY = ("region", "id", "compartment_id")
COMPARED: tuple[str, ...] = tuple(
    c.name
    for c in schema.COLUMNS
    if (not c.is_metadata and c.name not in KEY) or c.name == "_extra"
)
"""The columns whose difference makes a change: the API's fields and the unknown ones."""

_CARRIED = tuple(dict.fromkeys((*KEY, "display_name", "_is_platform", *COMPARED)))
_ROWS_PER_BUCKET = 200_000


class _Compute:
    """pyarrow.compute, imported at first use: its import (about 75 ms, with the ``pydoc`` that
    its docstrings pull in) would otherwise stand before every run's first request, since the
    commit imports this module. Untyped here: its stubs' overloads reject the chunked and nested
    arrays that the comparison passes through (they run fine; the tests cover each kind)."""

    def __getattr__(self, name: str) -> Any:
        import pyarrow.compute

        return getattr(pyarrow.compute, name)


pc: Any = _Compute()

Batches = Callable[[], Iterable[pa.RecordBatch]]
"""A snapshot as something that streams its record batches (called once)."""


@dataclass(slots=True)
class ChangeCounts:
    """How many rows of each kind a diff found."""

    added: int = 0
    removed: int = 0
    changed: int = 0
    retired: int = 0
    """Platform images that left the listings: Oracle published a newer build (see ``_kinds``)."""

    @property
    def total(self) -> int:
        """All changes."""
        return self.added + self.removed + self.changed + self.retired


@dataclass(frozen=True, slots=True)
class DiffContext:
    """What every change row carries besides the change itself."""

    from_date: date | None
    to_date: date
    run_id: str
    tenancy_id: str | None = None


def diff(
    old: Batches,
    new: Batches,
    context: DiffContext,
    *,
    expected_rows: int = 0,
    counts: ChangeCounts | None = None,
) -> Iterator[pa.RecordBatch]:
    """Change rows (``schema.CHANGES_SCHEMA``) turning snapshot ``old`` into ``new``.

    ``expected_rows`` (the larger snapshot's row count, from its manifest) sizes the buckets;
    an underestimate costs memory, not correctness. ``counts``, when given, is filled in.
    """
    tally = counts if counts is not None else ChangeCounts()
    buckets = max(1, -(-expected_rows // _ROWS_PER_BUCKET))
    with tempfile.TemporaryDirectory(prefix="oci-images-diff-") as folder:
        before = _Spill(Path(folder) / "old", buckets)
        after = _Spill(Path(folder) / "new", buckets)
        with before, after:
            for batch in old():
                before.add(batch)
            for batch in new():
                after.add(batch)
        for bucket in range(buckets):
            changes = _compare(before.read(bucket), after.read(bucket), context, tally)
            if changes.num_rows:
                yield from changes.to_batches()


class _Spill:
    """Rows of one snapshot, reduced to the compared columns, bucketed by a hash of the id."""

    def __init__(self, folder: Path, buckets: int) -> None:
        folder.mkdir()
        self.folder = folder
        self.buckets = buckets
        self.schema = pa.schema([schema.SCHEMA.field(name) for name in _CARRIED])
        self._writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}

    def __enter__(self) -> _Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def add(self, batch: pa.RecordBatch) -> None:
        """Take in a batch of the images schema (columns it lacks count as null)."""
        columns = [
            batch.column(name)
            if name in batch.schema.names
            else pa.nulls(batch.num_rows, field.type)
            for name, field in zip(_CARRIED, self.schema, strict=True)
        ]
        reduced = pa.RecordBatch.from_arrays(
            [c.cast(f.type) for c, f in zip(columns, self.schema, strict=True)], schema=self.schema
        )
        if self.buckets == 1:
            self._writer(0).write_batch(reduced)
            return
        numbers = [zlib.crc32(str(i).encode()) % self.buckets for i in reduced.column("id")]
        bucket_of = pa.array(numbers, pa.int32())
        for bucket in sorted(set(numbers)):
            mask = pc.equal(bucket_of, pa.scalar(bucket, pa.int32()))
            self._writer(bucket).write_batch(reduced.filter(mask))

    def _writer(self, bucket: int) -> pa.ipc.RecordBatchStreamWriter:
        if bucket not in self._writers:
            self._writers[bucket] = pa.ipc.new_stream(str(self._path(bucket)), self.schema)
        return self._writers[bucket]

    def _path(self, bucket: int) -> Path:
        return self.folder / f"{bucket:05d}.arrows"

    def read(self, bucket: int) -> pa.Table:
        """One bucket's rows, each key once."""
        path = self._path(bucket)
        if not path.exists():
            return self.schema.empty_table()
        with pa.OSFile(str(path), "rb") as source, pa.ipc.open_stream(source) as reader:
            table = reader.read_all()
        return _unique(table)


def _join_keys(table: pa.Table) -> pa.Table:
    """The match key as join-safe columns (a null compartment matches a null compartment)."""
    compartment: Column = pc.fill_null(table.column("compartment_id"), "")
    return pa.Table.from_arrays(
        [
            table.column("region"),
            table.column("id"),
            compartment,
            pa.array(range(table.num_rows), pa.int64()),
        ],
        names=["k_region", "k_id", "k_compartment", "row"],
    )


def _unique(table: pa.Table) -> pa.Table:
    """The first row of each key: ``platform_images = every`` repeats platform rows."""
    keys = _join_keys(table)
    first = keys.group_by(["k_region", "k_id", "k_compartment"], use_threads=False).aggregate(
        [("row", "min")]
    )
    if first.num_rows == table.num_rows:
        return table
    return table.take(first.column("row_min"))


def _compare(old: pa.Table, new: pa.Table, context: DiffContext, tally: ChangeCounts) -> pa.Table:
    keys = ["k_region", "k_id", "k_compartment"]
    joined = _join_keys(old).join(
        _join_keys(new), keys=keys, join_type="full outer", left_suffix="_old", right_suffix="_new",
        use_threads=False,
    )  # fmt: skip
    old_rows, new_rows = joined.column("row_old"), joined.column("row_new")
    removed = old.take(old_rows.filter(new_rows.is_null()))
    added = new.take(new_rows.filter(old_rows.is_null()))
    matched = pc.and_(old_rows.is_valid(), new_rows.is_valid())
    before = old.take(old_rows.filter(matched))
    after = new.take(new_rows.filter(matched))
    differing = {
        name: pc.invert(_same(before.column(name), after.column(name))) for name in COMPARED
    }
    any_change: Column = pa.array([False] * before.num_rows, pa.bool_())
    for mask in differing.values():
        any_change = pc.or_(any_change, mask)
    changed_before, changed_after = before.filter(any_change), after.filter(any_change)
    names_per_row: list[list[str]] = [[] for _ in range(changed_before.num_rows)]
    for name, mask in differing.items():
        for row in pc.indices_nonzero(mask.filter(any_change)).to_pylist():
            names_per_row[row].append(name)
    removed, retired = _kinds(removed)
    tally.added += added.num_rows
    tally.removed += removed.num_rows
    tally.retired += retired.num_rows
    tally.changed += changed_before.num_rows
    return pa.concat_tables(
        [
            _rows("added", added, None, None, context),
            _rows("removed", removed, None, None, context),
            _rows("retired", retired, None, None, context),
            _rows("changed", changed_after, changed_before, names_per_row, context),
        ]
    )


def _kinds(gone: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Rows that left, as (removed, retired). ListImages lists only the newest builds of each
    platform image: when Oracle publishes a new one, the oldest leaves the list but still
    exists, so a platform image that left is ``retired``; a custom image that left was deleted
    or moved out of scope: ``removed``."""
    platform: Column = pc.fill_null(gone.column("_is_platform"), False)
    return gone.filter(pc.invert(platform)), gone.filter(platform)


def _rows(
    kind: str,
    rows: pa.Table,
    previous: pa.Table | None,
    names: list[list[str]] | None,
    context: DiffContext,
) -> pa.Table:
    count = rows.num_rows
    before: list[str | None] = [None] * count
    after: list[str | None] = [None] * count
    if previous is not None and names is not None:
        old_values = previous.to_pylist(maps_as_pydicts="lossy")
        new_values = rows.to_pylist(maps_as_pydicts="lossy")
        before = [
            _json({n: old[n] for n in changed})
            for old, changed in zip(old_values, names, strict=True)
        ]
        after = [
            _json({n: new[n] for n in changed})
            for new, changed in zip(new_values, names, strict=True)
        ]
    columns: dict[str, Any] = {
        "change": pa.array([kind] * count, pa.string()),
        "region": rows.column("region"),
        "id": rows.column("id"),
        "compartment_id": rows.column("compartment_id"),
        "display_name": rows.column("display_name"),
        "_is_platform": rows.column("_is_platform"),
        "changed_fields": pa.array(
            names if names is not None else [[]] * count, pa.list_(pa.string())
        ),
        "before": pa.array(before, pa.string()),
        "after": pa.array(after, pa.string()),
        "_from_snapshot_date": pa.array([context.from_date] * count, pa.date32()),
        "_tenancy_id": pa.array([context.tenancy_id] * count, pa.string()),
        "_run_id": pa.array([context.run_id] * count, pa.string()),
    }
    return pa.table(columns, schema=schema.CHANGES_SCHEMA)


def _json(values: dict[str, Any]) -> str:
    return orjson.dumps(values, option=orjson.OPT_SORT_KEYS).decode()


# -- null-safe, vectorized equality ---------------------------------------------------------

Column = Any
"""An Arrow array of any type: pyarrow's stubs do not model the nested arrays' methods
(``flatten``, ``view``, ``type.key_field``) that these helpers use."""


def _same(a: Column, b: Column) -> Column:
    """Per row: whether ``a`` and ``b`` hold the same value (two nulls are the same)."""
    left, right = _whole(a), _whole(b)
    kind = left.type
    if pa.types.is_map(kind):
        same = _same_lists(_entries(left), _entries(right))
        return _map_order_recheck(left, right, same)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _same_lists(left, right)
    both_null: Column = pc.and_(left.is_null(), right.is_null())
    if pa.types.is_struct(kind):
        one_null: Column = pc.xor(left.is_null(), right.is_null())
        fields: Column = pa.array([True] * len(left), pa.bool_())
        for child_left, child_right in zip(left.flatten(), right.flatten(), strict=True):
            fields = pc.and_(fields, _same(child_left, child_right))
        return pc.or_(both_null, pc.and_(pc.invert(one_null), fields))
    return pc.or_(pc.fill_null(pc.equal(left, right), False), both_null)


def _same_lists(left: Column, right: Column) -> Column:
    """Lists are the same when both are null, or both have the same elements in order."""
    both_null: Column = pc.and_(left.is_null(), right.is_null())
    comparable: Column = pc.fill_null(
        pc.equal(pc.list_value_length(left), pc.list_value_length(right)), False
    )
    left_rows, right_rows = left.filter(comparable), right.filter(comparable)
    elements_same = _same(left_rows.flatten(), right_rows.flatten())
    parents: Column = pc.list_parent_indices(left_rows)
    spoiled: Column = pc.unique(parents.filter(pc.invert(elements_same)))
    rows_same: Column = pc.invert(
        pc.is_in(pa.array(range(len(left_rows)), pa.int64()), value_set=spoiled)
    )
    same: Column = pc.replace_with_mask(
        pa.array([False] * len(left), pa.bool_()), comparable, rows_same
    )
    return pc.or_(same, both_null)


def _entries(maps: Column) -> Column:
    """A map array viewed as the list of key/value structs it is."""
    entry = pa.struct([maps.type.key_field, maps.type.item_field])
    return maps.view(pa.list_(pa.field("entries", entry, nullable=False)))


def _map_order_recheck(left: Column, right: Column, same: Column) -> Column:
    """Maps whose entries differ only in order are the same map: recheck the rows that
    compared unequal, one by one (few: those that really changed, or were reordered)."""
    suspects: list[int] = pc.indices_nonzero(pc.invert(same)).to_pylist()
    if not suspects:
        return same
    values = same.to_pylist()
    for row in suspects:
        # As dicts, maps compare without regard to entry order, nested ones too.
        values[row] = left[row].as_py(maps_as_pydicts="lossy") == right[row].as_py(
            maps_as_pydicts="lossy"
        )
    return pa.array(values, pa.bool_())


def _whole(array: Column) -> Column:
    if isinstance(array, pa.ChunkedArray):
        return array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    return array


def diff_published(
    fs: pafs.FileSystem,
    base: str,
    from_date: str,
    to_date: str,
    *,
    run_id: str,
    table: TableWriter | None = None,
    counts: ChangeCounts | None = None,
) -> Iterator[pa.RecordBatch]:
    """Changes between two published snapshots of ``images`` under ``base``, read through
    their manifests (or, with a table format, from the table). Raises ``PublishError`` when
    either snapshot is not published."""
    from connector.lake import snapshots

    old = snapshots.manifest(fs, base, from_date)
    new = snapshots.manifest(fs, base, to_date)

    def rows_of(day: str, document: Any) -> Callable[[], Iterable[pa.RecordBatch]]:
        if table is not None:
            return lambda: table.scan(day)
        partition = partition_of(base, IMAGES, day)
        return lambda: snapshots.read_batches(fs, partition, document["files"], schema.FILE_SCHEMA)

    context = DiffContext(date.fromisoformat(from_date), date.fromisoformat(to_date), run_id)
    return diff(
        rows_of(from_date, old),
        rows_of(to_date, new),
        context,
        expected_rows=max(int(old.get("rows", 0)), int(new.get("rows", 0))),
        counts=counts,
    )


def stage_changes(
    fs: pafs.FileSystem,
    layout: Layout,
    files: Sequence[FileInfo],
    rows: int,
    table: TableWriter | None,
    options: SinkOptions,
) -> tuple[FileInfo, ...]:
    """The ``changes`` dataset of a run being committed: its staged ``images`` files against
    the latest complete snapshot published before its date (from the table, with a table
    format), written into the run's staging."""
    from connector.lake import snapshots
    from connector.sinks.dataset import write_batches

    before = snapshots.previous_date(fs, layout.base, layout.snapshot_date)
    context = DiffContext(
        date.fromisoformat(before) if before else None,
        date.fromisoformat(layout.snapshot_date),
        layout.run_id,
    )
    previous_rows = 0

    def old() -> Iterable[pa.RecordBatch]:
        if before is None:
            return iter(())
        if table is not None:
            return table.scan(before)
        document = snapshots.manifest(fs, layout.base, before)
        partition = partition_of(layout.base, IMAGES, before)
        return snapshots.read_batches(fs, partition, document["files"], schema.FILE_SCHEMA)

    if before is not None:
        previous_rows = int(snapshots.manifest(fs, layout.base, before).get("rows", 0))
    listed = [{"path": f.path} for f in files]
    counts = ChangeCounts()
    batches = diff(
        old,
        lambda: snapshots.read_batches(fs, layout.staged_partition, listed, schema.FILE_SCHEMA),
        context,
        expected_rows=max(rows, previous_rows),
        counts=counts,
    )
    written = write_batches(
        fs, layout.staged_dataset("changes"), batches, schema.CHANGES_SCHEMA, options
    )
    log.info(
        "changes.staged",
        since=before,
        added=counts.added,
        removed=counts.removed,
        retired=counts.retired,
        changed=counts.changed,
    )
    return (written,)
