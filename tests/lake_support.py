"""Helpers for the data-lake tests: an S3 server on loopback and readers of every output kind.

Each reader reads what it is meant to read and nothing else: the plain-files reader follows
``_manifest.json``, the Delta reader the Delta log, the Iceberg reader the catalog.
"""

from __future__ import annotations

import gzip
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import botocore.session
import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connector.lake import snapshots, storage, tables
from connector.lake.manifest import read_document

KEY, SECRET, REGION = "lake-test-key", "lake-test-secret", "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """moto's S3 server on 127.0.0.1."""

    endpoint: str

    def options(self) -> dict[str, Any]:
        """``output.storage_options`` for it."""
        return {
            "endpoint_url": self.endpoint,
            "region": REGION,
            "access_key_id": KEY,
            "secret_access_key": SECRET,
            "path_style": True,
        }

    def new_bucket(self) -> str:
        """A fresh, empty bucket."""
        name = "lake-" + secrets.token_hex(4)
        store = storage.resolve(f"s3://{name}", self.options())
        assert isinstance(store.fs, pafs.S3FileSystem)
        admin = pafs.S3FileSystem(
            access_key=KEY,
            secret_key=SECRET,
            region=REGION,
            endpoint_override=self.endpoint.split("://", 1)[1],
            scheme="http",
            allow_bucket_creation=True,
        )
        admin.create_dir(name)
        return name

    def keys(self, path: str) -> list[str]:
        """Every object key under ``path`` (``bucket/prefix``), as S3 itself lists them: through
        botocore, not pyarrow, which shows a zero-byte folder marker (``prefix/``) as a folder,
        or not at all."""
        bucket, _, prefix = path.partition("/")
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )
        found: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        ):
            found += [str(item["Key"]) for item in page.get("Contents", [])]
        return found


SERVE_S3 = """
import logging, sys
logging.disable(logging.WARNING)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test suite closes our stdin
server.stop()
"""


