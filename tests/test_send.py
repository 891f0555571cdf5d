"""The live sender over ``httpx.MockTransport``: retries, the ledger, limits and budget settled."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from pipeline.budget import Budget
from pipeline.client import ChatClient
from pipeline.concurrency import AdaptiveLimit, Change, GradientController
from pipeline.cost import Price
from pipeline.errors import (
    AuthFailed,
    BadRequest,
    ConnectionFailed,
    QuotaExhausted,
    ServerError,
)
from pipeline.limits import RateLimiter
from pipeline.prices import PriceTable
from pipeline.records import ChatRequest, Ended, Ledger, Reply, RunStats, Usage
from pipeline.runner.control import FATAL_STREAK, RunControl, Stopped
from pipeline.runner.send import LiveSender
from pipeline.spec import EndpointSpec, PriceSpec, RetrySpec

RETRY = RetrySpec(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.002)
PRICES = PriceTable.for_job({"m": PriceSpec(input=1.0, cached_input=0.5, output=2.0)})

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def request(max_tokens: int | None = 10) -> ChatRequest:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    return ChatRequest(body, 1, "h", estimated_prompt_tokens=5, max_tokens=max_tokens, model="m")


def answer(prompt: int = 100, completion: int = 10) -> httpx.Response:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    body = {
        "id": "c1",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }
    return httpx.Response(200, json=body)


def answers(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering each request with the next response (raising an exception one)."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


@contextlib.asynccontextmanager
async def live_sender(
    handler: Handler,
    *,
    budget: Budget | None = None,
    stats: RunStats | None = None,
    control: RunControl | None = None,
    limiter: RateLimiter | None = None,
) -> AsyncIterator[LiveSender]:
    spec = EndpointSpec(base_url="https://llm.example.test/v1")
    transport = httpx.MockTransport(handler)
    async with ChatClient(spec, api_key="k", max_connections=2, transport=transport) as client:
        yield LiveSender(
            client,
            concurrency=2,
            limiter=limiter or RateLimiter(None, None),
            budget=budget,
            prices=PRICES,
            retry=RETRY,
            stats=stats or RunStats(total=1),
            control=control or RunControl(grace_s=1.0),
        )


async def send(handler: Handler, ledger: Ledger, **parts: Any) -> Reply:
    async with live_sender(handler, **parts) as sender:
        return await sender.send("r1", request(), ledger)


@pytest.mark.anyio
async def test_an_answer_fills_the_ledger_with_usage_and_cost() -> None:
    handler, seen = answers(answer(100, 10))
    ledger, stats = Ledger(), RunStats(total=1)
    reply = await send(handler, ledger, stats=stats)
    assert reply.content == "ok"
    assert (ledger.attempts, ledger.possibly_billed, stats.requests) == (1, 0, 1)
    assert ledger.usage == Usage(100, 10, 110)
    assert ledger.cost_usd == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
    assert len(seen) == 1


@pytest.mark.anyio
async def test_retryable_failures_are_retried_and_counted() -> None:
    handler, _ = answers(httpx.Response(503), httpx.ReadTimeout("slow"), answer())
    ledger = Ledger()
    await send(handler, ledger)
    assert ledger.attempts == 3
    assert ledger.possibly_billed == 1  # the timeout: sent, never answered


@pytest.mark.anyio
async def test_after_the_last_attempt_the_error_is_raised_with_the_ledger_kept() -> None:
    handler, _ = answers(httpx.Response(500), httpx.Response(500), httpx.ReadError("down"))
    ledger = Ledger()
    with pytest.raises(ConnectionFailed):
        await send(handler, ledger)
    assert ledger.attempts == 3
    assert ledger.cost_usd == 0.0


@pytest.mark.anyio
async def test_a_fatal_answer_is_not_retried() -> None:
    handler, seen = answers(httpx.Response(400, json={"error": {"message": "bad"}}))
    with pytest.raises(BadRequest):
        await send(handler, Ledger())
    assert len(seen) == 1


@pytest.mark.anyio
async def test_the_budget_is_settled_with_the_real_cost() -> None:
    budget = Budget(1.0)
    handler, _ = answers(answer(100, 10))
    await send(handler, Ledger(), budget=budget)
    assert budget.reserved_usd == 0.0
    assert budget.spent_usd == pytest.approx(120e-6)


@pytest.mark.anyio
async def test_a_failed_attempt_gives_its_budget_reservation_back() -> None:
    budget = Budget(1.0)
    handler, _ = answers(httpx.Response(400))
    with pytest.raises(BadRequest):
        await send(handler, Ledger(), budget=budget)
    assert (budget.reserved_usd, budget.spent_usd) == (0.0, 0.0)


@pytest.mark.anyio
async def test_an_attempt_that_would_pass_the_budget_stops_the_run_unsent() -> None:
    control = RunControl(grace_s=1.0)
    handler, seen = answers(answer())
    with pytest.raises(Stopped):
        await send(handler, Ledger(), budget=Budget(1e-9), control=control)
    assert seen == []
    assert control.ended is Ended.BUDGET
    assert control.reason is not None
    assert "max_cost_usd" in control.reason


@pytest.mark.anyio
async def test_nothing_is_sent_once_the_run_is_stopping() -> None:
    control = RunControl(grace_s=1.0)
    control.stop(Ended.INTERRUPTED, "received SIGINT")
    handler, seen = answers(answer())
    ledger = Ledger()
    with pytest.raises(Stopped):
        await send(handler, ledger, control=control)
    assert (seen, ledger.attempts) == ([], 0)


@pytest.mark.anyio
async def test_refused_requests_in_a_row_abort_the_run() -> None:
    control = RunControl(grace_s=1.0)
    handler, _ = answers(
        *[httpx.Response(401, json={"error": {"message": "bad key"}})] * FATAL_STREAK
    )
    async with live_sender(handler, control=control) as sender:
        for _ in range(FATAL_STREAK - 1):
            with pytest.raises(AuthFailed):
                await sender.send("r1", request(), Ledger())
        assert not control.is_stopping
        with pytest.raises(AuthFailed):
            await sender.send("r1", request(), Ledger())
    assert control.ended is Ended.ABORTED


@pytest.mark.anyio
async def test_another_failure_resets_the_refusal_streak() -> None:
    control = RunControl(grace_s=1.0)
    refusal = httpx.Response(401, json={"error": {"message": "bad key"}})
    responses = [refusal] * (FATAL_STREAK - 1) + [httpx.Response(500)] * 3 + [refusal]
    handler, _ = answers(*responses)
    async with live_sender(handler, control=control) as sender:
        for _ in range(FATAL_STREAK - 1):
            with pytest.raises(AuthFailed):
                await sender.send("r1", request(), Ledger())
        with pytest.raises(ServerError):
            await sender.send("r1", request(), Ledger())
        with pytest.raises(AuthFailed):
            await sender.send("r1", request(), Ledger())
    assert not control.is_stopping


def test_a_price_for_the_sender_comes_from_the_table() -> None:
    assert PRICES.resolve("m") == Price(1.0, 0.5, 2.0, model="m")


@pytest.mark.anyio
async def test_an_adaptive_limit_hears_every_attempt_and_a_503_cuts_it() -> None:
    handler, seen = answers(httpx.Response(503, json={"error": {"message": "busy"}}), answer())
    changes: list[Change] = []
    limit = AdaptiveLimit(GradientController(1, 64, initial=8), on_change=changes.append)
    spec = EndpointSpec(base_url="https://llm.example.test/v1")
    transport = httpx.MockTransport(handler)
    async with ChatClient(spec, api_key="k", max_connections=2, transport=transport) as client:
        sender = LiveSender(
            client,
            concurrency=limit,
            limiter=RateLimiter(None, None),
            budget=None,
            prices=PRICES,
            retry=RETRY,
            stats=RunStats(total=1),
            control=RunControl(grace_s=1.0),
        )
        reply = await sender.send("r1", request(), Ledger())
    assert reply.content == "ok"
    assert len(seen) == 2
    assert changes == [Change(8, 4, "overloaded")]
    assert limit.limit == 4
    assert limit.sending()[1] == 1  # nothing left counted on the wire


def rate_limited(**headers: str) -> httpx.Response:
    body = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    return httpx.Response(429, json=body, headers={"retry-after-ms": "1", **headers})


@pytest.mark.anyio
async def test_a_429_whose_headers_show_capacity_left_pauses_nobody() -> None:
    limiter = RateLimiter(None, None)
    left = {"x-ratelimit-remaining-requests": "500", "x-ratelimit-remaining-tokens": "90000"}
    handler, _ = answers(rate_limited(**left), answer())
    await send(handler, Ledger(), limiter=limiter)
    assert limiter.paused_until == 0.0


@pytest.mark.anyio
async def test_a_429_whose_headers_show_a_spent_limit_pauses_everyone() -> None:
    limiter = RateLimiter(None, None)
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "90000"}
    handler, _ = answers(rate_limited(**spent), answer())
    await send(handler, Ledger(), limiter=limiter)
    assert limiter.paused_until > 0.0


@pytest.mark.anyio
async def test_a_stray_429_without_headers_pauses_nobody_but_a_storm_does() -> None:
    limiter = RateLimiter(None, None)
    stray = [answer()] * 20 + [rate_limited(), answer()]
    storm = [rate_limited(), rate_limited(), answer()] * 4
    handler, _ = answers(*stray, *storm)
    async with live_sender(handler, limiter=limiter) as sender:
        for _ in range(21):
            await sender.send("r", request(), Ledger())
        assert limiter.paused_until == 0.0  # one 429 in 21 answers: stray
        for _ in range(4):
            await sender.send("r", request(), Ledger())
    assert limiter.paused_until > 0.0  # 9 of the last 34 answers: the limit is spent


@pytest.mark.anyio
async def test_insufficient_quota_is_not_retried_and_stops_the_run() -> None:
    body = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
    handler, seen = answers(httpx.Response(429, json=body))
    control = RunControl(grace_s=1.0)
    with pytest.raises(QuotaExhausted):
        await send(handler, Ledger(), control=control)
    assert len(seen) == 1
    assert control.ended is Ended.ABORTED
    assert control.reason is not None
    assert "no credit left" in control.reason
