"""Tests of the rate limiter, on fake time: no test here ever really sleeps."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.limits import FIRST_WAVE, RAMP_S, Bucket, RateLimiter, SlowStart, TokenEstimator
from pipeline.records import ChatRequest, RateLimitInfo

EPS = 1e-9


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class SteppingClock:
    """For one caller at a time: ``sleep`` just moves the clock forward."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeTime:
    """A virtual clock for many concurrent callers.

    ``sleep`` parks the caller; ``drive`` runs the callers and, whenever every task
    is blocked, jumps the clock to the earliest wake-up and releases that sleeper.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        event = anyio.Event()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), event))
        await event.wait()

    async def drive(self, *tasks: Callable[[], Awaitable[None]]) -> None:
        async with anyio.create_task_group() as group:
            for task in tasks:
                group.start_soon(task)
            while True:
                await anyio.wait_all_tasks_blocked()
                if not self._sleepers:
                    break
                wake, _, event = heapq.heappop(self._sleepers)
                self.now = max(self.now, wake)
                event.set()


def chat_request(estimated: int = 100, max_tokens: int | None = 50) -> ChatRequest:
    return ChatRequest(
        body=b"{}",
        seed=0,
        request_hash="0" * 64,
        estimated_prompt_tokens=estimated,
        max_tokens=max_tokens,
    )


def max_in_window(times: list[float], window: float) -> int:
    """The most start times in any window ``[t, t + window)``; ``window=0``: at one instant."""
    ordered = sorted(times)
    best = 0
    for i, start in enumerate(ordered):
        if window > 0:
            inside = [t for t in ordered[i:] if t < start + window - EPS]
        else:
            inside = [t for t in ordered[i:] if t <= start + EPS]
        best = max(best, len(inside))
    return best


def test_max_in_window() -> None:
    times = [0.0, 0.0, 0.05, 0.15, 0.25, 1.0]
    assert max_in_window(times, 0.0) == 2
    assert max_in_window(times, 0.1) == 3
    assert max_in_window(times, 0.2) == 4
    assert max_in_window(times, 10.0) == 6


# ---- Bucket -----------------------------------------------------------------------------


def test_bucket_rate_and_capacity() -> None:
    bucket = Bucket(600, burst_s=0.25, now=0.0)
    assert bucket.rate == pytest.approx(10.0)
    assert bucket.capacity == pytest.approx(2.5)
    assert bucket.level == pytest.approx(2.5)


def test_bucket_capacity_is_at_least_one() -> None:
    assert Bucket(60, burst_s=0.25, now=0.0).capacity == 1.0
    assert Bucket(1, burst_s=0.25, now=0.0).capacity == 1.0


def test_bucket_reserve_queues_behind_capacity() -> None:
    bucket = Bucket(600, burst_s=0.25, now=0.0)

    waits = [bucket.reserve(1, now=0.0) for _ in range(6)]

    assert waits == pytest.approx([0.0, 0.0, 0.05, 0.15, 0.25, 0.35])
    # the level is kept as of the last reservation's start: empty at 0.35 s
    assert bucket.updated == pytest.approx(0.35)
    assert bucket.level == pytest.approx(0.0)


def test_bucket_refills_continuously_up_to_capacity() -> None:
    bucket = Bucket(600, burst_s=0.25, now=0.0)
    bucket.reserve(2.5, now=0.0)
    assert bucket.level == pytest.approx(0.0)

    bucket.refill(0.1)
    assert bucket.level == pytest.approx(1.0)
    bucket.refill(10.0)
    assert bucket.level == pytest.approx(2.5)


def test_bucket_refill_never_goes_back_in_time() -> None:
    bucket = Bucket(600, burst_s=0.25, now=5.0)
    bucket.reserve(2.5, now=5.0)
    bucket.refill(4.0)
    assert bucket.level == pytest.approx(0.0)
    assert bucket.updated == 5.0


def test_bucket_wait_pays_for_the_reservation() -> None:
    bucket = Bucket(60_000, burst_s=0.25, now=0.0)  # 1000/s, capacity 250
    assert bucket.reserve(250, now=0.0) == 0.0
    # more than the capacity starts once the bucket is full again, then leaves a debt
    assert bucket.reserve(500, now=0.0) == pytest.approx(0.25)
    assert bucket.reserve(100, now=0.2) == pytest.approx(0.4)  # ready at 0.6


def test_bucket_adjust_and_clamp() -> None:
    bucket = Bucket(600, burst_s=0.25, now=0.0)
    bucket.adjust(+100, now=0.0)
    assert bucket.level == pytest.approx(2.5)  # never above capacity
    bucket.adjust(-4, now=0.0)
    assert bucket.level == pytest.approx(-1.5)
    bucket.clamp(5, now=0.0)
    assert bucket.level == pytest.approx(-1.5)  # clamp never adds
    bucket.refill(1.0)
    bucket.clamp(0.5, now=1.0)
    assert bucket.level == pytest.approx(0.5)


def test_bucket_pause_empties_and_delays_refill() -> None:
    bucket = Bucket(600, burst_s=0.25, now=0.0)
    bucket.pause_until(2.0, now=0.0, waiting=0)
    assert bucket.level == pytest.approx(0.0)
    bucket.refill(1.5)
    assert bucket.level == pytest.approx(0.0)
    bucket.refill(2.1)
    assert bucket.level == pytest.approx(1.0)


# ---- RateLimiter pacing -----------------------------------------------------------------


@pytest.mark.anyio
async def test_no_limits_never_waits() -> None:
    time = SteppingClock()
    limiter = RateLimiter(None, None, clock=time.clock, sleep=time.sleep)
    await limiter.acquire(10_000)
    limiter.answered(None)  # the first answer carried no rate-limit headers
    for _ in range(1000):
        await limiter.acquire(10_000)
    assert time.sleeps == []
    assert limiter.requests is None
    assert limiter.tokens is None


@pytest.mark.anyio
async def test_sequential_callers_are_paced() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    starts = []
    for _ in range(60):
        await limiter.acquire(1)
        starts.append(time.now)

    assert starts[:3] == pytest.approx([0.0, 0.0, 0.05])
    assert all(b - a == pytest.approx(0.1) for a, b in itertools.pairwise(starts[3:]))
    assert starts[-1] == pytest.approx(5.75)


@pytest.mark.anyio
async def test_600_rpm_paces_60_concurrent_requests_over_about_6_seconds() -> None:
    time = FakeTime()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    starts: list[float] = []

    async def caller() -> None:
        await limiter.acquire(1)
        starts.append(time.now)

    await time.drive(*[caller] * 60)

    assert len(starts) == 60
    capacity = limiter.requests.capacity if limiter.requests else math.nan
    assert sum(1 for t in starts if t == 0.0) <= capacity  # no minute's quota at once
    assert sum(1 for t in starts if t == 0.0) == 2
    assert 5.5 <= max(starts) <= 6.0
    assert max_in_window(starts, 1.0) <= 10 + capacity
    ordered = sorted(starts)
    assert all(b - a >= 0.1 - EPS for a, b in itertools.pairwise(ordered[2:]))


@pytest.mark.anyio
async def test_token_limit_paces_by_token_cost() -> None:
    time = FakeTime()
    limiter = RateLimiter(None, 60_000, clock=time.clock, sleep=time.sleep)  # 1000 tok/s, burst 250
    starts: dict[int, float] = {}

    def caller(index: int, tokens: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await limiter.acquire(tokens)
            starts[index] = time.now

        return run

    await time.drive(*(caller(i, 100) for i in range(20)))

    # 2000 tokens through a bucket of 250 refilled at 1000/s: the last starts at 1.75 s
    assert max(starts.values()) == pytest.approx(1.75)
    assert sorted(starts.values())[:2] == [0.0, 0.0]
    assert sorted(starts.values())[2] == pytest.approx(0.05)


@pytest.mark.anyio
async def test_token_cost_decides_the_wait() -> None:
    time = SteppingClock()
    limiter = RateLimiter(None, 60_000, clock=time.clock, sleep=time.sleep)

    await limiter.acquire(250)  # the burst
    before = time.now
    await limiter.acquire(2000)
    expensive = time.now - before
    before = time.now
    await limiter.acquire(10)
    cheap = time.now - before

    # the big request starts when the bucket is full; the debt it leaves delays the next
    assert expensive == pytest.approx(0.25)
    assert cheap == pytest.approx(1.76)


@pytest.mark.anyio
async def test_both_limits_the_stricter_wins() -> None:
    time = SteppingClock()
    limiter = RateLimiter(6000, 6000, clock=time.clock, sleep=time.sleep)  # 100 req/s, 100 tok/s
    for _ in range(10):
        await limiter.acquire(50)
    # tokens are the bottleneck: each 50-token request is twice the 25-token capacity,
    # so each starts when the bucket is full again, 0.5 s after the one before
    assert time.now == pytest.approx(4.5)


# ---- settle and observe -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("reserved", "charged", "delta"), [(300, 100, +200), (100, 400, -300), (200, 200, 0)]
)
def test_settle_corrects_the_token_bucket(reserved: int, charged: int, delta: int) -> None:
    time = SteppingClock()
    limiter = RateLimiter(None, 60_000, clock=time.clock, sleep=time.sleep)
    assert limiter.tokens is not None
    limiter.tokens.reserve(1000, now=0.0)  # level -750: room to move both ways
    before = limiter.tokens.level

    limiter.settle(reserved, charged)

    assert limiter.tokens.level == pytest.approx(before + delta)


def test_settle_refund_is_capped_at_capacity() -> None:
    time = SteppingClock()
    limiter = RateLimiter(None, 60_000, clock=time.clock, sleep=time.sleep)
    assert limiter.tokens is not None
    limiter.settle(10_000, 0)
    assert limiter.tokens.level == pytest.approx(limiter.tokens.capacity)


def test_settle_without_a_token_limit_does_nothing() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    limiter.settle(100, 900)
    assert limiter.tokens is None
    assert limiter.requests is not None
    assert limiter.requests.level == pytest.approx(2.5)


@pytest.mark.anyio
async def test_settle_overcharge_delays_the_next_caller() -> None:
    time = SteppingClock()
    limiter = RateLimiter(None, 60_000, clock=time.clock, sleep=time.sleep)
    await limiter.acquire(100)
    limiter.settle(100, 1150)  # 1050 more than reserved: level 150 - 1050 = -900
    await limiter.acquire(100)
    assert time.now == pytest.approx(1.0)


def test_observe_clamps_to_remaining() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, 60_000, clock=time.clock, sleep=time.sleep)
    assert limiter.requests is not None
    assert limiter.tokens is not None

    limiter.observe(RateLimitInfo(remaining_requests=0, remaining_tokens=10))

    assert limiter.requests.level == 0.0
    assert limiter.tokens.level == 10.0
    assert limiter.requests.per_minute == 600  # no limit header: configured limit stays
    assert limiter.tokens.per_minute == 60_000


def test_observe_never_raises_the_level() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    assert limiter.requests is not None
    limiter.requests.reserve(5, now=0.0)
    limiter.observe(RateLimitInfo(remaining_requests=1000))
    assert limiter.requests.level == pytest.approx(-2.5)


@pytest.mark.anyio
async def test_observe_remaining_zero_makes_the_next_caller_wait() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    limiter.observe(RateLimitInfo(remaining_requests=0))
    await limiter.acquire(1)
    assert time.now == pytest.approx(0.1)


def test_observe_adopts_a_lower_server_limit() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, 60_000, clock=time.clock, sleep=time.sleep)

    limiter.observe(RateLimitInfo(limit_requests=120, limit_tokens=6_000))

    assert limiter.requests is not None
    assert limiter.tokens is not None
    assert limiter.requests.per_minute == 120
    assert limiter.requests.rate == pytest.approx(2.0)
    assert limiter.tokens.per_minute == 6_000


def test_observe_ignores_a_higher_server_limit() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, 60_000, clock=time.clock, sleep=time.sleep)
    limiter.observe(RateLimitInfo(limit_requests=10_000, limit_tokens=2_000_000))
    assert limiter.requests is not None
    assert limiter.tokens is not None
    assert limiter.requests.per_minute == 600
    assert limiter.tokens.per_minute == 60_000


def test_observe_adopts_server_limit_when_none_configured() -> None:
    time = SteppingClock()
    limiter = RateLimiter(None, None, clock=time.clock, sleep=time.sleep)
    limiter.observe(RateLimitInfo(limit_requests=300, remaining_requests=1))
    assert limiter.requests is not None
    assert limiter.requests.per_minute == 300
    assert limiter.requests.level == 1.0
    assert limiter.tokens is None


@pytest.mark.anyio
async def test_lower_server_limit_paces_later_callers() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    limiter.observe(RateLimitInfo(limit_requests=60, remaining_requests=0))
    for _ in range(3):
        await limiter.acquire(1)
    assert time.now == pytest.approx(3.0)  # one a second


@pytest.mark.anyio
async def test_lower_server_limit_keeps_callers_already_queued() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    assert limiter.requests is not None
    queued = [limiter.requests.reserve(1, now=0.0) for _ in range(10)]  # callers now sleeping
    assert max(queued) == pytest.approx(0.75)

    limiter.observe(RateLimitInfo(limit_requests=300))
    await limiter.acquire(1)

    assert time.now >= max(queued)


# ---- cooldown ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cooldown_makes_a_new_caller_wait() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    limiter.cooldown(3.0)
    assert limiter.paused_until == 3.0
    await limiter.acquire(1)
    # no burst after a 429: the bucket refills from empty starting at 3.0
    assert time.now == pytest.approx(3.1)
    await limiter.acquire(1)
    assert time.now == pytest.approx(3.2)


@pytest.mark.anyio
async def test_cooldown_without_limits_still_pauses() -> None:
    time = SteppingClock()
    limiter = RateLimiter(None, None, clock=time.clock, sleep=time.sleep)
    limiter.cooldown(2.0)
    await limiter.acquire(1)
    assert time.now == pytest.approx(2.0)


@pytest.mark.anyio
async def test_without_limits_a_first_wave_goes_then_doubles_until_an_answer() -> None:
    time = FakeTime()
    limiter = RateLimiter(None, None, clock=time.clock, sleep=time.sleep)
    starts: list[float] = []

    async def caller() -> None:
        await limiter.acquire(100)
        starts.append(time.now)

    await time.drive(*[caller] * 100)

    def by(t: float) -> int:
        return sum(1 for s in starts if s <= t + EPS)

    assert by(0.0) == FIRST_WAVE
    assert [by(k * RAMP_S) for k in range(1, 5)] == [16, 32, 64, 100]
    assert by(RAMP_S - 0.001) == FIRST_WAVE


@pytest.mark.anyio
async def test_the_first_answer_ends_the_ramp_and_its_headers_set_the_limits() -> None:
    time = FakeTime()
    limiter = RateLimiter(None, None, clock=time.clock, sleep=time.sleep)
    starts: list[float] = []
    answer_at = RAMP_S * 1.5

    async def caller() -> None:
        await limiter.acquire(100)
        starts.append(time.now)

    async def server() -> None:
        await time.sleep(answer_at)
        limiter.answered(RateLimitInfo(limit_requests=600, remaining_requests=1))

    await time.drive(server, *[caller] * 40)

    assert limiter.requests is not None
    assert limiter.requests.per_minute == 600
    ordered = sorted(starts)
    assert ordered[: 2 * FIRST_WAVE] == [0.0] * FIRST_WAVE + [RAMP_S] * FIRST_WAVE
    after = ordered[2 * FIRST_WAVE :]
    assert after[0] == pytest.approx(answer_at)  # the one request the server said was left
    assert all(b - a >= 0.1 - EPS for a, b in itertools.pairwise(after))  # then 10/s


@pytest.mark.anyio
async def test_an_answer_without_headers_lets_everyone_go() -> None:
    time = SteppingClock()
    limiter = RateLimiter(None, None, clock=time.clock, sleep=time.sleep)
    for _ in range(FIRST_WAVE):
        await limiter.acquire(100)
    limiter.answered(None)
    for _ in range(100):
        await limiter.acquire(100)
    assert time.now == 0.0


def test_shorter_cooldown_does_not_shorten_a_pause() -> None:
    time = SteppingClock()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    limiter.cooldown(5.0)
    limiter.cooldown(1.0)
    assert limiter.paused_until == 5.0


async def _cooldown_while_callers_sleep(callers: int) -> tuple[list[float], float]:
    """``callers`` at t=0 under 600 rpm; a 429 at t=0.1 pauses for 1 s. Returns start times."""
    time = FakeTime()
    limiter = RateLimiter(600, None, clock=time.clock, sleep=time.sleep)
    starts: list[float] = []

    async def caller() -> None:
        await limiter.acquire(1)
        starts.append(time.now)

    async def server_says_429() -> None:
        await time.sleep(0.1)
        limiter.cooldown(1.0)

    await time.drive(*[caller] * callers, server_says_429)
    return starts, limiter.paused_until


@pytest.mark.anyio
async def test_cooldown_makes_sleeping_callers_wait_too() -> None:
    starts, until = await _cooldown_while_callers_sleep(10)

    assert until == pytest.approx(1.1)
    assert len(starts) == 10
    early = [t for t in starts if t < 0.1]
    assert early == pytest.approx([0.0, 0.0, 0.05])  # started before the 429
    later = [t for t in starts if t >= 0.1]
    assert len(later) == 7
    assert all(t >= until - EPS for t in later)


@pytest.mark.anyio
async def test_cooldown_requeued_callers_do_not_start_at_once() -> None:
    starts, until = await _cooldown_while_callers_sleep(10)

    later = sorted(t for t in starts if t >= until - EPS)
    assert len(later) == 7
    # after the pause the bucket refills from empty at 10/s: one start per 0.1 s
    assert max_in_window(later, 0.0) <= 1
    assert all(b - a >= 0.1 - EPS for a, b in itertools.pairwise(later))


# ---- TokenEstimator ---------------------------------------------------------------------


def test_estimator_starts_from_the_guess() -> None:
    estimator = TokenEstimator()
    assert estimator.cost(chat_request(estimated=100, max_tokens=50)) == 150
    assert estimator.cost(chat_request(estimated=100, max_tokens=None)) == 100 + 256


def test_estimator_learns_the_prompt_ratio() -> None:
    estimator = TokenEstimator()
    request = chat_request(estimated=100, max_tokens=50)

    estimator.learn(request, prompt_tokens=200, completion_tokens=20)
    assert estimator.prompt_ratio == pytest.approx(2.0)  # first sample: taken whole
    assert estimator.cost(request) == 250

    estimator.learn(request, prompt_tokens=100, completion_tokens=20)
    assert estimator.prompt_ratio == pytest.approx(1.5)  # second: averaged

    for _ in range(500):
        estimator.learn(request, prompt_tokens=130, completion_tokens=20)
    assert estimator.prompt_ratio == pytest.approx(1.3, rel=1e-3)
    assert estimator.cost(request) in (130 + 50, 131 + 50)  # prompt tokens are rounded up


def test_estimator_learns_completion_length_when_max_tokens_unset() -> None:
    estimator = TokenEstimator()
    request = chat_request(estimated=100, max_tokens=None)
    for _ in range(300):
        estimator.learn(request, prompt_tokens=100, completion_tokens=40)
    assert estimator.completion_guess == pytest.approx(40, abs=0.5)
    assert estimator.cost(request) in (140, 141)


def test_estimator_ignores_zero_estimates_for_the_ratio() -> None:
    estimator = TokenEstimator()
    estimator.learn(chat_request(estimated=0), prompt_tokens=50, completion_tokens=1)
    assert estimator.prompt_ratio == 1.0


def test_charged_uses_max_tokens_when_set() -> None:
    assert TokenEstimator.charged(chat_request(max_tokens=50), 120, 7) == 170
    assert TokenEstimator.charged(chat_request(max_tokens=None), 120, 7) == 127


# ---- property: no window ever sees more than rate * W + capacity ------------------------


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.integers(min_value=30, max_value=6000),
    tpm=st.none() | st.integers(min_value=1000, max_value=100_000),
    burst_s=st.floats(min_value=0.01, max_value=2.0),
    arrivals=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.5), st.integers(min_value=1, max_value=500)),
        min_size=1,
        max_size=40,
    ),
    window=st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.5, 10.0]),
)
def test_requests_in_any_window_stay_within_rate_and_capacity(
    rpm: int,
    tpm: int | None,
    burst_s: float,
    arrivals: list[tuple[float, int]],
    window: float,
) -> None:
    time = FakeTime()
    limiter = RateLimiter(rpm, tpm, burst_s=burst_s, clock=time.clock, sleep=time.sleep)
    assert limiter.requests is not None
    rate, capacity = limiter.requests.rate, limiter.requests.capacity
    starts: list[float] = []

    def caller(arrive_at: float, tokens: int) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await time.sleep(arrive_at)
            await limiter.acquire(tokens)
            starts.append(time.now)

        return run

    offsets = list(itertools.accumulate(gap for gap, _ in arrivals))
    tasks = [caller(at, tokens) for at, (_, tokens) in zip(offsets, arrivals, strict=True)]
    anyio.run(time.drive, *tasks, backend="asyncio")

    assert len(starts) == len(arrivals)
    assert max_in_window(starts, window) <= rate * window + capacity + 1e-6


def test_a_pause_keeps_the_debt_of_requests_already_sent() -> None:
    bucket = Bucket(60_000, burst_s=0.25, now=0.0)  # 1000 tokens/s, capacity 250
    assert bucket.reserve(5000, now=0.0) == 0.0  # sent: a 4750-token debt
    bucket.pause_until(1.0, now=0.5, waiting=0)
    # the debt (4750 - 500 refilled by 0.5 s) is not forgiven by the pause
    assert bucket.reserve(250, now=1.0) == pytest.approx(4.25 + 0.25)


def test_a_pause_gives_back_what_sleeping_callers_had_reserved() -> None:
    bucket = Bucket(600, burst_s=0.25, now=0.0)  # 10/s, capacity 2.5
    for _ in range(6):
        bucket.reserve(1, now=0.0)  # 2 sent now, 4 asleep until 0.05 .. 0.35
    bucket.pause_until(1.0, now=0.1, waiting=4)
    assert bucket.level == pytest.approx(0.0)
    assert bucket.reserve(1, now=0.1) == pytest.approx(1.0)  # first after the pause: 1.1 s


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=300))
def test_slow_start_never_lets_out_more_than_the_ramp(gaps: list[float]) -> None:
    ramp = SlowStart()
    now, let_out = 0.0, 0
    first = gaps[0]
    for gap in gaps:
        now += gap
        wait = ramp.wait_s(now)
        if wait == 0.0:
            let_out += 1
        else:
            next_step = now + wait  # lands on the next doubling
            assert math.isclose((next_step - first) / RAMP_S, round((next_step - first) / RAMP_S))
        allowed = FIRST_WAVE * 2 ** math.floor((now - first) / RAMP_S + 1e-9)
        assert let_out <= allowed
    assert let_out >= min(len(gaps), FIRST_WAVE)  # the first wave goes at once
