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

A read-modify-write of a state holds an exclusive ``flock`` of the file for a few microseconds;
the kernel releases it when a process dies. ``time.monotonic`` is the machine's clock
(``CLOCK_MONOTONIC``), the same in every process; the file records the moment the machine
started (wall time less monotonic time) and starts over when that changed, as after a reboot.
Where ``fcntl`` is missing (Windows), each shard keeps its own state, as on separate machines.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import structlog

from connector.retry import RateState

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = structlog.get_logger("connector.sharedrate")

MAGIC = b"OCIRATE1"
MAX_SHARDS = 4096
"""Shards whose index is this or more keep their own state."""
ENDPOINTS = 64
"""Endpoints (regions) one file holds; further ones are paced by each process alone."""
BUCKETS = 20
BUCKET_S = 0.05
"""Successes are counted in 20 buckets of 50 ms: the last second, to 50 ms."""
STALE_S = 7 * 86400.0
"""Files of runs not touched for a week are removed when another run opens its own."""

# magic, boot moment, total share, shards joined, bitmap of the shards joined
_HEADER = struct.Struct(f"<8sddq{MAX_SHARDS // 8}s")
# endpoint digest, rate (NaN: unpaced), next slot, last decrease, started, slow start,
# decreases, newest bucket's number, the buckets
_FIELDS = struct.Struct(f"<ddddqqq{BUCKETS}I")
_SLOT = struct.Struct(f"<16s{_FIELDS.format[1:]}")
_SIZE = _HEADER.size + ENDPOINTS * _SLOT.size


def folder() -> Path:
    """Where the files live: one folder per user in the system's temporary folder."""
    return Path(tempfile.gettempdir()) / f"oci-images-rates-{os.getuid()}"


class SharedRates:
    """The shared states of one run's shards on this machine; a context manager.

    ``state(endpoint)`` is None before the file is opened, after it is closed, where it could
    not be opened, and for endpoints beyond ``ENDPOINTS``: the controller then keeps its own.
    """

    def __init__(
        self, run_id: str, index: int, count: int, share: float, where: Path | None = None
    ) -> None:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:32]
        self.path = (where or folder()) / f"{digest}.rates"
        self.index, self.count, self.share = index, count, share
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        self._states: dict[str, RateState | None] = {}

    def __enter__(self) -> SharedRates:
        if fcntl is None or not 0 <= self.index < MAX_SHARDS:
            return self
        try:
            self._open()
        except OSError as exc:
            self.close()
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
        """Unmap and close the file (the states fall back to each process's own)."""
        self._states.clear()
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale(self.path.parent, keep=self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with self._locked():
            if os.fstat(self._fd).st_size != _SIZE:
                os.ftruncate(self._fd, _SIZE)
            self._map = mmap.mmap(self._fd, _SIZE)
            magic, boot, total, joined, bits = _HEADER.unpack_from(self._map, 0)
            if magic != MAGIC or abs(boot - _boot_moment()) > 5.0:
                self._map[:] = bytes(_SIZE)  # new, or from before the machine restarted
                total, joined, bits = 0.0, 0, bytes(MAX_SHARDS // 8)
            bitmap = bytearray(bits)
            byte, bit = divmod(self.index, 8)
            if not bitmap[byte] & (1 << bit):
                bitmap[byte] |= 1 << bit
                total, joined = total + self.share, joined + 1
            _HEADER.pack_into(self._map, 0, MAGIC, _boot_moment(), total, joined, bytes(bitmap))
        os.utime(self._fd)
        log.info("rate.shared", shards_here=joined, share=round(min(1.0, total), 4))

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
        found: RateState | None = None
        if self._map is not None:
            key = hashlib.sha256(endpoint.encode()).digest()[:16]
            with self._locked():
                for number in range(ENDPOINTS):
                    offset = _HEADER.size + number * _SLOT.size
                    held = self._map[offset : offset + 16]
                    if held == key:
                        break
                    if held == bytes(16):
                        fresh = (key, math.nan, -math.inf, -math.inf, math.nan, 1, 0, 0)
                        _SLOT.pack_into(self._map, offset, *fresh, *([0] * BUCKETS))
                        break
                else:
                    offset = -1
            if offset >= 0:
                found = _SharedState(self, offset)
        self._states[endpoint] = found
        return found

    def _share(self) -> float:
        assert self._map is not None
        total = _HEADER.unpack_from(self._map, 0)[2]
        return float(min(1.0, max(total, self.share)))


class _SharedState(RateState):
    """One endpoint's state in the file: loaded and stored around each ``held()``."""

    def __init__(self, rates: SharedRates, offset: int) -> None:
        super().__init__(rates.share)
        self._rates = rates
        self._offset = offset
        self._buckets = [0] * BUCKETS
        self._newest = 0

    @contextmanager
    def held(self) -> Iterator[RateState]:
        rates = self._rates
        if rates._map is None:
            yield self  # the file was closed: go on from the last values, alone
            return
        with rates._locked():
            mapped = rates._map
            assert mapped is not None
            self._load(mapped)
            self.share = rates._share()
            yield self
            self._store(mapped)

    def _load(self, mapped: mmap.mmap) -> None:
        fields = _SLOT.unpack_from(mapped, self._offset)
        _, rate, self.next_slot, self.last_decrease, started, slow, decreases, newest = fields[:8]
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
            int(self.slow_start),
            self.decreases,
            self._newest,
            *self._buckets,
        )

    def count_success(self, now: float, window_s: float) -> None:
        number = self._advance(now)
        self._buckets[number % BUCKETS] += 1

    def successes(self, now: float, window_s: float) -> int:
        """Successes in the last second (the ring's span, ``RateController.window_s``)."""
        self._advance(now)
        return sum(self._buckets)

    def _advance(self, now: float) -> int:
        """Move the ring to ``now``'s bucket, emptying those that fell out of the window."""
        number = int(now // BUCKET_S)
        if number > self._newest:
            for gone in range(max(self._newest + 1, number - BUCKETS + 1), number + 1):
                self._buckets[gone % BUCKETS] = 0
            self._newest = number
        return max(number, self._newest - BUCKETS + 1)


def _boot_moment() -> float:
    return time.time() - time.monotonic()


def _remove_stale(where: Path, keep: Path) -> None:
    cutoff = time.time() - STALE_S
    for old in where.glob("*.rates"):
        try:
            if old != keep and old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            continue
