"""Requests/min and tokens/min, paced smoothly, corrected by what the server reports.

Each limit is a token bucket refilled continuously at ``limit / 60`` per second with
a small capacity (``burst_s`` worth), so a fresh run never fires a minute's quota at
once. A caller *reserves* capacity and sleeps exactly until its turn (virtual
scheduling: both buckets are charged at the one time both have room, so the level
may go negative and later callers queue behind), so there is no polling. A request
larger than a bucket's capacity starts when that bucket is full. The server is the truth:

* ``settle`` corrects the token bucket once ``usage`` shows what a request really
  cost (the server's tokenizer, not our four-characters-a-token guess);
* ``observe`` lowers the buckets to the server's ``x-ratelimit-remaining-*`` and
  adopts its ``x-ratelimit-limit-*`` when that is lower than the configured limit
  (or none is configured: then a first wave of ``FIRST_WAVE`` requests goes at once and,
  until the first answer, the requests let out double every ``RAMP_S``: see ``SlowStart``);
* ``cooldown`` (after a 429) pauses every caller at once and restarts the refill after
  the pause, from empty at best (the debt of requests already sent is kept); callers
  already waiting give their reservations back and take new places in the queue.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import anyio

from pipeline.records import ChatRequest, RateLimitInfo

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_BURST_S = 0.25
FIRST_WAVE = 8
"""Requests sent at once to a server whose limits are not known yet (none configured)."""
RAMP_S = 0.05
"""Until the server's first answer, the requests let out double every ``RAMP_S`` seconds."""
_DEFAULT_COMPLETION_GUESS = 256
_LEARNING_RATE = 0.05


def too_large(tokens: int, tokens_per_minute: int | None) -> str | None:
    """Why a request of ``tokens`` (prompt estimate + ``max_tokens``) can never be sent
    under ``tokens_per_minute``, or None when it fits."""
    if tokens_per_minute is None or tokens <= tokens_per_minute:
        return None
    return (
        f"the request needs about {tokens:,} tokens (prompt estimate + max_tokens), more than "
        f"limits.tokens_per_minute {tokens_per_minute:,} allows in a minute: shorten the "
        "prompt or raise the limit"
    )


def request_tokens(request: ChatRequest) -> int:
    """Tokens a request is charged at least: the offline prompt estimate plus ``max_tokens``."""
    return request.estimated_prompt_tokens + (request.max_tokens or 0)


class Bucket:
    """One continuously refilled bucket; ``level`` may go negative (reserved ahead)."""

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        """Bring the level up to ``now`` (not before ``updated``, which a cooldown may push ahead)."""
        elapsed = now - self.updated
        if elapsed > 0:
            self.level = min(self.capacity, self.level + elapsed * self.rate)
            self.updated = now

    def ready_at(self, amount: float, now: float) -> float:
        """The earliest time ``amount`` fits: the level reaches it (or the bucket is full, if larger)."""
        self.refill(now)
        need = min(amount, self.capacity)
        return max(now, self.updated) + max(0.0, need - self.level) / self.rate

    def charge(self, amount: float, at: float) -> None:
        """Take ``amount`` at time ``at`` (not before ``ready_at``); the level may go negative."""
        if at > self.updated:
            self.level = min(self.capacity, self.level + (at - self.updated) * self.rate)
            self.updated = at
        self.level -= amount

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount`` at its earliest time; return how long to wait until then."""
        at = self.ready_at(amount, now)
        self.charge(amount, at)
        return at - now

    def adjust(self, delta: float, now: float) -> None:
        """Give back (positive) or take more (negative) after the fact."""
        self.refill(now)
        self.level = min(self.capacity, self.level + delta)

    def clamp(self, remaining: float, now: float) -> None:
        """The server says only ``remaining`` is left: never believe we have more."""
        self.refill(now)
        self.level = min(self.level, remaining)

    def pause_until(self, until: float, now: float, waiting: float) -> None:
        """No refill before ``until``; the debt of what was already sent is kept.

        ``waiting`` is what callers still asleep had reserved: it is given back at once
        (they reserve again, one after another, after the pause).
        """
        if self.updated > now:
            self.level -= (self.updated - now) * self.rate
        else:
            self.refill(now)
        self.level = min(self.level + waiting, 0.0)
        self.updated = max(now, until)

    def replaced(self, per_minute: float, burst_s: float) -> Bucket:
        """A bucket at another rate that keeps this one's level (and so its queue)."""
        bucket = Bucket(per_minute, burst_s, self.updated)
        bucket.level = min(self.level, bucket.capacity)
        return bucket


