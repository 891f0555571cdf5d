"""One global rate limit for many workers: buckets in one place, capacity leased in small grants.

    GlobalBuckets   the requests/min and tokens/min buckets of the whole job (held by one
                    Ray actor): a grant of a few requests' capacity is reserved at the
                    earliest time it fits (virtual scheduling, as ``pipeline.limits``), so
                    grants across all workers never exceed the limit plus one burst
    LeasedLimiter   a worker's ``RateLimiter``: spends its local grant, leases the next when
                    it runs out; hands what it learns (token corrections, ``x-ratelimit-*``
                    headers) back with its next lease, and a 429's pause to everyone at once

A static 1/N split overshoots at start (N full buckets) and strands the capacity of idle
workers; grants go to whoever is sending. A grant is about ``GRANT_S`` of one worker's
share of the rate (at least one request, at most one bucket): a worker holds at most that
unused, and leases about ``1 / GRANT_S`` times a second while it sends at its share.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from pipeline.limits import DEFAULT_BURST_S, Bucket, Clock, RateLimiter, Sleep, follow
from pipeline.records import RateLimitInfo

GRANT_S = 0.05
"""A grant is this much of a worker's share of the rate (in requests), at least one request."""
UNLIMITED_GRANT = 64
"""Requests in a grant while no limit is known (none configured, no headers seen yet)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Capacity leased to one worker, usable ``wait_s`` after it was granted."""

    requests: int
    tokens: int
    wait_s: float


class GlobalBuckets:
    """The job's buckets, in one place; every worker's capacity is leased from here."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        *,
        workers: int = 1,
        burst_s: float = DEFAULT_BURST_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self._clock = clock
        self._burst_s = burst_s
        self._grant_s = GRANT_S / max(1, workers)
        now = clock()
        self.requests = Bucket(requests_per_minute, burst_s, now) if requests_per_minute else None
        self.tokens = Bucket(tokens_per_minute, burst_s, now) if tokens_per_minute else None
        self.paused_until = 0.0
        self.granted = 0

    def _size(self, tokens_each: int) -> int:
        """Requests in the next grant: ``GRANT_S`` of a worker's share, within one bucket."""
        if self.requests is None and self.tokens is None:
            return UNLIMITED_GRANT
        size = math.inf
        if self.requests is not None:
            size = min(self.requests.rate * self._grant_s, self.requests.capacity)
        if self.tokens is not None and tokens_each > 0:
            size = min(
                size,
                self.tokens.rate * self._grant_s / tokens_each,
                self.tokens.capacity / tokens_each,
            )
        return max(1, math.floor(size)) if size != math.inf else UNLIMITED_GRANT

    def lease(self, tokens_each: int) -> Grant:
        """Reserve a grant of requests of ``tokens_each`` tokens at the earliest time it fits."""
        now = self._clock()
        count = self._size(tokens_each)
        tokens = count * tokens_each
        start = max(now, self.paused_until)
        if self.requests is not None:
            start = max(start, self.requests.ready_at(count, now))
        if self.tokens is not None:
            start = max(start, self.tokens.ready_at(tokens, now))
        if self.requests is not None:
            self.requests.charge(count, start)
        if self.tokens is not None:
            self.tokens.charge(tokens, start)
        self.granted += count
        return Grant(count, tokens, start - now)

    def report(self, tokens_back: int, info: RateLimitInfo | None) -> None:
        """A worker's news: tokens to give back (negative: to take), the server's headers."""
        now = self._clock()
        if self.tokens is not None and tokens_back:
            self.tokens.adjust(tokens_back, now)
        if info is not None:
            self.requests = follow(
                self.requests, info.limit_requests, info.remaining_requests, self._burst_s, now
            )
            self.tokens = follow(
                self.tokens, info.limit_tokens, info.remaining_tokens, self._burst_s, now
            )

    def cooldown(self, seconds: float) -> None:
        """A worker got a 429: no grant starts for ``seconds``, refill restarts after."""
        now = self._clock()
        until = now + seconds
        if until <= self.paused_until:
            return
        self.paused_until = until
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.pause_until(until, now, 0.0)


Lease = Callable[[int, int, RateLimitInfo | None], Awaitable[Grant]]
"""``(tokens each, tokens given back, latest headers) -> grant``: a call to the global buckets."""
Broadcast = Callable[[float], None]
"""Tell the global buckets about a 429's pause (without waiting for an answer)."""


class LeasedLimiter(RateLimiter):
    """A worker's limiter: the same interface as ``RateLimiter``, capacity leased from afar."""

    def __init__(
        self,
        lease: Lease,
        broadcast: Broadcast,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        super().__init__(None, None, clock=clock, sleep=sleep)
        self._lease = lease
        self._broadcast = broadcast
        self._lock = anyio.Lock()
        self._left_requests = 0
        self._left_tokens = 0
        self._tokens_back = 0
        self._info: RateLimitInfo | None = None
        self.leases = 0

    async def acquire(self, tokens: int) -> None:
        """Spend one request and ``tokens`` of the local grant; lease more when it runs out."""
        async with self._lock:
            while self._left_requests < 1 or self._left_tokens < tokens:
                tokens_back, self._tokens_back = self._tokens_back, 0
                info, self._info = self._info, None
                grant = await self._lease(tokens, tokens_back, info)
                self.leases += 1
                if grant.wait_s > 0:
                    await self._sleep(grant.wait_s)
                self._left_requests += grant.requests
                self._left_tokens += grant.tokens
            pause = self.paused_until - self._clock()
            if pause > 0:
                await self._sleep(pause)
            self._left_requests -= 1
            self._left_tokens -= tokens

    def settle(self, reserved: int, charged: int) -> None:
        """Tokens reserved but not charged go back with the next lease (or more are taken)."""
        self._tokens_back += reserved - charged

    def answered(self, info: RateLimitInfo | None) -> None:
        """Headers go to the global buckets with the next lease."""
        if info is not None:
            self._info = info

    def observe(self, info: RateLimitInfo) -> None:
        """Headers go to the global buckets with the next lease."""
        self._info = info

    def cooldown(self, seconds: float) -> None:
        """A 429: this worker waits, drops its grant, and every other worker is told."""
        until = self._clock() + seconds
        if until <= self._paused_until:
            return
        self._paused_until = until
        self._left_requests = self._left_tokens = 0
        self._broadcast(seconds)
