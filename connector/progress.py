"""The progress bar a person reads on a terminal: one line, redrawn in place.

The line never wraps: a carriage return brings the cursor back to the start of the last row
only, so a wrapped line could not be erased and every redraw would leave a torn copy behind.
It is cut to the terminal's width (80 columns at most, less one: some terminals wrap on the
last column), dropping the least useful fields first. Log lines written while it shows go
above it (``Terminal``), and it is redrawn below them.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from typing import TextIO

MAX_WIDTH = 80
ERASE = "\r\x1b[K"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the bar shows, read from the run's counters."""

    elapsed_s: float
    listings_total: int
    """0 while discovery runs: the number of listings is not known yet."""
    listings_done: int
    listings_failed: int
    rows: int
    requests: int
    throttled: int
    fetch_elapsed_s: float | None = None
    """Time since the listing count became known (when fetching began)."""

    @property
    def eta_s(self) -> float | None:
        """Time left at the pace of the listings done so far, once there is such a pace."""
        if not self.listings_total or not self.listings_done or not self.fetch_elapsed_s:
            return None
        pace = self.listings_done / self.fetch_elapsed_s
        return max(0, self.listings_total - self.listings_done) / pace

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.elapsed_s if self.elapsed_s > 0 else 0.0


def duration(seconds: float) -> str:
    """``m:ss`` under an hour, ``h:mm:ss`` from then on."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def compact(number: float) -> str:
    """A count in at most six characters: 9,876 · 98.8k · 1.23M."""
    if number < 10_000:
        return f"{number:,.0f}"
    if number < 1_000_000:
        return f"{number / 1000:.1f}k"
    return f"{number / 1_000_000:.2f}M"


def fraction(done: int, total: int) -> str:
    """Listings done of the total, both in the total's unit: 5,000/9,000 · 5.0k/20.0k."""
    if total < 10_000:
        return f"{done:,}/{total:,}"
    if total < 1_000_000:
        return f"{done / 1000:.1f}k/{total / 1000:.1f}k"
    return f"{done / 1_000_000:.2f}M/{total / 1_000_000:.2f}M"


def render(snapshot: Snapshot, width: int = MAX_WIDTH) -> str:
    """The bar's line, at most ``min(width, 80) - 1`` characters, never a line break."""
    room = max(20, min(width, MAX_WIDTH)) - 1
    total, done = snapshot.listings_total, snapshot.listings_done
    eta = snapshot.eta_s
    # (priority, text): the lowest priorities go first when the line is too long.
    fields: list[tuple[int, str]] = [
        (9, fraction(done, total) if total else "discovering"),
        (8, duration(snapshot.elapsed_s)),
        (7, f"ETA {duration(eta)}" if eta is not None else ""),
        (6, f"{compact(snapshot.rows_per_s)} rows/s"),
        (5, f"{compact(snapshot.listings_failed)} failed" if snapshot.listings_failed else ""),
        (4, f"{compact(snapshot.throttled)} throttled" if snapshot.throttled else ""),
        (3, f"{compact(snapshot.rows)} rows"),
        (2, f"{compact(snapshot.requests)} req"),
    ]
    fields = [f for f in fields if f[1]]
    bar_min = 12 if room >= 60 else 7  # "[" and "]" around 10 or 5

    def length(kept: list[tuple[int, str]]) -> int:
        return sum(len(text) + 2 for _, text in kept)  # two spaces before each field

    while fields and bar_min + length(fields) > room:
        fields.remove(min(fields, key=lambda f: f[0]))
    inner = max(1, min(30, room - length(fields)) - 2)
    filled = int(inner * done / total) if total else 0
    bar = "[" + "#" * filled + "." * (inner - filled) + "]"
    line = bar + "".join(f"  {text}" for _, text in fields)
    return line[:room]


class Terminal:
    """stderr while a progress bar may show: text written goes above the bar, which is drawn
    again below it; thread-safe, so a worker thread's log line cannot tear it either.

    ``print`` writes a message and its newline in two calls; between them the cursor is in the
    middle of a line, and the bar waits for the newline instead of drawing itself there.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._line = ""
        self._shown = False
        self._mid_line = False

    def write(self, text: str) -> int:
        with self._lock:
            if self._shown:
                self._stream.write(ERASE)
                self._shown = False
            self._stream.write(text)
            if text:
                self._mid_line = not text.endswith("\n")
            if self._line and not self._mid_line:
                self._stream.write(self._line)
                self._shown = True
            self._stream.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def width(self) -> int:
        return shutil.get_terminal_size((MAX_WIDTH, 24)).columns

    def show(self, line: str) -> None:
        """Draw (or redraw) the bar."""
        with self._lock:
            self._line = line
            if self._mid_line:
                return
            self._stream.write(ERASE + line)
            self._shown = True
            self._stream.flush()

    def clear(self) -> None:
        """Take the bar away for good (the run is over)."""
        with self._lock:
            if self._shown:
                self._stream.write(ERASE)
                self._stream.flush()
            self._line = ""
            self._shown = False