def follow(
    bucket: Bucket | None, limit: int | None, remaining: int | None, burst_s: float, now: float
) -> Bucket | None:
    """The bucket after what the server said: its limit adopted when lower (or none was
    known), never more left than it says remain."""
    if limit is not None and limit > 0:
        if bucket is None:
            bucket = Bucket(limit, burst_s, now)
        elif limit < bucket.per_minute:
            bucket = bucket.replaced(limit, burst_s)
    if bucket is not None and remaining is not None:
        bucket.clamp(remaining, now)
    return bucket


class SlowStart:
    """How many requests may go before a server whose limits are unknown has answered once.

    A first wave of ``FIRST_WAVE`` goes at once, and the number let out doubles every
    ``RAMP_S`` (8, 16, 32, ... in 0, 50, 100 ms ...) until the first answer, whose
    ``x-ratelimit-*`` headers set the limits. A server answering within the ramp is heard
    before most of the run's concurrency goes. Sending one request alone and waiting for its
    answer cost every run a whole latency (at 256 in flight and 500 ms, 5% of a
    5,000-request run; a first request that hung held every other one until its timeout);
    the ramp reaches 256 after 250 ms and costs about 0.2-0.25 s, whatever the latency.
    """

    def __init__(self) -> None:
        self.answered = anyio.Event()
        self._first: float | None = None
        self._let_out = 0

    def wait_s(self, now: float) -> float:
        """0 when one more request may go now (it is counted), else how long until more may."""
        if self.answered.is_set():
            return 0.0
        if self._first is None:
            self._first = now
        elapsed = now - self._first
        doublings = min(math.floor(elapsed / RAMP_S + 1e-9), 32)
        if self._let_out < FIRST_WAVE * 2**doublings:
            self._let_out += 1
            return 0.0
        return (doublings + 1) * RAMP_S - elapsed


class TokenEstimator:
    """Tokens a request will be charged for, learnt from the usage the server reports.

    Providers charge rate-limit tokens as prompt tokens plus ``max_tokens``; our prompt
    count is a cheap guess scaled by the observed ratio of true to guessed tokens.
    """

    def __init__(self) -> None:
        self.prompt_ratio = 1.0
        self.completion_guess = float(_DEFAULT_COMPLETION_GUESS)
        self._samples = 0

    def cost(self, request: ChatRequest) -> int:
        """Estimated rate-limit tokens for ``request``."""
        prompt = math.ceil(request.estimated_prompt_tokens * self.prompt_ratio)
        completion = request.max_tokens if request.max_tokens is not None else self.completion_guess
        return int(prompt + completion)

    @staticmethod
    def charged(request: ChatRequest, prompt_tokens: int, completion_tokens: int) -> int:
        """Tokens the server counted against the limit for an answered request."""
        completion = request.max_tokens if request.max_tokens is not None else completion_tokens
        return prompt_tokens + completion

    def learn(self, request: ChatRequest, prompt_tokens: int, completion_tokens: int) -> None:
        """Fold one answer's usage into the estimate (fast at first, then smoothly)."""
        self._samples += 1
        weight = max(_LEARNING_RATE, 1.0 / self._samples)
        if request.estimated_prompt_tokens > 0:
            ratio = prompt_tokens / request.estimated_prompt_tokens
            self.prompt_ratio += weight * (ratio - self.prompt_ratio)
        self.completion_guess += weight * (completion_tokens - self.completion_guess)


