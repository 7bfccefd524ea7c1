"""Delta Lake and Iceberg tables: a run replaces its snapshot date in one atomic commit.

``output.table_format = "delta"``: a Delta table at ``{uri}/images``, written by delta-rs
(``deltalake``) as one ``overwrite`` with the predicate ``snapshot_date = 'D'``: a single
log entry removes the date's previous files and adds the new ones.

``output.table_format = "iceberg"``: an Iceberg table ``{namespace}.images`` in the catalog of
``[output.catalog]`` (a SQL catalog on SQLite by default, REST or Glue), located at
``{uri}/images``, written by pyiceberg in one transaction: a delete of the date, then the new
data files, published by one catalog commit.

Both tables are partitioned by ``snapshot_date`` and ``region`` (``names.PARTITION_COLUMNS``,
the names plain files give their folders); their schema and column comments come from
``connector.schema``. A table written before the partition columns had one name
(``_snapshot_date``, ``_region``) is refused with a message, never mixed with the new names.
Each commit carries the run id (Delta: commit info ``oci_images.run_id``; Iceberg: snapshot
summary ``oci-images.run-id``), which is how a recovery tells whether a killed run's table
commit happened.

Delta reads the staged Parquet files as a stream of batches; Iceberg registers copies of them
as they are. Neither holds the date's rows in memory.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connector import names, schema
from connector.errors import ConfigError, PublishError
from connector.lake import door, layout
from connector.lake.storage import Store

if TYPE_CHECKING:
    from connector.config import OutputSettings

TABLE = "images"
FORMATS = ("delta", "iceberg")
CATALOG_TYPES = ("sql", "rest", "glue")
PARTITION_BY = names.PARTITION_COLUMNS
OLD_PARTITION_COLUMNS = ("_snapshot_date", "_region")
DELTA_RUN_KEY = "oci_images.run_id"
ICEBERG_RUN_KEY = "oci-images.run-id"
DELTA_EXPIRED_KEY = "oci_images.expired_by"
ICEBERG_EXPIRED_KEY = "oci-images.expired-by"
"""Retention's deletes carry the pruning run's id under a key of their own, so that ``find``
(which looks for a run's publishing commit) never mistakes one for it."""
DESCRIPTION = "OCI Compute images (ListImages), one snapshot per snapshot_date"


def annotated_schema(doc_key: str) -> pa.Schema:
    """The output schema with each column's description under ``doc_key`` in its metadata."""
    return pa.schema(
        [
            pa.field(c.name, c.type, nullable=c.nullable, metadata={doc_key: c.description})
            for c in schema.COLUMNS
        ]
    )


class TableWriter(Protocol):
    """Commits a run's staged files to a table, and finds a run's commit afterwards."""

    @property
    def format(self) -> str:
        """``delta`` or ``iceberg``."""

    def commit(self, run_id: str, snapshot_date: str, files: Sequence[str]) -> dict[str, Any]:
        """Replace ``snapshot_date`` with the rows of ``files`` (paths on the store's
        filesystem); what the manifest records about the commit."""

    def find(self, run_id: str) -> dict[str, Any] | None:
        """The commit of ``run_id``, as ``commit`` describes it, or None if there is none."""

    def discard(self, run_id: str, snapshot_date: str) -> None:
        """Remove what an uncommitted ``commit`` of ``run_id`` left behind, if anything."""

    def scan(self, snapshot_date: str) -> Iterator[pa.RecordBatch]:
        """The rows of ``snapshot_date`` as the table holds them now, a batch at a time."""

    def expire(self, run_id: str, snapshot_date: str) -> None:
        """Delete the rows of ``snapshot_date`` in one commit of the table's own
        (``output.keep_days``), tagged with ``run_id``, the run that prunes."""


def check(table_format: str, uri: str, catalog: Mapping[str, Any]) -> None:
    """What ``writer`` would reject, found without opening anything (config validation)."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if scheme not in ("file", "s3", "s3a", "s3n"):
        raise ConfigError(
            "output.table_format",
            f"{table_format} tables are written to a local directory or s3:// "
            f"(OCI Object Storage: its S3 compatibility endpoint), not to {scheme}://",
        )
    extra, module = {"delta": ("delta", "deltalake"), "iceberg": ("iceberg", "pyiceberg")}[
        table_format
    ]
    if importlib.util.find_spec(module) is None:
        raise _missing(extra, module)
    if table_format == "iceberg":
        kind = str(catalog.get("type") or "sql")
        if kind not in CATALOG_TYPES:
            raise ConfigError("output.catalog.type", f"must be sql, rest or glue, got {kind!r}")
        if kind == "sql" and scheme != "file" and not catalog.get("uri"):
            raise ConfigError(
                "output.catalog.uri",
                "is needed for an Iceberg SQL catalog when output.uri is an object store "
                "(a SQLite file cannot live there): sqlite:////path/catalog.db, or a REST "
                "or Glue catalog",
            )
        if kind == "rest" and not catalog.get("uri"):
            raise ConfigError("output.catalog.uri", "a REST catalog needs its URL")
        if kind == "sql":
            _check_sqlite_path(str(catalog.get("uri") or ""))


def _check_sqlite_path(uri: str) -> None:
    """A SQLite catalog's file is named by an absolute path (``sqlite:////path/x.db``).

    ``sqlite:///x.db`` is relative, and resolves against whatever folder the command or the
    Airflow worker happens to run in: ``sqlite:///../../x.db`` lands outside the output, in a
    different place from every other worker. Refused, naming the key, before anything opens.
    """
    prefix = "sqlite:///"
    if not uri.lower().startswith(prefix):
        return
    path = uri[len(prefix) :].split("?", 1)[0]
    if path in ("", ":memory:") or path.startswith("/"):
        return
    raise ConfigError(
        "output.catalog.uri",
        f"{uri} is a relative path, which resolves against the working directory "
        f"({os.path.abspath(path)}), not the output: give an absolute one, "
        f"sqlite:////absolute/path/catalog.db, or leave it out for {{uri}}/iceberg_catalog.db",
    )


def for_output(output: OutputSettings, store: Store) -> TableWriter | None:
    """The writer ``output.table_format`` asks for, or None for plain files."""
    if not output.table_format:
        return None
    return writer(store, output.table_format, output.catalog, output.effective_compression)


def writer(
    store: Store, table_format: str, catalog: Mapping[str, Any], compression: str = ""
) -> TableWriter:
    """The writer for ``output.table_format``; ``ConfigError`` if it cannot work here.
    ``compression`` is ``output.compression`` (Parquet's codec; "" for delta-rs's default)."""
    check(table_format, store.uri(store.base), catalog)
    if table_format == "delta":
        return DeltaWriter(store, compression)
    if table_format == "iceberg":
        return IcebergWriter(store, catalog)
    raise ConfigError("output.table_format", f"must be delta or iceberg, got {table_format!r}")


def _batches(store: Store, files: Sequence[str], target: pa.Schema) -> Iterator[pa.RecordBatch]:
    for path in files:
        with store.fs.open_input_file(path) as raw:
            reader = pq.ParquetFile(raw)
            for batch in reader.iter_batches():
                yield pa.RecordBatch.from_arrays(batch.columns, schema=target)


def refuse_old_layout(columns: Sequence[str], where: str) -> None:
    """``PublishError`` for a table written before the partition columns had one name: its
    partition fields are ``_snapshot_date`` and ``_region``, which a table cannot rename in
    place, and a commit of the new names would mix the two."""
    old = [name for name in OLD_PARTITION_COLUMNS if name in columns]
    if old:
        raise PublishError(
            f"the table {where} was written by an older version, partitioned by "
            f"{' and '.join(old)}; this version writes snapshot_date and region: write to a new "
            "output.uri (or move the table aside), and read the old table as it is"
        )


def _missing(extra: str, module: str) -> ConfigError:
    return ConfigError(
        "output.table_format", f"needs {module}: pip install 'oci-images-connector[{extra}]'"
    )


@dataclass(frozen=True, slots=True)
class DeltaWriter:
    """``output.table_format = "delta"`` through delta-rs."""

    store: Store
    compression: str = ""
    """``output.compression``: the codec of the Parquet files delta-rs writes (Iceberg's are the
    connector's own files, written with it already)."""
    format: str = "delta"

    @property
    def uri(self) -> str:
        """Where the table lives."""
        return self.store.uri(layout.dataset_root(self.store.base, TABLE))

    def commit(self, run_id: str, snapshot_date: str, files: Sequence[str]) -> dict[str, Any]:
        """One ``overwrite`` of the date's rows."""
        from deltalake import CommitProperties, WriterProperties, write_deltalake
        from deltalake.exceptions import DeltaError

        self._check_layout()
        target = annotated_schema("comment")
        reader = pa.RecordBatchReader.from_batches(target, _batches(self.store, files, target))
        try:
            write_deltalake(
                self.uri,
                reader,
                mode="overwrite",
                predicate=f"snapshot_date = '{snapshot_date}'",
                partition_by=list(PARTITION_BY),
                name=TABLE,
                description=DESCRIPTION,
                storage_options=self.store.delta_options(),
                commit_properties=CommitProperties(custom_metadata={DELTA_RUN_KEY: run_id}),
                writer_properties=WriterProperties(compression=self.codec),
            )
        except (DeltaError, OSError) as exc:
            raise PublishError(f"Delta commit to {self.uri} failed: {exc}") from None
        found = self.find(run_id)
        if found is None:
            raise PublishError(f"Delta commit to {self.uri} is missing from its history")
        return found

    def _check_layout(self) -> None:
        """Refuse a table of the older layout (``refuse_old_layout``) before writing to it."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            table = DeltaTable(self.uri, storage_options=self.store.delta_options())
        except TableNotFoundError:
            return
        refuse_old_layout([field.name for field in table.schema().fields], self.uri)

    @property
    def codec(self) -> Any:
        """delta-rs's name for the codec (None: its default, snappy)."""
        return _DELTA_CODECS.get(self.compression)

    def find(self, run_id: str) -> dict[str, Any] | None:
        """The newest table version committed by ``run_id``."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            table = DeltaTable(self.uri, storage_options=self.store.delta_options())
        except TableNotFoundError:
            return None
        # A run commits once; a few dozen entries cover other dates' runs committed meanwhile.
        for entry in table.history(limit=100):
            if entry.get(DELTA_RUN_KEY) == run_id:
                return {"format": "delta", "uri": self.uri, "version": int(entry["version"])}
        return None

    def discard(self, run_id: str, snapshot_date: str) -> None:
        """Nothing: files of an uncommitted Delta write are unreferenced; VACUUM removes them."""

    def expire(self, run_id: str, snapshot_date: str) -> None:
        """Delete the date's rows in one table commit (``output.keep_days``). Delta names its
        partition folders as plain files do, so the date's data files sit in the folder that
        holds its manifest, and retention removes them with it, after this commit."""
        from deltalake import CommitProperties, DeltaTable
        from deltalake.exceptions import DeltaError, TableNotFoundError

        try:
            table = DeltaTable(self.uri, storage_options=self.store.delta_options())
        except TableNotFoundError:
            return
        try:
            table.delete(
                f"snapshot_date = '{names.check_snapshot_date(snapshot_date)}'",
                commit_properties=CommitProperties(custom_metadata={DELTA_EXPIRED_KEY: run_id}),
            )
        except (DeltaError, OSError) as exc:
            raise PublishError(
                f"Delta delete of {snapshot_date} in {self.uri} failed: {exc}"
            ) from None

    def scan(self, snapshot_date: str) -> Iterator[pa.RecordBatch]:
        """The date's rows, read through the table's current version (partition-pruned)."""
        import pyarrow.compute as pc
        from deltalake import DeltaTable

        table = DeltaTable(self.uri, storage_options=self.store.delta_options())
        refuse_old_layout([field.name for field in table.schema().fields], self.uri)
        dataset = table.to_pyarrow_dataset()
        day = pa.scalar(date.fromisoformat(snapshot_date), pa.date32())
        yield from dataset.to_batches(filter=pc.field("snapshot_date") == day)


_DELTA_CODECS = {"zstd": "ZSTD", "snappy": "SNAPPY", "gzip": "GZIP", "none": "UNCOMPRESSED"}
"""``output.compression``'s Parquet codecs as delta-rs's ``WriterProperties`` names them."""

CATALOG_OPEN_ATTEMPTS = 4
"""Opens of a SQL catalog that a concurrent first open may fail (see ``IcebergWriter._catalog``)."""


class IcebergWriter:
    """``output.table_format = "iceberg"`` through pyiceberg and the configured catalog."""

    format = "iceberg"

    def __init__(self, store: Store, catalog: Mapping[str, Any]) -> None:
        self.store = store
        settings = dict(catalog)
        kind = str(settings.pop("type", "sql") or "sql")
        self.name = str(settings.pop("name", "") or "oci_images")
        self.namespace = str(settings.pop("namespace", "") or "oci_images")
        self.location = store.uri(layout.dataset_root(store.base, TABLE))
        properties: dict[str, str] = {"type": kind, **store.iceberg_properties()}
        if kind == "sql":
            uri = str(settings.pop("uri", "") or "")
            properties["uri"] = uri or f"sqlite:///{store.base}/iceberg_catalog.db"
            properties.setdefault("warehouse", store.uri(store.base))
        properties.update({k: str(v) for k, v in settings.items()})
        self._properties = properties
        self._table: Any = None

    @property
    def identifier(self) -> tuple[str, str]:
        """(namespace, table)."""
        return (self.namespace, TABLE)

    def table(self, *, create: bool) -> Any:
        """The catalog's table; created, partitioned, on first use when ``create``."""
        from pyiceberg.exceptions import (
            CommitFailedException,
            NoSuchTableError,
            TableAlreadyExistsError,
        )

        catalog = self._catalog()
        try:
            return self._checked(catalog.load_table(self.identifier))
        except NoSuchTableError:
            if not create:
                return None
        try:
            catalog.create_namespace_if_not_exists(self.namespace)
        except Exception:
            # A SQL catalog checks, then inserts: a concurrent create of the namespace fails
            # the insert (sqlalchemy's IntegrityError). It exists then, which is all we need.
            if not catalog.namespace_exists(self.namespace):
                raise
        try:
            with (
                catalog.create_table_transaction(
                    self.identifier,
                    schema=annotated_schema("doc"),
                    location=self.location,
                    properties={"comment": DESCRIPTION},
                ) as transaction,
                transaction.update_spec() as spec,
            ):
                for column in PARTITION_BY:
                    spec.add_identity(column)
        except (TableAlreadyExistsError, CommitFailedException) as lost:
            # Two dates (each under its own lock) created the table at once, and the other
            # one's create committed first: its table is the one. The catalog says "already
            # exists" as either error, depending on when the race was lost.
            try:
                return catalog.load_table(self.identifier)
            except NoSuchTableError:
                raise lost from None
        return catalog.load_table(self.identifier)

    def _checked(self, table: Any) -> Any:
        """``table``, unless it is of the older layout (``refuse_old_layout``)."""
        refuse_old_layout(
            [field.name for field in table.schema().fields], ".".join(self.identifier)
        )
        return table

    def _catalog(self) -> Any:
        """The configured catalog. A SQL catalog creates its own tables when it first opens a
        database; two processes opening a fresh one together may both try, and the second
        fails ("table ... already exists", or SQLite's "database is locked"): it opens again,
        and then finds them."""
        from pyiceberg.catalog import load_catalog

        for attempt in range(CATALOG_OPEN_ATTEMPTS):
            try:
                return load_catalog(self.name, **self._properties)
            except Exception as exc:  # sqlalchemy's OperationalError, not imported for this
                text = str(exc)
                if attempt + 1 == CATALOG_OPEN_ATTEMPTS or not (
                    "already exists" in text or "database is locked" in text
                ):
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def data_path(self, run_id: str, snapshot_date: str, staged: str) -> str:
        """Where a staged file goes in the table: ``data/snapshot_date=D/region=R/``, under a
        name that carries the run id."""
        folder, _, name = staged.rpartition("/")
        region = folder.rpartition("/")[2].removeprefix("region=")
        stem, _, extension = name.partition(".")
        folder = layout.table_data(self.store.base, TABLE, snapshot_date)
        return f"{folder}/region={region}/{stem}-{run_id}.{extension}"

    def commit(self, run_id: str, snapshot_date: str, files: Sequence[str]) -> dict[str, Any]:
        """The staged files, copied into the table's data folder, replace the date's files:
        a delete and an ``add_files`` in one transaction.

        The connector's Parquet files are registered as they are rather than rewritten by
        pyiceberg: no second encoding, no table held in memory, and a null list stays null
        (pyiceberg's writer turns a null list of structs into an empty one).
        """
        from pyiceberg.exceptions import CommitFailedException

        table = self.table(create=True)
        tag = {ICEBERG_RUN_KEY: run_id}
        targets = [self.data_path(run_id, snapshot_date, path) for path in files]
        try:
            for source, target in zip(files, targets, strict=True):
                if self.store.is_local:  # object stores need no folders (and get no markers)
                    self.store.fs.create_dir(target.rpartition("/")[0], recursive=True)
                self.store.fs.copy_file(source, target)
            with table.transaction() as transaction:
                with warnings.catch_warnings():
                    # The first run of a date deletes nothing, which pyiceberg warns about.
                    warnings.filterwarnings("ignore", "Delete operation did not match")
                    transaction.delete(f"snapshot_date = '{snapshot_date}'", tag)
                if targets:
                    transaction.add_files([self.store.uri(t) for t in targets], tag)
        except (CommitFailedException, OSError) as exc:
            raise PublishError(f"Iceberg commit to {self.identifier} failed: {exc}") from None
        found = self.find(run_id)
        if found is None:
            raise PublishError(f"Iceberg commit to {self.identifier} has no snapshot")
        return found

    def scan(self, snapshot_date: str) -> Iterator[pa.RecordBatch]:
        """The date's rows, from the data files the table's current snapshot lists for it.

        The files are the connector's own Parquet files (``commit`` adds them as they are),
        read here with pyarrow: pyiceberg's reader would turn a null list into an empty one.
        """
        table = self.table(create=False)
        if table is None:
            return
        scan = table.scan(row_filter=f"snapshot_date = '{snapshot_date}'")
        for task in scan.plan_files():
            location = str(task.file.file_path)
            path = location.split("://", 1)[1] if "://" in location else location
            with self.store.fs.open_input_file(path) as raw:
                yield from pq.ParquetFile(raw).iter_batches(batch_size=65_536)

    def expire(self, run_id: str, snapshot_date: str) -> None:
        """Delete the date's rows in one catalog commit (``output.keep_days``); the data files
        stay for time travel until the table's snapshots are expired."""
        from pyiceberg.exceptions import CommitFailedException

        table = self.table(create=False)
        if table is None:
            return
        day = names.check_snapshot_date(snapshot_date)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Delete operation did not match")
                table.delete(f"snapshot_date = '{day}'", {ICEBERG_EXPIRED_KEY: run_id})
        except (CommitFailedException, OSError) as exc:
            raise PublishError(
                f"Iceberg delete of {snapshot_date} in {self.identifier} failed: {exc}"
            ) from None

    def discard(self, run_id: str, snapshot_date: str) -> None:
        """Delete the data files a killed, uncommitted run copied into the table."""
        fs, base = self.store.fs, self.store.base
        folder = layout.table_data(base, TABLE, snapshot_date)
        selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
        copies = frozenset(
            info.path
            for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.File and f"-{run_id}." in info.base_name
        )
        superseded = door.Superseded(folder, copies)
        for path in sorted(copies):
            door.guarded_delete(fs, base, path, superseded=superseded)

    def find(self, run_id: str) -> dict[str, Any] | None:
        """The last snapshot committed by ``run_id``."""
        table = self.table(create=False)
        if table is None:
            return None
        mine = [
            s
            for s in table.snapshots()
            if s.summary is not None
            and s.summary.additional_properties.get(ICEBERG_RUN_KEY) == run_id
        ]
        if not mine:
            return None
        return {
            "format": "iceberg",
            "table": ".".join(self.identifier),
            "location": self.location,
            "snapshot_id": mine[-1].snapshot_id,
        }
