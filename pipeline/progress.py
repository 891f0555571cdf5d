"""Live counters of a run, and the one-line progress display drawn on a terminal."""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class RunStats:
    """Counters the runner updates as rows finish (one event loop: no locks needed)."""

    total: int
    done: int = 0
    ok: int = 0
    error: int = 0
    requests: int = 0
    reused: int = 0
    sent: int = 0
    json_reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors_by_type: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    cost_usd: float = 0.0
    unpriced: int = 0
    earlier_cost_usd: float = 0.0
    possibly_billed: int = 0

    def add_cost(self, cost_usd: float | None, possibly_billed: int) -> None:
        """Count one written row's cost (``None``: it could not be priced)."""
        if cost_usd is None:
            self.unpriced += 1
        else:
            self.cost_usd += cost_usd
        self.possibly_billed += possibly_billed

    @property
    def projected_cost_usd(self) -> float | None:
        """Spent so far (earlier runs included) plus this run's cost per row times the rows left."""
        sent = self.done - self.reused
        if sent <= 0:
            return None
        return (
            self.earlier_cost_usd
            + self.cost_usd
            + self.cost_usd / sent * max(0, self.total - self.done)
        )

    @property
    def elapsed_s(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def usd(value: float) -> str:
    """``$0.0123``, ``$4.56``, ``$1,234``: four decimals under a dollar, none from a hundred."""
    if value >= 100:
        return f"${value:,.0f}"
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def _cost(stats: RunStats) -> str:
    """``$0.0123 ~$0.2468``: spent, and the projected total; ``+?`` when some rows have no price."""
    unknown = "+?" if stats.unpriced else ""
    projected = stats.projected_cost_usd
    total = "?" if projected is None else usd(projected) + unknown
    return f"{usd(stats.earlier_cost_usd + stats.cost_usd)}{unknown} ~{total}"


def render(stats: RunStats, width: int = 24) -> str:
    """``[#####.....] 500/1000 ok 498 err 2 | 85.1 req/s | 41,200 tok/min | $0.0123 ~$0.0246 | ETA 00:06``."""
    elapsed = max(stats.elapsed_s, 1e-9)
    fraction = stats.done / stats.total if stats.total else 1.0
    filled = int(width * min(1.0, fraction))
    bar = "#" * filled + "." * (width - filled)
    rate = stats.requests / elapsed
    tokens_per_min = (stats.prompt_tokens + stats.completion_tokens) / elapsed * 60
    row_rate = stats.done / elapsed
    eta = _clock((stats.total - stats.done) / row_rate) if row_rate > 0 else "--:--"
    return (
        f"[{bar}] {stats.done:,}/{stats.total:,} ok {stats.ok:,} err {stats.error:,}"
        f" | {rate:,.1f} req/s | {tokens_per_min:,.0f} tok/min | {_cost(stats)} | ETA {eta}"
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

    def draw(self, stats: RunStats) -> None:
        """Draw the current state over the previous line."""
        if self.enabled:
            self.stream.write("\r\x1b[2K" + render(stats))
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
