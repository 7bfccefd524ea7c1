"""A dlt source over the connector (extra ``dlt``): every destination dlt has, fed by the
connector's discovery, rate control, retries and normalization.

::

    import dlt
    from connector.dlt import oci_images

    pipeline = dlt.pipeline("oci", destination="duckdb", dataset_name="oci")
    pipeline.run(oci_images("export.toml"))      # or oci_images() with [sources.oci_images]

The source runs the connector's own export once, into a private temporary lake (plain Parquet
on local disk), and its resources ``images`` and ``compartments`` stream what that run
published, batch by batch, as Arrow tables. It does not hand dlt pages as they arrive: a listing
is complete or absent in the connector (a listing that fails after some pages has its rows taken
out before anything is published), and dlt, once it holds a row, loads it. So dlt sees exactly
the rows ``oci-images run`` would publish, and no fetching is done twice or done differently.

The configuration is the connector's (a TOML path or ``Settings``), or dlt's own:
``[sources.oci_images.connector.<section>]`` tables of the connector's keys in
``.dlt/config.toml``, and an API key under ``[sources.oci_images.credentials]`` in
``.dlt/secrets.toml`` (the fields of the Airflow ``oci`` connection: ``user``, ``fingerprint``,
``tenancy``, ``region``, ``key_content`` or ``key_file``, ``pass_phrase``, or ``auth`` =
``instance_principal`` / ``resource_principal``).

``import connector`` never imports this module (nor dlt).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import dlt
import orjson
import pyarrow as pa
from dlt.common.libs.pyarrow import py_arrow_to_table_schema_columns
from dlt.common.typing import SecretSentinel

from connector import api, schema
from connector.errors import AuthError, ConfigError, PublishError
from connector.oci.auth import Credentials

if TYPE_CHECKING:
    from dlt.common.schema.typing import TTableSchemaColumns
    from dlt.extract.resource import DltResource

SECTION = "sources.oci_images"
"""Where dlt's configuration and secrets for the source live."""

VOLATILE: dict[str, tuple[str, ...]] = {
    "images": ("_source_compartment_id", "snapshot_date", "_fetched_at", "_run_id"),
    "compartments": ("snapshot_date", "_run_id"),
}
"""Columns that change from run to run although the record did not: the run's own metadata,
and the listing that happened to return a platform image (``once``). ``history=True`` leaves
them out, so that an ``scd2`` merge records a version only when the record changed."""

ROW_HASH = "_row_hash"
"""The row version column of ``history=True``: a digest of the row's values."""

HISTORY: dict[str, Any] = {
    "disposition": "merge",
    "strategy": "scd2",
    "row_version_column_name": ROW_HASH,
}
"""The write disposition of both resources with ``history=True``."""

_API_KEY_FIELDS = ("user", "fingerprint", "tenancy", "region")
_PRINCIPALS = ("instance_principal", "resource_principal")


def columns_of(dataset: str, history: bool = False) -> TTableSchemaColumns:
    """The dlt column hints of one of the connector's datasets: types and nullability as dlt
    derives them from the connector's Arrow schema (nested lists, maps and structs become dlt's
    ``json``), each with the connector's description; with ``history``, without the
    ``VOLATILE`` columns and with ``ROW_HASH``."""
    described = {c.name: c.description for c in schema.DATASETS[dataset]}
    columns = py_arrow_to_table_schema_columns(arrow_schema(dataset))
    for name, column in columns.items():
        column["description"] = described[name]
    if history:
        for name in VOLATILE[dataset]:
            del columns[name]
        columns[ROW_HASH] = {
            "name": ROW_HASH,
            "data_type": "text",
            "nullable": False,
            "description": "A digest of the row's other values: its version, for scd2.",
        }
    return columns


def settings_from(
    config: str | os.PathLike[str] | api.Settings | None,
    values: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Sequence[str] = (),
) -> api.Settings:
    """The connector's settings: ``config`` (a TOML path, or ``Settings``; None: defaults and
    the environment's ``OCI_IMAGES__`` variables), then ``values`` (``{"section": {"key":
    value}}``, what ``[sources.oci_images.connector]`` holds), then ``overrides``
    (``"section.key=value"``). ``ConfigError`` naming the key, before any request."""
    if isinstance(config, api.Settings):
        if overrides:
            raise ConfigError(
                "overrides", "apply to a TOML path; change Settings with Settings.replace"
            )
        changes = {f"{s}.{k}": v for s, keys in (values or {}).items() for k, v in keys.items()}
        return _replaced(config, changes)
    return api.load_config(config, overrides, values=values)