class RateLimiter:
    """Shared by all workers of a run: paces attempts under requests/min and tokens/min."""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        *,
        burst_s: float = DEFAULT_BURST_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._burst_s = burst_s
        now = clock()
        self.requests = Bucket(requests_per_minute, burst_s, now) if requests_per_minute else None
        self.tokens = Bucket(tokens_per_minute, burst_s, now) if tokens_per_minute else None
        self._paused_until = 0.0
        self._epoch = 0
        self._waiting_requests = 0
        self._waiting_tokens = 0
        self._start = SlowStart()
        if self.requests is not None or self.tokens is not None:
            self._start.answered.set()

    def _reserve(self, tokens: int, now: float) -> float:
        """Charge both buckets at the one time both have room; return the wait until then."""
        start = max(now, self._paused_until)
        if self.requests is not None:
            start = max(start, self.requests.ready_at(1, now))
        if self.tokens is not None:
            start = max(start, self.tokens.ready_at(tokens, now))
        if self.requests is not None:
            self.requests.charge(1, start)
        if self.tokens is not None:
            self.tokens.charge(tokens, start)
        return start - now

    async def acquire(self, tokens: int) -> None:
        """Wait for this attempt's turn, paying one request and ``tokens`` tokens.

        With no limit configured, callers go out in a ramp (``SlowStart``) until the first
        answer (``answered``), whose ``x-ratelimit-*`` headers may set the limits: a run
        must not fire its whole concurrency at once at a server whose limits it does not
        know yet.
        """
        while (ramp := self._start.wait_s(self._clock())) > 0:
            await self._until_answered(ramp)
        epoch = self._epoch
        wait = self._reserve(tokens, self._clock())
        while wait > 0:
            self._waiting_requests += 1
            self._waiting_tokens += tokens
            try:
                await self._sleep(wait)
            finally:
                self._waiting_requests -= 1
                self._waiting_tokens -= tokens
            if epoch == self._epoch:
                return
            epoch = self._epoch
            wait = self._reserve(tokens, self._clock())

    async def _until_answered(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the server's first answer arrives before."""
        async with anyio.create_task_group() as group:

            async def timer() -> None:
                await self._sleep(seconds)
                group.cancel_scope.cancel()

            group.start_soon(timer)
            await self._start.answered.wait()
            group.cancel_scope.cancel()

    def settle(self, reserved: int, charged: int) -> None:
        """Correct the token bucket once the true charge is known."""
        if self.tokens is not None and charged != reserved:
            self.tokens.adjust(reserved - charged, self._clock())

    def answered(self, info: RateLimitInfo | None) -> None:
        """An attempt got an answer (or failed): follow the server's headers if it sent any."""
        if info is not None:
            self.observe(info)
        self._start.answered.set()

    def observe(self, info: RateLimitInfo) -> None:
        """Follow the server's own view of its limits."""
        now = self._clock()
        self.requests = follow(
            self.requests, info.limit_requests, info.remaining_requests, self._burst_s, now
        )
        self.tokens = follow(
            self.tokens, info.limit_tokens, info.remaining_tokens, self._burst_s, now
        )

    def cooldown(self, seconds: float) -> None:
        """The server said 429: everyone waits ``seconds``; the refill restarts after the pause
        (from empty at best: the debt of requests already sent is kept)."""
        now = self._clock()
        until = now + seconds
        if until <= self._paused_until:
            return
        self._paused_until = until
        self._epoch += 1
        if self.requests is not None:
            self.requests.pause_until(until, now, self._waiting_requests)
        if self.tokens is not None:
            self.tokens.pause_until(until, now, self._waiting_tokens)

    @property
    def paused_until(self) -> float:
        """Monotonic time before which no attempt starts."""
        return self._paused_until
