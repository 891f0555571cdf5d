"""Tests of the retry policy, with a recording fake sleep: nothing really waits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tenacity import RetryCallState

from pipeline.errors import (
    AuthFailed,
    BadRequest,
    BadResponse,
    ConnectionFailed,
    FatalError,
    NotFound,
    RateLimited,
    RequestTimeout,
    RetryableError,
    ServerError,
)
from pipeline.retry import make_retrying
from pipeline.spec import RetrySpec


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Recorder:
    """A fake ``sleep`` that only writes down how long it was asked to wait."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def failing(
    error: BaseException, *, succeed_on: int | None = None
) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    """An attempt function raising ``error`` (until attempt ``succeed_on``), and its call log."""
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls) + 1)
        if succeed_on is not None and len(calls) >= succeed_on:
            return "ok"
        raise error

    return attempt, calls


async def run(
    spec: RetrySpec, attempt: Callable[[], Awaitable[Any]], sleep: Recorder, **kwargs: Any
) -> Any:
    retrying = make_retrying(spec, sleep=sleep, **kwargs)
    return await retrying(attempt)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        RateLimited("HTTP 429", http_status=429),
        ServerError("HTTP 503", http_status=503),
        RequestTimeout("timed out"),
        ConnectionFailed("connection failed: reset"),
        BadResponse("response has no choices", http_status=200),
    ],
)
async def test_retryable_error_is_retried_up_to_max_attempts_then_reraised(
    error: RetryableError,
) -> None:
    sleep = Recorder()
    attempt, calls = failing(error)

    with pytest.raises(type(error)) as info:
        await run(
            RetrySpec(max_attempts=4, initial_backoff_s=0.5, max_backoff_s=8.0), attempt, sleep
        )

    assert info.value is error  # re-raised as is, not wrapped in tenacity's RetryError
    assert calls == [1, 2, 3, 4]
    assert len(sleep.sleeps) == 3


@pytest.mark.anyio
async def test_success_after_retries_returns_the_result() -> None:
    sleep = Recorder()
    attempt, calls = failing(ServerError("HTTP 500", http_status=500), succeed_on=3)

    result = await run(RetrySpec(max_attempts=6), attempt, sleep)

    assert result == "ok"
    assert calls == [1, 2, 3]
    assert len(sleep.sleeps) == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "error",
    [
        BadRequest("HTTP 400", http_status=400),
        AuthFailed("HTTP 401", http_status=401),
        NotFound("HTTP 404", http_status=404),
        FatalError("HTTP 418", http_status=418),
    ],
)
async def test_fatal_error_is_not_retried(error: FatalError) -> None:
    sleep = Recorder()
    attempt, calls = failing(error)

    with pytest.raises(type(error)) as info:
        await run(RetrySpec(max_attempts=6), attempt, sleep)

    assert info.value is error
    assert calls == [1]
    assert sleep.sleeps == []


@pytest.mark.anyio
@pytest.mark.parametrize("error", [ValueError("a bug"), KeyError("choices"), TypeError("a bug")])
async def test_a_bug_is_not_retried(error: Exception) -> None:
    sleep = Recorder()
    attempt, calls = failing(error)

    with pytest.raises(type(error)):
        await run(RetrySpec(max_attempts=6), attempt, sleep)

    assert calls == [1]
    assert sleep.sleeps == []


@pytest.mark.anyio
async def test_one_attempt_means_no_retry() -> None:
    sleep = Recorder()
    attempt, calls = failing(ServerError("HTTP 500"))

    with pytest.raises(ServerError):
        await run(RetrySpec(max_attempts=1), attempt, sleep)

    assert calls == [1]
    assert sleep.sleeps == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("retry_after_s", "expected"),
    [(2.5, 2.5), (0.0, 0.0), (-3.0, 0.0), (60.0, 60.0), (3600.0, 60.0)],
)
async def test_retry_after_is_honoured_and_capped(retry_after_s: float, expected: float) -> None:
    sleep = Recorder()
    attempt, _ = failing(RateLimited("HTTP 429", http_status=429, retry_after_s=retry_after_s))

    with pytest.raises(RateLimited):
        await run(
            RetrySpec(max_attempts=4, initial_backoff_s=1.0, max_backoff_s=60.0), attempt, sleep
        )

    assert sleep.sleeps == [expected] * 3


@pytest.mark.anyio
async def test_retry_after_on_any_retryable_error_is_honoured() -> None:
    sleep = Recorder()
    attempt, _ = failing(ServerError("HTTP 503", http_status=503, retry_after_s=7.0))

    with pytest.raises(ServerError):
        await run(
            RetrySpec(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=60.0), attempt, sleep
        )

    assert sleep.sleeps == [7.0, 7.0]


@pytest.mark.anyio
async def test_backoff_is_full_jitter_within_exponential_bounds() -> None:
    spec = RetrySpec(max_attempts=10, initial_backoff_s=0.5, max_backoff_s=20.0)
    waits_by_retry: list[list[float]] = [[] for _ in range(spec.max_attempts - 1)]
    for _ in range(200):
        sleep = Recorder()
        attempt, _ = failing(ConnectionFailed("connection failed"))
        with pytest.raises(ConnectionFailed):
            await run(spec, attempt, sleep)
        assert len(sleep.sleeps) == spec.max_attempts - 1
        for index, wait in enumerate(sleep.sleeps):
            waits_by_retry[index].append(wait)

    for index, waits in enumerate(waits_by_retry):
        ceiling = min(spec.max_backoff_s, spec.initial_backoff_s * 2**index)
        assert all(0.0 <= wait <= ceiling for wait in waits), (index, max(waits), ceiling)
        # full jitter: spread over the whole window, not pinned to its top
        assert min(waits) < 0.25 * ceiling
        assert max(waits) > 0.75 * ceiling
    assert max(max(waits) for waits in waits_by_retry) <= spec.max_backoff_s


@pytest.mark.anyio
async def test_on_retry_sees_each_retry() -> None:
    sleep = Recorder()
    seen: list[tuple[int, str]] = []

    def on_retry(state: RetryCallState) -> None:
        assert state.outcome is not None
        error = state.outcome.exception()
        assert isinstance(error, RetryableError)
        seen.append((state.attempt_number, error.error_type))

    attempt, _ = failing(RateLimited("HTTP 429", retry_after_s=1.0), succeed_on=3)
    assert await run(RetrySpec(max_attempts=5), attempt, sleep, on_retry=on_retry) == "ok"

    assert seen == [(1, "rate_limited"), (2, "rate_limited")]


@pytest.mark.anyio
async def test_copies_are_independent() -> None:
    sleep = Recorder()
    retrying = make_retrying(RetrySpec(max_attempts=2), sleep=sleep)
    for _ in range(3):
        attempt, calls = failing(ServerError("HTTP 500"), succeed_on=2)
        assert await retrying.copy()(attempt) == "ok"
        assert calls == [1, 2]


@pytest.mark.anyio
async def test_attempts_takes_its_own_on_retry_in_place_of_the_policys() -> None:
    sleep = Recorder()
    policy_saw: list[int] = []
    call_saw: list[int] = []
    retrying = make_retrying(
        RetrySpec(max_attempts=3),
        sleep=sleep,
        on_retry=lambda state: policy_saw.append(state.attempt_number),
    )
    attempt, calls = failing(ServerError("HTTP 500"), succeed_on=3)

    result = await retrying.attempts(lambda state: call_saw.append(state.attempt_number), attempt)

    assert result == "ok"
    assert (calls, call_saw, policy_saw) == ([1, 2, 3], [1, 2], [])
    assert len(sleep.sleeps) == 2
