"""The progress bar: one line that fits, never wraps, and is not torn by log lines."""

from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from connector.progress import Snapshot, Terminal, compact, duration, render
from tests.helpers import screen


def snapshot(**changes: float) -> Snapshot:
    values: dict[str, float] = {
        "elapsed_s": 75.0,
        "listings_total": 20_000,
        "listings_done": 5_000,
        "listings_failed": 0,
        "rows": 123_456,
        "requests": 5_321,
        "throttled": 12,
        "fetch_elapsed_s": 70.0,
    }
    values.update(changes)
    return Snapshot(**values)  # type: ignore[arg-type]


def test_the_line_shows_elapsed_eta_and_rows_per_second() -> None:
    """At 80 columns: the count, elapsed time, the ETA at the pace so far, and rows/s."""
    line = render(snapshot())
    assert len(line) <= 79
    assert "5.0k/20.0k" in line
    assert "1:15" in line  # elapsed
    assert "ETA 3:30" in line  # 15,000 listings left at 5,000 per 70 s
    assert "1,646 rows/s" in line  # 123,456 rows in 75 s


def test_no_eta_before_the_listing_count_is_known() -> None:
    """While discovery runs there is no count and no ETA."""
    line = render(snapshot(listings_total=0, listings_done=0, fetch_elapsed_s=0))
    assert "discovering" in line
    assert "ETA" not in line


@given(
    width=st.integers(min_value=1, max_value=300),
    total=st.integers(min_value=0, max_value=10**9),
    done=st.integers(min_value=0, max_value=10**9),
    failed=st.integers(min_value=0, max_value=10**9),
    rows=st.integers(min_value=0, max_value=10**12),
    elapsed=st.floats(min_value=0, max_value=10**7),
    throttled=st.integers(min_value=0, max_value=10**9),
)
def test_the_line_always_fits(
    width: int, total: int, done: int, failed: int, rows: int, elapsed: float, throttled: int
) -> None:
    """Whatever the counts and the terminal's width, the line fits 80 columns and the
    terminal's width (less the last column), and holds no line break."""
    line = render(
        Snapshot(elapsed, total, min(done, total), failed, rows, rows, throttled, elapsed),
        width,
    )
    assert len(line) <= max(20, min(width, 80)) - 1
    assert "\n" not in line
    assert "\r" not in line


def test_the_least_useful_fields_go_first_on_a_narrow_terminal() -> None:
    """At 40 columns the count, elapsed time and ETA stay; request counts go."""
    line = render(snapshot(), 40)
    assert len(line) <= 39
    assert "5.0k/20.0k" in line
    assert "1:15" in line
    assert "req" not in line


def test_formats() -> None:
    assert ["0:05", "1:05", "1:00:00"] == [duration(5), duration(65), duration(3600)]
    assert ["9,999", "10.0k", "1.50M"] == [compact(9999), compact(10_000), compact(1_500_000)]


def test_log_lines_go_above_the_bar() -> None:
    """A retry warning printed while the bar shows sits on its own row; the bar is redrawn
    below it, whole, and no torn copy is left behind."""
    out = io.StringIO()
    terminal = Terminal(out)
    terminal.show(render(snapshot(listings_done=1000)))
    print("request.retry status=429 attempt=1", file=terminal)
    terminal.show(render(snapshot(listings_done=2000)))
    # A tick between print's two writes (message, then newline) must wait for the newline.
    terminal.write("request.retry status=503 attempt=2")
    terminal.show(render(snapshot(listings_done=3000)))
    terminal.write("\n")
    rows = screen(out.getvalue())
    assert [
        "request.retry status=429 attempt=1",
        "request.retry status=503 attempt=2",
        render(snapshot(listings_done=3000)),
    ] == rows
    terminal.clear()
    assert screen(out.getvalue())[-1] == ""


def test_without_a_bar_writes_pass_through() -> None:
    out = io.StringIO()
    terminal = Terminal(out)
    print("one", file=terminal)
    print("two", file=terminal)
    assert "one\ntwo\n" == out.getvalue()