def start_s3() -> Iterator[S3Server]:
    """moto's S3 server in a process of its own on a free loopback port, for the duration.

    Its own process, not a thread of the tests': delta-rs holds the GIL while it waits for
    some of its requests, and a server thread in the same interpreter could not answer them.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_S3],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    port = int(process.stdout.readline())
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


DELTA_FILE = re.compile(r"^part-\d{5}-[0-9a-f-]{36}-c000\.")
"""How delta-rs names its data files (the connector's are part-NNNNN[-RUN_ID].parquet)."""


def is_delta_file(name: str) -> bool:
    """Whether a file is a Delta table's own data file: Delta names its partition folders as
    plain files do (``snapshot_date=D/region=R/``), so a date's table files sit in the folder
    that holds its manifest; VACUUM, not the connector, removes old ones."""
    return bool(DELTA_FILE.search(name.rpartition("/")[2]))


def partition_path(store: storage.Store, date: str) -> str:
    return f"{store.base}/images/snapshot_date={date}"


def manifest_rows(
    store: storage.Store, date: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """What a reader that follows ``_manifest.json`` reads: the manifest and its files' rows."""
    partition = partition_path(store, date)
    manifest = read_document(store.fs, partition)
    if manifest is None:
        return None, []
    rows: list[dict[str, Any]] = []
    for entry in manifest["files"]:
        path = f"{partition}/{entry['path']}"
        if path.endswith(".parquet"):
            with store.fs.open_input_file(path) as raw:
                found = pq.read_table(raw).to_pylist(maps_as_pydicts="strict")
        else:
            found = _ndjson(store.fs, path)
        # The region is the file's folder (region=R/), as a Hive-aware reader finds it.
        region = snapshots.region_of(entry["path"])
        rows += [{**row, "region": region} for row in found]
    return manifest, rows


def _ndjson(fs: pafs.FileSystem, path: str) -> list[dict[str, Any]]:
    with fs.open_input_stream(path, compression=None) as stream:
        raw = stream.read()
    if path.endswith(".gz"):
        raw = gzip.decompress(raw)
    rows = [orjson.loads(line) for line in raw.splitlines() if line]
    for row in rows:  # NDJSON writes times as RFC 3339 text
        row["time_created"] = row["time_created"] and datetime.fromisoformat(row["time_created"])
    return rows


def dataset_table(store: storage.Store, date: str) -> pa.Table:
    """pyarrow.dataset over the files the manifest lists (Parquet or NDJSON)."""
    partition = partition_path(store, date)
    manifest = read_document(store.fs, partition)
    assert manifest is not None
    files = [f"{partition}/{f['path']}" for f in manifest["files"]]
    # The listed files' region is their folder's (region=R/), read as Hive partitioning.
    regions = ds.HivePartitioning(pa.schema([("region", pa.string())]))
    # JsonFileFormat() is what format="json" means; the stubs' format literal leaves "json" out.
    kind: ds.FileFormat = (
        ds.ParquetFileFormat() if manifest["format"] == "parquet" else ds.JsonFileFormat()
    )
    found = ds.dataset(
        files, filesystem=store.fs, format=kind, partitioning=regions, partition_base_dir=partition
    )
    return found.to_table()


def duckdb_by_region(table: Any) -> list[tuple[str, int, int]]:
    """DuckDB over an Arrow table: rows and distinct ids per region."""
    con = duckdb.connect()
    con.register("source", table)
    query = "SELECT region, count(*), count(DISTINCT id) FROM source GROUP BY 1 ORDER BY 1"
    return [(str(r), int(n), int(d)) for r, n, d in con.sql(query).fetchall()]


def delta_table(store: storage.Store, version: int | None = None) -> Any:
    from deltalake import DeltaTable

    return DeltaTable(
        store.uri(f"{store.base}/images"), storage_options=store.delta_options(), version=version
    )


def delta_rows(store: storage.Store, date: str, version: int | None = None) -> pa.Table:
    """deltalake's reader, one date."""
    data: pa.Table = delta_table(store, version).to_pyarrow_table()
    return data.filter(pc.equal(data["snapshot_date"], pa.scalar(_date(date))))


def iceberg_scan(writer: tables.IcebergWriter, date: str, snapshot_id: int | None = None) -> Any:
    table = writer.table(create=False)
    return table.scan(row_filter=f"snapshot_date = '{date}'", snapshot_id=snapshot_id)


def iceberg_rows(
    writer: tables.IcebergWriter, date: str, snapshot_id: int | None = None
) -> pa.Table:
    """pyiceberg's scan, one date."""
    result: pa.Table = iceberg_scan(writer, date, snapshot_id).to_arrow()
    return result


def iceberg_dataset(
    writer: tables.IcebergWriter, date: str, snapshot_id: int | None = None
) -> pa.Table:
    """pyarrow.dataset over the data files the table's metadata lists for one date."""
    scheme = f"{writer.store.scheme}://"
    files: list[str] = [
        task.file.file_path.removeprefix(scheme)
        for task in iceberg_scan(writer, date, snapshot_id).plan_files()
    ]
    return ds.dataset(files, filesystem=writer.store.fs, format="parquet").to_table()


def _date(text: str) -> Any:
    from datetime import date

    return date.fromisoformat(text)


COMMITTER = """
import os, sys
from connector import (
    cli,
    pipeline,
)
from connector.lake import (
    storage,
    tables,
)
import pyarrow.parquet
for name in sys.argv[2:]:
    __import__(name)
import threading
if threading.active_count() != 1:  # as the worker boot: fork before any Python thread
    raise SystemExit("committer: a thread started before forking")
print("ready", flush=True)
for line in sys.stdin:
    command, argument = line.split()
    if command == "commit":
        pid = os.fork()
        if pid == 0:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the pipe carries pids only
            code = cli.main(
                ["--log-level", "error", "commit", "--config", sys.argv[1], "--run-id", argument]
            )
            sys.stdout.flush()
            os._exit(code)
        print(pid, flush=True)
    else:
        print(os.waitstatus_to_exitcode(os.waitpid(int(argument), 0)[1]), flush=True)
"""


class Committer:
    """Processes that run `oci-images commit`, forked from one interpreter that imported the
    connector (and the table library) once: each commit is a real process that SIGKILL can
    stop at any point, without paying the interpreter's start-up each time."""

    def __init__(self, config: str, modules: tuple[str, ...] = ()) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", COMMITTER, config, *modules],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert "ready" == self._read()

    def _read(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def _send(self, line: str) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self._read()

    def start(self, run_id: str) -> int:
        """Start committing ``run_id``; the process id."""
        return int(self._send(f"commit {run_id}"))

    def wait(self, pid: int) -> int:
        """Wait for a commit process to end (or reap a killed one); its exit code."""
        return int(self._send(f"wait {pid}"))

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
