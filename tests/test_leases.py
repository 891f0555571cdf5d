"""The global buckets and the worker's leased limiter, on a fake clock (no Ray needed)."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.engines.leases import GlobalBuckets, Grant, LeasedLimiter
from pipeline.records import RateLimitInfo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=0.3), min_size=1, max_size=200),
    tokens=st.integers(min_value=1, max_value=400),
)
def test_grants_never_exceed_the_rate_plus_one_burst(gaps: list[float], tokens: int) -> None:
    clock = Clock()
    buckets = GlobalBuckets(600, 60_000, clock=clock)  # 10 requests/s, 1,000 tokens/s
    starts: list[tuple[float, Grant]] = []
    for gap in gaps:  # workers asking at random moments
        clock.now += gap
        grant = buckets.lease(tokens)
        starts.append((clock.now + grant.wait_s, grant))
    first = 100.0
    for _, grant in starts:
        assert grant.requests >= 1
    for end in sorted({start for start, _ in starts}):
        requests = sum(g.requests for s, g in starts if s <= end)
        used = sum(g.tokens for s, g in starts if s <= end)
        elapsed = end - first
        assert requests <= 10 * elapsed + 10 * 0.25 + 1e-6
        assert used <= 1000 * elapsed + max(1000 * 0.25, tokens) + 1e-6


def test_headers_lower_the_limit_and_a_429_pauses_every_grant() -> None:
    clock = Clock()
    buckets = GlobalBuckets(None, None, clock=clock)
    assert buckets.lease(10).requests == 64  # no limit known yet
    buckets.report(0, RateLimitInfo(limit_requests=60, remaining_requests=0))
    assert buckets.requests is not None
    assert buckets.requests.per_minute == 60
    assert buckets.lease(10).wait_s > 0  # nothing left: the next request waits for the refill
    buckets.cooldown(5.0)
    assert buckets.lease(10).wait_s >= 5.0


def test_the_worker_spends_its_grant_and_reports_on_the_next_lease() -> None:
    clock = Clock()
    calls: list[tuple[int, int, RateLimitInfo | None]] = []
    paused: list[float] = []

    async def lease(tokens_each: int, back: int, info: RateLimitInfo | None) -> Grant:
        calls.append((tokens_each, back, info))
        return Grant(requests=3, tokens=3 * tokens_each, wait_s=0.5)

    async def scenario() -> LeasedLimiter:
        limiter = LeasedLimiter(lease, paused.append, clock=clock, sleep=clock.sleep)
        for _ in range(3):
            await limiter.acquire(100)
        info = RateLimitInfo(limit_requests=10)
        limiter.settle(100, 40)
        limiter.answered(info)
        await limiter.acquire(100)
        limiter.cooldown(2.0)
        await limiter.acquire(100)
        return limiter

    limiter = anyio.run(scenario)
    assert limiter.leases == 3
    assert calls[1] == (100, 60, RateLimitInfo(limit_requests=10))
    assert paused == [2.0]
    assert clock.now == pytest.approx(100.0 + 0.5 + 0.5 + 2.0)