def _replaced(settings: api.Settings, changes: Mapping[str, Any]) -> api.Settings:
    from connector import validation

    return validation.check(settings.replace(**changes) if changes else settings)


def credentials_from(fields: Mapping[str, Any]) -> Credentials:
    """Credentials from ``[sources.oci_images.credentials]``: an API key (``user``,
    ``fingerprint``, ``tenancy``, ``region``, ``key_content`` or ``key_file``, ``pass_phrase``)
    or a principal (``auth``). A missing field is a ``ConfigError`` naming it; the key and its
    passphrase appear in no message."""
    given = {k: v for k, v in fields.items() if v not in (None, "")}
    auth = str(given.get("auth", "api_key"))
    if auth in _PRINCIPALS:
        return Credentials.from_principal(auth)  # type: ignore[arg-type]
    if auth != "api_key":
        raise ConfigError(
            f"{SECTION}.credentials.auth", f"must be api_key, {' or '.join(_PRINCIPALS)}"
        )
    missing = [k for k in _API_KEY_FIELDS if not given.get(k)]
    if "key_content" not in given and "key_file" not in given:
        missing.append("key_content")
    if missing:
        raise ConfigError(
            f"{SECTION}.credentials.{missing[0]}",
            "is missing: an API key needs user, fingerprint, tenancy, region and key_content "
            "(or key_file)",
        )
    if "key_content" in given:
        text = str(given["key_content"])
        # A PEM in a one-line value (an environment variable) often comes with "\n" escapes.
        if "\n" not in text.strip() and "\\n" in text:
            text = text.replace("\\n", "\n")
        key: str | bytes = text
    else:
        path = Path(str(given["key_file"])).expanduser()
        try:
            key = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"{SECTION}.credentials.key_file", f"cannot be read: {exc.strerror}"
            ) from None
    try:
        return Credentials.from_api_key(
            user=str(given["user"]),
            fingerprint=str(given["fingerprint"]),
            tenancy=str(given["tenancy"]),
            region=str(given["region"]),
            private_key=key,
            passphrase=str(given["pass_phrase"]) if given.get("pass_phrase") else None,
        )
    except AuthError as exc:
        raise ConfigError(f"{SECTION}.credentials.key_content", str(exc)) from None


