"""One rate for the shards of a run on one machine: their pacing state in a shared file.

OCI limits each region's API for the whole tenancy. Shards that each adapt on their own see
only their own 429s: each backs off for a throttling that the others caused, and N probing
controllers draw about N times the 429s of one. Shards of one run that run on the same machine
(Airflow's LocalExecutor, a batch job with ``--shard`` in the background) therefore keep one
``RateState`` per endpoint in a small memory-mapped file, named after the run id: they reserve
send slots on one timeline, climb with every success of any of them, and come down once per
throttling, as one run does. The in-flight bound stays each process's own.

Each shard adds its share of the budget (``ShardSpec.rate_share``) to the file once, so that
the states speak for the shards that joined: 4 of 4 shards on one machine pace at the whole
configured rate, 2 of 4 at half of it (the other two may run elsewhere, with their own).

Every read-modify-write of a state holds an exclusive ``flock`` of the file (a few microseconds
of unpacking and packing); the kernel releases it when a process dies. The times in the file
are ``time.monotonic``, the machine's ``CLOCK_MONOTONIC``, the same in every process (states
shared between processes must use that clock, the default). The file records the kernel's
boot id (elsewhere, the moment the machine started) and starts over after a restart, when
monotonic time starts again; an endpoint's state untouched for ``IDLE_S`` starts over too (a
retry of the run hours later finds the service afresh). A process whose endpoint state was
started over under it goes on alone from the values it last saw.

The file lives in a folder of the user's own in the system's temporary folder, which must be
theirs and closed to others; the file is opened without following symbolic links. Where any of
this cannot be had (no ``fcntl`` on Windows, a folder not the user's, an unwritable disk), each
shard keeps its own state, as on separate machines, and says so in one warning.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import stat
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from connector import logs
from connector.machine import boot_id
from connector.oci.retry import RateState

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logs.get_logger("connector.oci.sharedrate")

MAGIC = b"OCIRATE2"
MAX_SHARDS = 4096
"""Shards whose index is this or more keep their own state."""
ENDPOINTS = 64
"""Endpoints (regions) one file holds; further ones are paced by each process alone."""
BUCKETS = 20
BUCKET_S = 0.05
"""Successes are counted in 20 buckets of 50 ms: the last second, to 50 ms."""
IDLE_S = 60.0
"""An endpoint's state untouched this long starts over when a shard joins."""
STALE_S = 7 * 86400.0
"""Files of runs not touched for a week are removed when another run opens its own."""

# magic, boot id, boot moment, total share, shards joined, bitmap of the shards joined
_HEADER = struct.Struct(f"<8s16sddq{MAX_SHARDS // 8}s")
_TOTAL = struct.Struct("<d")
_TOTAL_AT = struct.calcsize("<8s16sd")
"""Where the total share is: read on every use of a state, without the bitmap."""
# rate (NaN: unpaced), next slot, last decrease, started (NaN: not yet), last touched,
# slow start, decreases, newest bucket's number, the buckets
_FIELDS = struct.Struct(f"<dddddqqq{BUCKETS}I")
# the endpoint's digest, then its fields
_SLOT = struct.Struct(f"<16s{_FIELDS.format[1:]}")
_SIZE = _HEADER.size + ENDPOINTS * _SLOT.size
_FRESH = (math.nan, -math.inf, -math.inf, math.nan, -math.inf, 1, 0, 0, *([0] * BUCKETS))


def folder() -> Path:
    """Where the files live: one folder per user in the system's temporary folder."""
    return Path(tempfile.gettempdir()) / f"oci-images-rates-{os.getuid()}"


