"""Tests of the progress line: counts, rates and ETA from the run's counters."""

from __future__ import annotations

import io
import re
import time

from pipeline.progress import ProgressLine, render
from pipeline.records import RunStats

ELAPSED_S = 1000.0
"""Long enough that the microseconds between building the stats and rendering them never show."""


def stats(**fields: int) -> RunStats:
    return RunStats(started=time.monotonic() - ELAPSED_S, **fields)


def test_render_shows_counts_rates_and_eta() -> None:
    line = render(
        stats(
            total=1000,
            done=500,
            ok=498,
            error=2,
            requests=51_000,
            prompt_tokens=15_000,
            completion_tokens=5_000,
        )
    )

    assert "500/1,000" in line
    assert "ok 498 err 2" in line
    assert "51.0 req/s" in line
    assert "1,200 tok/min" in line
    assert "ETA 16:40" in line  # 500 rows left at 0.5 rows/s
    assert line.startswith("[" + "#" * 12 + "." * 12 + "]")


def test_render_full_line() -> None:
    line = render(stats(total=4, done=1, ok=1, requests=2000), width=8)
    assert (
        line == "[##......] 1/4 ok 1 err 0 | 2.0 req/s | 0 tok/min | $0.0000 ~$0.0000 | ETA 50:00"
    )


def test_render_large_numbers_have_thousands_separators() -> None:
    line = render(
        stats(total=2_000_000, done=1_234_567, ok=1_234_000, error=567, requests=1_300_000)
    )
    assert "1,234,567/2,000,000" in line
    assert "ok 1,234,000 err 567" in line
    assert "1,300.0 req/s" in line


def test_render_eta_in_hours() -> None:
    line = render(stats(total=11, done=1, ok=1, requests=1))
    assert line.endswith("ETA 2:46:40")  # 10 rows at 1000 s each


def test_render_finished_and_empty_runs() -> None:
    done = render(stats(total=10, done=10, ok=7, error=3, requests=12))
    assert "10/10 ok 7 err 3" in done
    assert done.endswith("ETA 00:00")
    assert done.startswith("[" + "#" * 24 + "]")

    empty = render(stats(total=0))
    assert "0/0" in empty
    assert empty.startswith("[" + "#" * 24 + "]")


def test_render_before_any_row_is_done() -> None:
    line = render(stats(total=100))
    assert re.search(r"\b0/100 ok 0 err 0\b", line)
    assert "0.0 req/s" in line
    assert line.startswith("[" + "." * 24 + "]")
    assert line.endswith("ETA --:--")


def test_render_at_the_very_start_does_not_divide_by_zero() -> None:
    line = render(RunStats(total=5, done=1, ok=1, requests=1, started=time.monotonic() + 60))
    assert "1/5" in line


def test_elapsed() -> None:
    assert stats(total=1).elapsed_s >= ELAPSED_S


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_redraws_on_a_terminal() -> None:
    terminal = FakeTerminal()
    progress = ProgressLine(terminal)
    run = stats(total=2, done=1, ok=1, requests=1)

    progress.draw(run)
    run.done, run.ok = 2, 2
    progress.close(run)

    output = terminal.getvalue()
    assert output.count("\r\x1b[2K") == 2
    assert output.endswith("\n")
    assert "1/2 ok 1" in output
    assert "2/2 ok 2" in output


def test_progress_line_is_silent_elsewhere() -> None:
    stream = io.StringIO()
    progress = ProgressLine(stream)
    progress.draw(stats(total=1))
    progress.close(stats(total=1, done=1, ok=1))
    assert progress.enabled is False
    assert stream.getvalue() == ""


def test_render_shows_cost_spent_and_projected() -> None:
    run = stats(total=1000, done=300, ok=300, requests=300, reused=100)
    run.count_earlier_cost(1.0)
    run.cost_usd = 2.0
    # 2.00 spent over 200 sent rows: 700 rows left at 0.01 each
    assert run.projected_cost_usd == 1.0 + 2.0 + 7.0
    assert "| $3.00 ~$10.00 |" in render(run)
    run.unpriced = 1
    assert "| $3.00+? ~$10.00+? |" in render(run)
    assert "| $0.0000 ~? |" in render(stats(total=5))


def test_render_shows_the_auto_limit_after_the_request_rate() -> None:
    line = render(RunStats(total=4, done=1, ok=1, requests=2000, concurrency=12), width=8)
    assert " req/s | limit 12 | " in line
    assert "limit" not in render(stats(total=4, done=1, ok=1, requests=2000), width=8)
