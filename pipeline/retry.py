"""Which failures are retried, and how long to wait before the next attempt.

Composed from tenacity's named strategies: stop after ``max_attempts``; retry only
``RetryableError`` (a bug or a fatal answer is never retried); wait for the server's
``Retry-After`` when it gave one, else exponential backoff with full jitter, both
capped at ``max_backoff_s``. ``sleep`` is a parameter so tests run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from pipeline.errors import AttemptError, RetryableError
from pipeline.spec import RetrySpec

Sleep = Callable[[float], Awaitable[None]]
OnRetry = Callable[[RetryCallState], None]


class wait_retry_after_or(wait_base):  # noqa: N801 - tenacity's naming for strategies
    """The server's ``Retry-After`` when the failure carries one, else ``fallback``; capped."""

    def __init__(self, fallback: wait_base, cap_s: float) -> None:
        self.fallback = fallback
        self.cap_s = cap_s

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(exc, AttemptError) and exc.retry_after_s is not None:
            return min(max(exc.retry_after_s, 0.0), self.cap_s)
        return min(float(self.fallback(retry_state)), self.cap_s)


def make_retrying(
    spec: RetrySpec, *, on_retry: OnRetry | None = None, sleep: Sleep = anyio.sleep
) -> AsyncRetrying:
    """A retry policy for one row's attempts (``.copy()`` it per row)."""
    return AsyncRetrying(
        stop=stop_after_attempt(spec.max_attempts),
        wait=wait_retry_after_or(
            wait_random_exponential(multiplier=spec.initial_backoff_s, max=spec.max_backoff_s),
            cap_s=spec.max_backoff_s,
        ),
        retry=retry_if_exception_type(RetryableError),
        before_sleep=on_retry,
        sleep=sleep,
        reraise=True,
    )
