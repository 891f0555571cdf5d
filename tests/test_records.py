"""The shared vocabulary: Usage adds, the Ledger of one row, RunStats and its summary."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from pipeline.records import MAX_HISTORY, Ended, Ledger, Outcome, RunStats, Usage

counts = st.none() | st.integers(min_value=0, max_value=10**9)
usages = st.builds(Usage, counts, counts, counts, counts, counts)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@given(usages, usages, usages)
def test_usage_addition_is_associative_with_an_empty_identity(a: Usage, b: Usage, c: Usage) -> None:
    assert (a + b) + c == a + (b + c)
    assert a + Usage() == a == Usage() + a


@given(usages, usages)
def test_a_count_is_none_only_while_neither_side_reported_it(a: Usage, b: Usage) -> None:
    total = a + b
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "reasoning_tokens",
    ):
        left, right = getattr(a, name), getattr(b, name)
        expected = None if left is None and right is None else (left or 0) + (right or 0)
        assert getattr(total, name) == expected


def test_usage_adds_in_place() -> None:
    usage = Usage()
    usage += Usage(10, 2, 12)
    usage += Usage(5, 1, 6, cached_tokens=3)
    assert usage == Usage(15, 3, 18, cached_tokens=3)


def test_ledger_counts_attempts_answers_and_losses() -> None:
    ledger = Ledger()
    ledger.sent()
    ledger.lost()
    ledger.sent()
    ledger.answered(Usage(10, 2, 12), 0.5)
    assert (ledger.attempts, ledger.possibly_billed, ledger.cost_usd) == (2, 1, 0.5)
    ledger.answered(Usage(10, 2, 12), None)
    assert ledger.cost_usd is None  # one answer without a price: the row's cost is unknown
    assert ledger.usage == Usage(20, 4, 24)


def outcome(status: str = "ok", **fields: object) -> Outcome:
    values: dict[str, object] = {
        "seq": 0,
        "id": "r",
        "status": status,
        "started_at": T0,
        "finished_at": T0,
    }
    values.setdefault("attempts", 1)
    return Outcome(**{**values, **fields})  # type: ignore[arg-type]


def test_run_stats_count_written_reused_and_sent_rows() -> None:
    stats = RunStats(total=5)
    stats.count_earlier_cost(0.25)
    stats.count_request()
    stats.count_written(outcome(usage=Usage(10, 5, 15), cost_usd=0.5))
    stats.count_request()
    stats.count_written(
        outcome("error", error_type="timeout", cost_usd=None, possibly_billed_attempts=2)
    )
    stats.count_written(outcome("error", attempts=0, error_type="bad_input"))
    stats.count_reused(ok=True, error_type=None)
    stats.count_reused(ok=False, error_type=None)
    stats.count_json_reask()

    summary = stats.summary("out.parquet", Ended.COMPLETE, None)
    assert (summary.rows_total, summary.rows_ok, summary.rows_error) == (5, 2, 3)
    assert summary.errors_by_type == {"timeout": 1, "bad_input": 1, "unknown": 1}
    assert (summary.rows_sent, summary.rows_reused, summary.requests_sent) == (2, 2, 2)
    assert (summary.prompt_tokens, summary.completion_tokens) == (10, 5)
    assert (summary.cost_usd, summary.unpriced_rows, summary.earlier_cost_usd) == (0.5, 1, 0.25)
    assert (summary.possibly_billed_attempts, summary.json_reasks) == (2, 1)
    assert summary.complete


def test_a_summary_that_ended_early_is_not_complete() -> None:
    summary = RunStats(total=1).summary("o", Ended.TERMINATED, "received SIGTERM")
    assert not summary.complete
    assert (summary.ended, summary.reason) == (Ended.TERMINATED, "received SIGTERM")


def test_the_concurrency_history_is_bounded_and_keeps_its_ends() -> None:
    stats = RunStats(total=1)
    for limit in range(1, 3 * MAX_HISTORY):
        stats.count_concurrency(limit)
    history = stats.concurrency_history
    assert len(history) <= MAX_HISTORY
    assert (history[0][1], history[-1][1], stats.concurrency) == (
        1,
        3 * MAX_HISTORY - 1,
        3 * MAX_HISTORY - 1,
    )
    assert [limit for _, limit in history] == sorted(limit for _, limit in history)
    summary = stats.summary("out.parquet", Ended.COMPLETE, None)
    assert summary.concurrency == 3 * MAX_HISTORY - 1
    assert summary.concurrency_history == tuple(history)
    assert RunStats(total=1).summary("o", Ended.COMPLETE, None).concurrency is None
