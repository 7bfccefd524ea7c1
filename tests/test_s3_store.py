"""Whole documents, one writer per date and folder markers on S3, against moto's S3 server on
loopback.

- A document the commit publishes (``_manifest.json``, the journal, ``_runs/RUN_ID.json``, the
  lock files) is stored whole or not at all, even when its writer dies mid-upload; a reader
  reads it whole even while it is being replaced (``connector.lake.durable``).
- The date lock is a real lease: PutObject with ``If-None-Match: *`` (``connector.lake.lock``).
- The empty ``folder/`` objects pyarrow leaves under ``_staging`` are removed, one marker at a
  time and only when nothing else is below it (``connector.lake.door.remove_empty_dir``).
"""

from __future__ import annotations

import itertools
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pyarrow.fs as pafs
import pytest

from connector.lake import door, durable, housekeeping, lock, s3client, storage
from tests.helpers import captured_events
from tests.lake_support import S3Server

DATE = "2026-11-27"


@pytest.fixture
def store(s3: S3Server) -> storage.Store:
    return storage.resolve(f"s3://{s3.new_bucket()}/lake", s3.options())


def _raw_put(s3: S3Server, head: bytes, body: bytes) -> None:
    """Send a request whose body is cut short, then hang up, as a killed client does."""
    host, port = s3.endpoint.split("://", 1)[1].split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(head + b"\r\n\r\n" + body)
        time.sleep(0.2)  # the server has read what there is before the connection ends
    time.sleep(0.3)


def test_a_cut_upload_is_not_stored(s3: S3Server, store: storage.Store) -> None:
    """What a client killed mid-request leaves: a body shorter than its Content-Length, an
    aws-chunked body cut inside a chunk or before its last chunk. None of them is stored."""
    bucket = store.base.split("/", 1)[0]
    document = b'{"files": ["part-00000.parquet"]}\n' * 4
    chunked = (
        "Transfer-Encoding: chunked\r\nContent-Encoding: aws-chunked\r\n"
        "x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER\r\n"
        f"x-amz-decoded-content-length: {len(document)}"
    )
    inner = b"%x\r\n" % 40 + document[:40] + b"\r\n"
    cases = {
        "short": (f"Content-Length: {len(document)}", document[:50]),
        "mid-chunk": (chunked, b"%x\r\n" % (len(document) + 9) + b"%x\r\n" % 40 + document[:20]),
        "between-chunks": (chunked, b"%x\r\n" % len(inner) + inner + b"\r\n"),
    }
    for name, (headers, body) in cases.items():
        head = f"PUT /{bucket}/{name}.json HTTP/1.1\r\nHost: {s3.endpoint[7:]}\r\n{headers}"
        _raw_put(s3, head.encode(), body)
    found = store.fs.get_file_info(pafs.FileSelector(bucket, recursive=True))
    assert [] == [f.path for f in found if f.type == pafs.FileType.File]


WRITER = """
import sys, itertools
from connector.lake import (
    durable,
    storage,
)
import orjson
store = storage.resolve(sys.argv[1], orjson.loads(sys.argv[2]))
path = store.base + "/_manifest.json"
print("ready", flush=True)
for n in itertools.count():
    durable.write_json(store.fs, path, {"version": n, "pad": "x" * (1 << 20) * (1 + n % 3)})
"""


def test_a_writer_killed_mid_upload_leaves_a_whole_document(
    s3: S3Server, store: storage.Store
) -> None:
    """SIGKILL of a process replacing a 1-3 MB document over and over, at random moments:
    the document read afterwards is always one of the versions, whole."""
    rng = random.Random(13)
    path = f"{store.base}/_manifest.json"
    durable.write_json(store.fs, path, {"version": -1, "pad": ""})
    uri = f"s3://{store.base}"
    for _ in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, uri, orjson.dumps(s3.options()).decode()],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert "ready" == writer.stdout.readline().strip()
        time.sleep(rng.uniform(0.05, 1.0))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        document = durable.read_json(store.fs, path)
        version = document["version"]
        assert len(document["pad"]) == (0 if version < 0 else (1 << 20) * (1 + version % 3))


