"""Live counters of a run, and the one-line progress display drawn on a terminal."""

from __future__ import annotations

import io
from typing import TextIO

from pipeline.humanize import clock
from pipeline.humanize import usd as usd  # re-exported: cli.py imports it from here
from pipeline.records import RunStats


def _cost(stats: RunStats) -> str:
    """``$0.0123 ~$0.2468``: spent, and the projected total; ``+?`` when some rows have no price."""
    unknown = "+?" if stats.unpriced else ""
    projected = stats.projected_cost_usd
    total = "?" if projected is None else usd(projected) + unknown
    return f"{usd(stats.earlier_cost_usd + stats.cost_usd)}{unknown} ~{total}"


def render(stats: RunStats, width: int = 24, note: str = "") -> str:
    """``[#####.....] 500/1000 ok 498 err 2 | 85.1 req/s | 41,200 tok/min | $0.0123 ~$0.0246 | ETA 00:06``
    (``| limit 12`` after the request rate with ``concurrency = "auto"``), then `` | note``
    when given (batch mode: the batches by status)."""
    elapsed = max(stats.elapsed_s, 1e-9)
    fraction = stats.done / stats.total if stats.total else 1.0
    filled = int(width * min(1.0, fraction))
    bar = "#" * filled + "." * (width - filled)
    rate = stats.requests / elapsed
    tokens_per_min = (stats.prompt_tokens + stats.completion_tokens) / elapsed * 60
    row_rate = stats.done / elapsed
    eta = clock((stats.total - stats.done) / row_rate) if row_rate > 0 else "--:--"
    cache = (
        f" | cache {stats.cache_hits:,} saved {usd(stats.cache_saved_usd)}"
        if stats.cache_hits
        else ""
    )
    limit = "" if stats.concurrency is None else f" | limit {stats.concurrency}"
    return (
        f"[{bar}] {stats.done:,}/{stats.total:,} ok {stats.ok:,} err {stats.error:,}"
        f" | {rate:,.1f} req/s{limit} | {tokens_per_min:,.0f} tok/min | {_cost(stats)}{cache} | ETA {eta}"
        + (f" | {note}" if note else "")
    )


class ProgressLine:
    """Redraws one line in place on a terminal; does nothing elsewhere.

    Log events meant for the same terminal go through ``lines_above()``, which clears
    the progress line first so events and the line never run into each other.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.shown = False

    def draw(self, stats: RunStats, note: str = "") -> None:
        """Draw the current state over the previous line."""
        if self.enabled:
            self.stream.write("\r\x1b[2K" + render(stats, note=note))
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        """Remove the line (the next ``draw`` brings it back)."""
        if self.shown:
            self.stream.write("\r\x1b[2K")
            self.shown = False

    def close(self, stats: RunStats) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self.draw(stats)
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False

    def lines_above(self) -> LinesAbove:
        """A stream for log lines that keeps clear of the progress line."""
        return LinesAbove(self)


class LinesAbove(io.TextIOBase):
    """A text stream writing above a ``ProgressLine`` (what structlog's PrintLogger needs)."""

    def __init__(self, line: ProgressLine) -> None:
        self._line = line

    def write(self, text: str) -> int:
        """Clear the progress line, then write."""
        self._line.clear()
        return self._line.stream.write(text)

    def flush(self) -> None:
        """Flush the terminal."""
        self._line.stream.flush()

    def isatty(self) -> bool:
        """Whether the terminal is one."""
        return self._line.stream.isatty()