class _Export:
    """The connector's export of the tenancy into a private temporary lake, run once, when
    the first resource is read, and shared by both (each in a thread of dlt's pool when
    parallelized). The lake is removed with this object (when the source is dropped, at the
    latest at exit)."""

    def __init__(
        self, settings: api.Settings, credentials: Credentials | None, workdir: str | None
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.workdir = workdir
        self._lock = threading.Lock()
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._base = ""
        self._date = ""

    def partition(self, dataset: str) -> tuple[str, list[dict[str, Any]]]:
        """The published partition of ``dataset`` and the files its manifest lists."""
        import pyarrow.fs as pafs

        from connector.lake import layout, snapshots

        base, day = self._published()
        fs = pafs.LocalFileSystem()
        try:
            document = snapshots.manifest(fs, base, day, dataset)
        except PublishError:
            return "", []  # compartments: none when scope.compartments names them
        return layout.partition_of(base, dataset, day), list(document.get("files", []))

    @property
    def snapshot_date(self) -> str:
        """The date the export published (it runs first if it has not)."""
        return self._published()[1]

    def _published(self) -> tuple[str, str]:
        with self._lock:
            if not self._base:
                self._run()
            return self._base, self._date

    def _run(self) -> None:
        if self.workdir:
            Path(self.workdir).mkdir(parents=True, exist_ok=True)
        self._folder = tempfile.TemporaryDirectory(prefix="oci-images-dlt-", dir=self.workdir)
        lake = self._folder.name
        settings = self.settings.replace(
            **{
                "output.uri": lake,
                "output.format": "parquet",
                "output.table_format": "",
                "output.changes": False,
                "output.keep_days": 0,
                "output.storage_options": {},
                "output.catalog": {},
            }
        )
        outcome = api.run(settings, credentials=self.credentials)
        if not outcome.published or outcome.manifest is None:
            raise PublishError(f"the export published nothing: {outcome.message}")
        self._base, self._date = lake, outcome.manifest.snapshot_date


def arrow_schema(dataset: str) -> pa.Schema:
    """Every column of ``dataset``, its partition columns included: the rows dlt receives."""
    return pa.schema(
        [pa.field(c.name, c.type, nullable=c.nullable) for c in schema.DATASETS[dataset]]
    )


def _batches(export: _Export, dataset: str, history: bool = False) -> Iterator[pa.Table]:
    """The rows of ``dataset`` that the export published, one Arrow table per record batch
    (Parquet files read a batch at a time: memory stays flat); with ``history``, without the
    ``VOLATILE`` columns and with ``ROW_HASH``."""
    import pyarrow.fs as pafs

    from connector.lake import snapshots

    partition, files = export.partition(dataset)
    arrow = arrow_schema(dataset)
    in_files = schema.FILE_SCHEMA if dataset == "images" else schema.COMPARTMENTS_SCHEMA
    snapshot_date = pa.scalar(datetime.date.fromisoformat(export.snapshot_date), pa.date32())
    for batch in snapshots.read_batches(pafs.LocalFileSystem(), partition, files, in_files):
        if not batch.num_rows:
            continue
        table = pa.Table.from_batches([batch])
        if "snapshot_date" not in table.column_names:
            # Plain files leave the date to their folder's name, as Hive-aware readers expect.
            table = table.append_column(
                pa.field("snapshot_date", pa.date32(), nullable=False),
                pa.repeat(snapshot_date, table.num_rows),
            )
        table = table.select(arrow.names)
        if history:
            table = table.drop_columns(list(VOLATILE[dataset]))
            table = table.append_column(
                pa.field(ROW_HASH, pa.string(), nullable=False), row_hashes(table)
            )
        yield table


def row_hashes(table: pa.Table) -> pa.StringArray:
    """A digest of each row's values (maps with their keys sorted: entry order is no change).
    dlt's ``add_row_hash_to_table`` goes through pandas, which cannot hash the nested
    columns (lists and maps)."""
    option = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
    digests = [
        hashlib.blake2b(orjson.dumps(row, option=option, default=str), digest_size=16).hexdigest()
        for row in table.to_pylist(maps_as_pydicts="lossy")
    ]
    return pa.array(digests, pa.string())


@dlt.source(name="oci_images")
def oci_images(
    config: Any = None,
    connector: dict[str, Any] | None = None,
    # Declared a secret: dlt keeps the values it resolved in its trace, on disk, unless secret.
    credentials: Annotated[dict[str, Any], SecretSentinel] | None = None,
    overrides: list[str] | None = None,
    workdir: str | None = None,
    history: bool = False,
) -> list[DltResource]:
    """The tenancy's images and compartments, as ``oci-images run`` exports them.

    ``config``: the connector's TOML (a path) or ``Settings``; ``connector``: the connector's
    keys as ``{"section": {"key": value}}`` over it (dlt reads it from
    ``[sources.oci_images.connector]``); ``credentials``: an API key or a principal (from
    ``[sources.oci_images.credentials]`` in secrets.toml; without it, the connector's
    ``[oci]`` settings find them: an OCI CLI profile, its variables, a principal);
    ``overrides``: ``"section.key=value"`` last; ``workdir``: where the temporary lake goes
    (the system's temporary folder by default); ``history``: an ``scd2`` merge (``HISTORY``)
    instead of a replace, rows without their ``VOLATILE`` columns and versioned by ``ROW_HASH``.

    The configuration is checked here, before any request (``ConfigError`` naming the key);
    the export runs when dlt first reads a resource. Resource ``images`` has primary key
    ``id`` (``id`` and ``_source_compartment_id`` under ``fetch.platform_images = "every"``,
    which repeats platform images once per listing); ``compartments``, ``id``.
    """
    settings = settings_from(
        config if isinstance(config, api.Settings) else (str(config) if config else None),
        connector,
        overrides or (),
    )
    if history and settings.fetch.platform_images == "every":
        raise ConfigError(
            "fetch.platform_images",
            'must be "once" or "skip" with history=True: "every" repeats each platform image '
            "once per listing, and a history keeps one version per image",
        )
    signer = credentials_from(credentials) if credentials else None
    if signer is None:
        signer = api.resolve_credentials(settings)
    export = _Export(settings, signer, workdir)
    image_key: str | list[str] = (
        ["id", "_source_compartment_id"] if settings.fetch.platform_images == "every" else "id"
    )
    disposition: Any = HISTORY if history else "replace"
    images = dlt.resource(
        _batches(export, "images", history),
        name="images",
        write_disposition=disposition,
        primary_key=image_key,
        columns=columns_of("images", history),
        parallelized=True,
    )
    compartments = dlt.resource(
        _batches(export, "compartments", history),
        name="compartments",
        write_disposition=disposition,
        primary_key="id",
        columns=columns_of("compartments", history),
        parallelized=True,
    )
    return [images, compartments]
