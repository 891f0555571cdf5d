"""Tests of the cost arithmetic against hand-computed cases, and of the budget's bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.budget import Budget
from pipeline.cost import (
    Price,
    attempt_ceiling,
    possibly_billed,
    reply_cost,
    tokens_cost,
    usage_cost,
)
from pipeline.errors import (
    AttemptError,
    AuthFailed,
    BadResponse,
    ConnectionFailed,
    RateLimited,
    RequestTimeout,
    ServerError,
)
from pipeline.records import Ledger, Usage
from pipeline.results import recorded_cost

MINI = Price(input=0.15, cached_input=0.075, output=0.6, model="gpt-4o-mini")
O3_MINI = Price(input=1.1, cached_input=0.55, output=4.4, model="o3-mini")


def reply(prompt: int | None, completion: int | None, **counts: int) -> Usage:
    """One answer's usage (total = prompt + completion unless given)."""
    total = None if prompt is None or completion is None else prompt + completion
    return Usage(prompt, completion, counts.pop("total_tokens", total), **counts)


def test_plain_usage() -> None:
    # 1000 * 0.15 + 500 * 0.6 = 150 + 300 micro-dollars
    assert usage_cost(MINI, 1000, 500) == pytest.approx(450e-6)


def test_cached_tokens_are_billed_at_the_cached_price() -> None:
    # 600 * 0.15 + 400 * 0.075 + 500 * 0.6 = 90 + 30 + 300
    assert usage_cost(MINI, 1000, 500, cached_tokens=400) == pytest.approx(420e-6)


def test_cached_tokens_never_exceed_the_prompt() -> None:
    # all 100 cached: 100 * 0.075 + 10 * 0.6 = 7.5 + 6
    assert usage_cost(MINI, 100, 10, cached_tokens=500) == pytest.approx(13.5e-6)


def test_reasoning_tokens_inside_completion_are_billed_once_as_output() -> None:
    # OpenAI: completion 300 includes 200 reasoning; 100 * 1.1 + 300 * 4.4 = 110 + 1320
    cost = usage_cost(O3_MINI, 100, 300, reasoning_tokens=200, total_tokens=400)
    assert cost == pytest.approx(1430e-6)


def test_reasoning_tokens_outside_completion_are_added() -> None:
    # completion 100 visible + 200 reasoning reported apart (total says so): same bill
    cost = usage_cost(O3_MINI, 100, 100, reasoning_tokens=200, total_tokens=400)
    assert cost == pytest.approx(1430e-6)


def test_cached_and_reasoning_together() -> None:
    # 60 * 1.1 + 40 * 0.55 + 300 * 4.4 = 66 + 22 + 1320
    cost = usage_cost(O3_MINI, 100, 300, cached_tokens=40, reasoning_tokens=200, total_tokens=400)
    assert cost == pytest.approx(1408e-6)


def test_reply_cost_needs_a_price_and_usage() -> None:
    assert reply_cost(MINI, reply(1000, 500, cached_tokens=400)) == pytest.approx(420e-6)
    assert reply_cost(None, reply(1000, 500)) is None
    assert reply_cost(MINI, reply(None, None)) is None


def test_a_row_pays_for_every_attempt_that_returned_usage() -> None:
    ledger = Ledger()
    ledger.answered(reply(1000, 500), reply_cost(MINI, reply(1000, 500)))
    again = reply(1000, 500, cached_tokens=400)
    ledger.answered(again, reply_cost(MINI, again))  # a re-ask
    assert ledger.cost_usd == pytest.approx(870e-6)
    assert ledger.usage == Usage(2000, 1000, 3000, 400)
    ledger.answered(reply(10, 10), reply_cost(None, reply(10, 10)))
    assert ledger.cost_usd is None
    ledger.answered(reply(10, 10), reply_cost(MINI, reply(10, 10)))
    assert ledger.cost_usd is None


def test_attempt_ceiling_assumes_nothing_cached_and_every_output_token() -> None:
    assert attempt_ceiling(MINI, 1000, 64) == pytest.approx((150 + 38.4) * 1e-6)


def test_tokens_cost_takes_fractional_counts_for_estimates() -> None:
    # 750.5 * 0.15 + 249.5 * 0.075 + 100.25 * 0.6 = 112.575 + 18.7125 + 60.15
    cost = tokens_cost(MINI, 1000.0, 100.25, cached_tokens=249.5)
    assert cost == pytest.approx(191.4375e-6)


def test_usage_cost_and_the_ceiling_are_the_one_formula() -> None:
    assert usage_cost(MINI, 1000, 500, cached_tokens=400) == tokens_cost(
        MINI, 1000, 500, cached_tokens=400
    )
    assert attempt_ceiling(MINI, 1000, 64) == tokens_cost(MINI, 1000, 64)


@pytest.mark.parametrize(
    ("error", "billed"),
    [
        (RequestTimeout("timed out"), True),
        (ConnectionFailed("connection failed: reset"), True),
        (BadResponse("not JSON", http_status=200), True),
        (BadResponse("could not be decoded"), True),
        (RequestTimeout("HTTP 408", http_status=408), False),
        (ServerError("HTTP 503", http_status=503), False),
        (RateLimited("HTTP 429", http_status=429), False),
        (AuthFailed("HTTP 401", http_status=401), False),
    ],
)
def test_possibly_billed_attempts(error: AttemptError, billed: bool) -> None:
    assert possibly_billed(error) is billed


def test_budget_reserves_settles_and_refuses() -> None:
    budget = Budget(1.0, spent_usd=0.25)
    assert budget.reserve(0.5)
    assert not budget.reserve(0.3)  # 0.25 + 0.5 + 0.3 > 1
    budget.settle(0.5, 0.1)
    assert budget.spent_usd == pytest.approx(0.35)
    assert budget.reserved_usd == 0
    assert budget.reserve(0.6)
    budget.release(0.6)
    assert budget.reserve(0.65)
    budget.settle(0.65, None)  # no usage: the reservation counts as spent
    assert budget.spent_usd == pytest.approx(1.0)
    assert "would pass limits.max_cost_usd $1" in budget.refusal(0.01)


def test_recorded_cost_sums_earlier_results(tmp_path: Path) -> None:
    with_cost, without = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "cost_usd": [0.5, None, 0.25]}), with_cost)
    pq.write_table(pa.table({"id": ["d"]}), without)
    assert recorded_cost([with_cost, without]) == pytest.approx(0.75)
    assert recorded_cost([]) == 0.0