class SharedRates:
    """The shared states of one run's shards on this machine; a context manager.

    ``state(endpoint)`` is None before the file is opened, after it is closed, where it could
    not be opened, and for endpoints beyond ``ENDPOINTS``: the controller then keeps its own.
    """

    def __init__(self, run_id: str, index: int, share: float, where: Path | None = None) -> None:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:32]
        self.path = (where or folder()) / f"{digest}.rates"
        self.index, self.share = index, share
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._states: dict[str, RateState | None] = {}

    def __enter__(self) -> SharedRates:
        if fcntl is None or self._fd is not None or not 0 <= self.index < MAX_SHARDS:
            return self
        try:
            self._open()
        except BaseException as exc:
            self.close()
            if not isinstance(exc, OSError):
                raise
            log.warning("rate.not_shared", path=str(self.path), error=str(exc))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Unmap and close the file (the states go on alone from their last values)."""
        self._states.clear()
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> None:
        where = self.path.parent
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = os.lstat(where)
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
            raise OSError(f"{where} is not a folder of this user's")
        if found.st_mode & 0o077:
            raise OSError(f"{where} is open to other users (mode {found.st_mode & 0o777:o})")
        _remove_stale(where, keep=self.path)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(self.path, flags, 0o600)
        with self._locked():
            size = os.fstat(self._fd).st_size
            if size == 0:
                os.ftruncate(self._fd, _SIZE)
            elif size != _SIZE:
                raise OSError(f"{self.path} is {size} bytes, not a rate file of this version")
            self._map = mmap.mmap(self._fd, _SIZE)
            joined = self._join()
        os.utime(self._fd)
        log.info("rate.shared", shards_here=joined[0], share=round(min(1.0, joined[1]), 4))

    def _join(self) -> tuple[int, float]:
        """Under the lock: start the file over if it is new or from another boot, forget idle
        endpoints, and add this shard's share once. Returns (shards joined, their share)."""
        mapped = self._map
        assert mapped is not None
        magic, boot, moment, total, joined, bits = _HEADER.unpack_from(mapped, 0)
        here, now_moment = _boot(), time.time() - time.monotonic()
        restarted = boot != here if any(here) else abs(moment - now_moment) > 60.0
        if magic != MAGIC or restarted:
            mapped[:] = bytes(_SIZE)
            total, joined, bits = 0.0, 0, bytes(MAX_SHARDS // 8)
        now = time.monotonic()
        for number in range(ENDPOINTS):
            offset = _HEADER.size + number * _SLOT.size
            touched = _FIELDS.unpack_from(mapped, offset + 16)[4]
            if mapped[offset : offset + 16] != bytes(16) and now - touched > IDLE_S:
                _SLOT.pack_into(mapped, offset, mapped[offset : offset + 16], *_FRESH)
        bitmap = bytearray(bits)
        byte, bit = divmod(self.index, 8)
        if not bitmap[byte] & (1 << bit):
            bitmap[byte] |= 1 << bit
            total, joined = total + self.share, joined + 1
        _HEADER.pack_into(mapped, 0, MAGIC, here, now_moment, total, joined, bytes(bitmap))
        return joined, total

    @contextmanager
    def _locked(self) -> Iterator[None]:
        assert self._fd is not None
        assert fcntl is not None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def state(self, endpoint: str) -> RateState | None:
        """The shared state of ``endpoint`` (an ``endpoint_key``), or None (see the class)."""
        if endpoint in self._states:
            return self._states[endpoint]
        if self._map is None:
            return None
        key = hashlib.sha256(endpoint.encode()).digest()[:16]
        found: RateState | None = None
        with self._locked():
            for number in range(ENDPOINTS):
                offset = _HEADER.size + number * _SLOT.size
                held = self._map[offset : offset + 16]
                if held == bytes(16):
                    _SLOT.pack_into(self._map, offset, key, *_FRESH)
                if held in (key, bytes(16)):
                    found = _SharedState(self, offset, key)
                    break
        self._states[endpoint] = found
        return found

    def _share(self) -> float:
        assert self._map is not None
        (total,) = _TOTAL.unpack_from(self._map, _TOTAL_AT)
        return float(min(1.0, max(total, self.share)))


class _SharedState(RateState):
    """One endpoint's state in the file: loaded and stored around each ``held()``."""

    def __init__(self, rates: SharedRates, offset: int, key: bytes) -> None:
        super().__init__(rates.share)
        self._rates = rates
        self._offset = offset
        self._key = key
        self._alone = False
        self._buckets = [0] * BUCKETS
        self._newest = 0

    @contextmanager
    def held(self) -> Iterator[RateState]:
        rates = self._rates
        if self._alone or rates._map is None:
            yield self  # closed, or started over under us: go on from the last values, alone
            return
        with rates._locked():
            mapped = rates._map
            if mapped[self._offset : self._offset + 16] != self._key:
                self._alone = True
                log.warning("rate.not_shared", path=str(rates.path), error="started over")
                yield self
                return
            self._load(mapped)
            self.share = rates._share()
            yield self
            self._store(mapped)

    def _load(self, mapped: mmap.mmap) -> None:
        fields = _FIELDS.unpack_from(mapped, self._offset + 16)
        rate, self.next_slot, self.last_decrease, started, _, slow, decreases, newest = fields[:8]
        self.rate = None if math.isnan(rate) else rate
        self.started = None if math.isnan(started) else started
        self.slow_start, self.decreases, self._newest = bool(slow), decreases, newest
        self._buckets = list(fields[8:])

    def _store(self, mapped: mmap.mmap) -> None:
        _FIELDS.pack_into(
            mapped,
            self._offset + 16,
            math.nan if self.rate is None else self.rate,
            self.next_slot,
            self.last_decrease,
            math.nan if self.started is None else self.started,
            time.monotonic(),
            int(self.slow_start),
            self.decreases,
            self._newest,
            *self._buckets,
        )

    def count_success(self, now: float, window_s: float) -> None:
        number = self._advance(now)
        self._buckets[number % BUCKETS] += 1

    def successes(self, now: float, window_s: float) -> int:
        """Successes in the last ``window_s``, to a bucket, and at most ``BUCKETS`` buckets."""
        self._advance(now)
        span = min(BUCKETS, max(1, math.ceil(window_s / BUCKET_S - 1e-9)))
        newest = self._newest
        return sum(self._buckets[n % BUCKETS] for n in range(newest - span + 1, newest + 1))

    def _advance(self, now: float) -> int:
        """Move the ring to ``now``'s bucket, emptying those that fell out of it; returns the
        bucket ``now`` counts in (the oldest kept, for a time older than the ring)."""
        number = int(now // BUCKET_S)
        if number > self._newest:
            for gone in range(max(self._newest + 1, number - BUCKETS + 1), number + 1):
                self._buckets[gone % BUCKETS] = 0
            self._newest = number
        return max(number, self._newest - BUCKETS + 1)


def _boot() -> bytes:
    """The boot id as 16 bytes, or zeros where the kernel has none."""
    text = boot_id().replace("-", "")
    try:
        return bytes.fromhex(text)[:16].ljust(16, b"\0")
    except ValueError:
        return bytes(16)


def _remove_stale(where: Path, keep: Path) -> None:
    cutoff = time.time() - STALE_S
    for old in where.glob("*.rates"):
        try:
            if old != keep and old.lstat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            continue