@pytest.fixture
def overwritten(store: storage.Store) -> Iterator[str]:
    """A document replaced by another of a different length, again and again, meanwhile."""
    path = f"{store.base}/_manifest.json"
    durable.write_json(store.fs, path, {"version": 0, "pad": ""})
    stop = threading.Event()

    def overwrite() -> None:
        for n in itertools.count(1):
            if stop.is_set():
                return
            durable.write_json(store.fs, path, {"version": n, "pad": "x" * (n % 7) * 60})

    thread = threading.Thread(target=overwrite)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        thread.join()


def test_a_plain_read_during_an_overwrite_can_be_torn(
    store: storage.Store, overwritten: str
) -> None:
    """Why ``read_json`` reads again: pyarrow asks the size, then that many bytes; an overwrite
    in between yields the new document cut at the old one's length, though the store never
    held a cut document."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with store.fs.open_input_stream(overwritten, compression=None) as stream:
            data = stream.read()
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            return
    pytest.fail("no read was torn in 30 s of overwrites")


def test_documents_are_read_whole_during_overwrites(store: storage.Store, overwritten: str) -> None:
    """``read_json`` while the document is being replaced: every read whole and the versions
    move on (the overwrites really happened meanwhile)."""
    versions = []
    for _ in range(300):
        document = durable.read_json(store.fs, overwritten)
        assert len(document["pad"]) == (document["version"] % 7) * 60
        versions.append(document["version"])
    assert versions == sorted(versions)
    assert len(set(versions)) > 20


# -- the lease ---------------------------------------------------------------------------------


def _lock_path(store: storage.Store) -> str:
    return f"{store.base}/_staging/_locks/snapshot_date={DATE}.lock"


def _plant(store: storage.Store, owner: lock.Owner) -> None:
    with store.fs.open_output_stream(_lock_path(store), compression=None) as out:
        out.write(owner.to_json())


def test_the_lock_is_a_conditional_put(store: storage.Store) -> None:
    """Creating an existing key is refused by the store (412), not by a check beforehand: the
    second create loses and the first one's content stays."""
    path = _lock_path(store)
    assert storage._s3_create(store.fs, path, b"first")  # type: ignore[arg-type]
    assert not storage._s3_create(store.fs, path, b"second")  # type: ignore[arg-type]
    assert not storage.create_exclusive(store.fs, path, b"second")
    with store.fs.open_input_stream(path, compression=None) as stream:
        assert b"first" == stream.read()
    # The refusal is the store's: a check-then-write would have been fooled by this race.
    bucket, _, key = path.partition("/")
    client = s3client.client(store.fs)  # type: ignore[arg-type]
    assert client is not None
    with pytest.raises(client.exceptions.ClientError) as refused:
        client.put_object(Bucket=bucket, Key=key, Body=b"third", IfNoneMatch="*")
    assert 412 == refused.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_no_advisory_warning_with_botocore(
    store: storage.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With botocore installed the lease is real: no "advisory" warning."""
    monkeypatch.setattr(storage, "_warned_advisory", set())
    with captured_events() as logs:
        owner = lock.Owner.me("run-a", "att-1")
        with lock.date_lock(store.fs, store.base, DATE, owner):
            pass
    assert [] == [e for e in logs if e["event"] == "lock.advisory"]


def test_without_botocore_the_lock_is_advisory_and_says_so(
    store: storage.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No conditional put possible: the same protocol with a check-then-write, and one warning
    naming the extra that makes it a lease."""
    monkeypatch.setattr(s3client, "available", lambda: False)
    monkeypatch.setattr(storage, "_warned_advisory", set())
    with captured_events() as logs:
        with (
            lock.date_lock(store.fs, store.base, DATE, lock.Owner.me("a", "1")),
            pytest.raises(lock.LockHeld),
        ):
            lock.date_lock(store.fs, store.base, DATE, lock.Owner.me("b", "2")).acquire()
        with lock.date_lock(store.fs, store.base, DATE, lock.Owner.me("b", "2")):
            pass
    warnings = [e for e in logs if e["event"] == "lock.advisory"]
    assert 1 == len(warnings)
    assert "oci-images-connector[s3]" in warnings[0]["reason"]


def test_a_second_writer_fails_naming_the_holder(store: storage.Store) -> None:
    """While one run holds the date on S3, another fails at once, told who and where."""
    first = lock.Owner.me("run-a", "att-1")
    second = lock.date_lock(store.fs, store.base, DATE, lock.Owner.me("run-b", "att-2"))
    with lock.date_lock(store.fs, store.base, DATE, first), pytest.raises(lock.LockHeld) as caught:
        second.acquire()
    message = str(caught.value)
    for expected in ("run-a", f"pid {first.pid}", first.host, _lock_path(store)):
        assert expected in message
    assert store.fs.get_file_info(_lock_path(store)).type == pafs.FileType.NotFound


def _dead(owner: lock.Owner) -> lock.Owner:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return replace(owner, pid=child.pid, pid_started=None)


RACER = """
import sys, time
import orjson
from connector.lake import (
    lock,
    storage,
)
store = storage.resolve(sys.argv[1], orjson.loads(sys.argv[2]))
owner = lock.Owner.me("r" + sys.argv[3], "a")
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))
try:
    with lock.date_lock(store.fs, store.base, "2026-11-27", owner):
        held = time.time(); time.sleep(1.0)
        print("won", held, time.time(), flush=True)
except lock.LockHeld:
    print("lost")
"""


@pytest.mark.parametrize("planted", ["free", "dead-owner"])
def test_racing_processes_hold_the_date_one_at_a_time(
    s3: S3Server, store: storage.Store, planted: str
) -> None:
    """Four processes started together go for the date (free, or left locked by a dead run, so
    that all of them try to take it over at once): holdings never overlap, and the lock is
    gone once the last holder is done."""
    if planted == "dead-owner":
        _plant(store, _dead(lock.Owner.me("killed", "att-0")))
    start = str(time.time() + 2.0)
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                f"s3://{store.base}",
                orjson.dumps(s3.options()).decode(),
                str(i),
                start,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = [child.communicate(timeout=90)[0].strip().splitlines()[-1] for child in children]
    held = sorted((float(a), float(b)) for _, a, b in (r.split() for r in results if r != "lost"))
    assert held, results
    assert all(end <= later for (_, end), (later, _) in itertools.pairwise(held))
    assert 4 == len(held) + results.count("lost")
    assert store.fs.get_file_info(_lock_path(store)).type == pafs.FileType.NotFound


def test_a_live_lock_is_not_broken_by_a_late_breaker(store: storage.Store) -> None:
    """The take-over deletes the dead lock only if it still reads what it judged dead: a
    lock taken meanwhile by a live run survives a breaker that read the dead one earlier."""
    dead = _dead(lock.Owner.me("killed", "att-0"))
    _plant(store, dead)
    seen = dead.to_json()
    winner = lock.date_lock(store.fs, store.base, DATE, lock.Owner.me("winner", "w"))
    winner.acquire()  # takes over the dead lock
    late = lock.date_lock(store.fs, store.base, DATE, lock.Owner.me("late", "l"))
    late._break(seen, dead)  # judged dead before the winner took over
    with store.fs.open_input_stream(_lock_path(store), compression=None) as stream:
        current: Any = orjson.loads(stream.read())
    assert "winner" == current["run_id"]
    winner.release()


def test_ownerless_staging_on_s3_goes_once_a_minute_old(store: storage.Store) -> None:
    """An attempt folder without an owner file (a straggler wrote into it after its owner had
    removed it) is removed once its newest file is a minute old: S3 keeps no folder times."""
    attempt = f"{store.base}/_staging/20261127T000000Z-abcdef/20261127T000000Z-p1-aaaaaa"
    staged = f"{attempt}/images/snapshot_date={DATE}/region=us-ashburn-1/part-00001.parquet"
    with store.fs.open_output_stream(staged, compression=None) as out:
        out.write(b"straggler")
    now = time.time()
    assert [] == housekeeping.clean_dead_staging(store.fs, store.base, now=now)
    assert store.fs.get_file_info(staged).type == pafs.FileType.File
    later = now + 2 * lock.UNREADABLE_GRACE_S
    removed = housekeeping.clean_dead_staging(store.fs, store.base, now=later)
    assert ["20261127T000000Z-abcdef/20261127T000000Z-p1-aaaaaa"] == removed
    assert store.fs.get_file_info(staged).type == pafs.FileType.NotFound


# -- folder markers --------------------------------------------------------------------------


class TestFolderMarkers:
    """``door.remove_empty_dir`` on S3: the one zero-byte ``folder/`` object, nothing else."""

    def test_pyarrow_leaves_markers(self, s3: S3Server, store: storage.Store) -> None:
        """The markers exist: pyarrow puts one per folder it creates, and one back for the
        parent of a file it deletes (which is why the door has to remove them)."""
        staging = f"{store.base}/_staging"
        store.fs.create_dir(f"{staging}/r1/a1", recursive=True)
        with store.fs.open_output_stream(f"{staging}/r1/a1/x", compression=None) as out:
            out.write(b"x")
        store.fs.delete_dir(f"{staging}/r1/a1")
        assert ["lake/_staging/", "lake/_staging/r1/"] == s3.keys(staging)

    def test_empty_folders_lose_their_markers(self, s3: S3Server, store: storage.Store) -> None:
        """Bottom up, each folder whose only object is its marker is removed: nothing is left
        under ``_staging``."""
        staging = f"{store.base}/_staging"
        store.fs.create_dir(f"{staging}/r1/a1", recursive=True)
        assert ["lake/_staging/", "lake/_staging/r1/", "lake/_staging/r1/a1/"] == s3.keys(staging)
        for folder in (f"{staging}/r1/a1", f"{staging}/r1", staging):
            assert door.remove_empty_dir(store.fs, store.base, folder)
        assert [] == s3.keys(staging)
        assert not door.remove_empty_dir(store.fs, store.base, staging)  # gone already

    def test_a_folder_with_anything_below_stays(self, s3: S3Server, store: storage.Store) -> None:
        """A file below, or a deeper folder's marker: the folder keeps its marker, and nothing
        below it is touched."""
        staging = f"{store.base}/_staging"
        store.fs.create_dir(f"{staging}/r1/a1", recursive=True)
        with store.fs.open_output_stream(f"{staging}/r2/a2/part", compression=None) as out:
            out.write(b"rows")
        before = s3.keys(staging)
        assert not door.remove_empty_dir(store.fs, store.base, f"{staging}/r1")
        assert not door.remove_empty_dir(store.fs, store.base, f"{staging}/r2")
        assert not door.remove_empty_dir(store.fs, store.base, staging)
        assert before == s3.keys(staging)

    def test_a_botocore_setting_it_cannot_read_leaves_the_marker(
        self,
        s3: S3Server,
        store: storage.Store,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """botocore reads settings pyarrow does not (``AWS_CONFIG_FILE``): when they are
        broken, the marker stays and nothing is raised over what called for its removal (a
        lock's release, a failed run's clean-up)."""
        broken = tmp_path / "aws-config"
        broken.write_text("[default\nregion = \n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(broken))
        monkeypatch.setattr(s3client, "_CLIENTS", {})
        staging = f"{store.base}/_staging"
        store.fs.create_dir(f"{staging}/r1", recursive=True)
        assert not door.remove_empty_dir(store.fs, store.base, f"{staging}/r1")
        monkeypatch.delenv("AWS_CONFIG_FILE")  # the test's own listing goes through botocore
        assert ["lake/_staging/", "lake/_staging/r1/"] == s3.keys(staging)

    def test_only_an_empty_marker_goes(self, s3: S3Server, store: storage.Store) -> None:
        """An object named like a marker but holding bytes is not a marker: it stays."""
        client = s3client.client(store.fs)  # type: ignore[arg-type]
        assert client is not None
        bucket = store.base.split("/", 1)[0]
        client.put_object(Bucket=bucket, Key="lake/_staging/odd/", Body=b"not empty")
        assert not door.remove_empty_dir(store.fs, store.base, f"{store.base}/_staging/odd")
        assert ["lake/_staging/odd/"] == s3.keys(f"{store.base}/_staging")

    def test_only_below_staging_or_trash(self, s3: S3Server, store: storage.Store) -> None:
        """A published folder's marker is refused, and stays."""
        store.fs.create_dir(f"{store.base}/images/snapshot_date={DATE}", recursive=True)
        with pytest.raises(door.DeletionRefused):
            door.remove_empty_dir(store.fs, store.base, f"{store.base}/images/snapshot_date={DATE}")
        assert f"lake/images/snapshot_date={DATE}/" in s3.keys(f"{store.base}/images")

    def test_without_botocore_markers_stay(
        self, s3: S3Server, store: storage.Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No single-key delete without botocore: pyarrow's own ``delete_dir`` would delete
        everything under the prefix first, so the marker is left rather than risk that."""
        monkeypatch.setattr(s3client, "available", lambda: False)
        store.fs.create_dir(f"{store.base}/_staging", recursive=True)
        assert not door.remove_empty_dir(store.fs, store.base, f"{store.base}/_staging")
        assert ["lake/_staging/"] == s3.keys(f"{store.base}/_staging")
