"""Senders: a request in, a reply (or the attempt error that ended it) out.

A sender settles everything an attempt touches: the rate limits, the budget, the
row's ledger (attempts, usage, cost, possibly-billed attempts). The live sender does
it one HTTP request at a time::

    retry( in-flight slot ▸ budget ▸ limiter ▸ client ▸ settle )

Batch mode (``pipeline.runner.batch``) sends whole files through a provider's Batch
API instead; it builds rows with the same ``RequestPreparer`` and ends them through the
same ``outcome`` functions, so both ways write the same rows.
"""

from __future__ import annotations

from collections import deque
from functools import partial
from typing import Protocol

import anyio
import structlog
from tenacity import RetryCallState

from pipeline.budget import Budget
from pipeline.client import ChatClient
from pipeline.concurrency import AdaptiveLimit
from pipeline.cost import attempt_ceiling, possibly_billed, reply_cost
from pipeline.errors import AttemptError, NotSent, RateLimited, StaleConnection
from pipeline.limits import RateLimiter, TokenEstimator
from pipeline.prices import PriceTable
from pipeline.records import ChatRequest, Ended, Ledger, Reply, RunStats
from pipeline.retry import make_retrying
from pipeline.runner.control import RefusalWatch, RunControl, Stopped
from pipeline.spec import RetrySpec

log = structlog.get_logger("pipeline")

STORM_WINDOW = 50
"""Answers looked back on to tell a spent limit from a stray 429 (no headers to say)."""
STORM_SHARE = 0.2
"""Share of 429s among them from which every worker pauses."""
STORM_MIN = 3
"""Fewest 429s among them that pause every worker."""

RESEND_UNSENT = 3
"""Times a request that never left the client is sent again at once, within one attempt."""


class Sender(Protocol):
    """Turns one request into a reply, recording what it cost in ``ledger``."""

    async def send(self, row_id: str, request: ChatRequest, ledger: Ledger) -> Reply:
        """The reply; raises the ``AttemptError`` that ended the request, or ``Stopped``."""
        ...


class LiveSender:
    """Sends each request over HTTP under the concurrency limit, the rate limits and the
    budget, with retries; shared by all workers of a run (one event loop).

    ``concurrency`` is a fixed number of slots, or an ``AdaptiveLimit`` (``concurrency =
    "auto"``) that hears how each attempt on the wire went.
    """

    def __init__(
        self,
        client: ChatClient,
        *,
        concurrency: int | AdaptiveLimit,
        limiter: RateLimiter,
        budget: Budget | None,
        prices: PriceTable,
        retry: RetrySpec,
        stats: RunStats,
        control: RunControl,
        gateway: bool = False,
    ) -> None:
        self._client = client
        self._gateway = gateway
        self._adaptive: AdaptiveLimit | None = None
        self._in_flight: anyio.Semaphore | AdaptiveLimit
        if isinstance(concurrency, AdaptiveLimit):
            self._adaptive = self._in_flight = concurrency
        else:
            # fast_acquire: a free slot is taken without a trip round the event loop
            self._in_flight = anyio.Semaphore(concurrency, fast_acquire=True)
        self._limiter = limiter
        self._estimator = TokenEstimator()
        self._budget = budget
        self._prices = prices
        self._retry = retry
        self._retrying = make_retrying(retry)
        self._stats = stats
        self._control = control
        self._refusals = RefusalWatch(control)
        self._recent: deque[bool] = deque(maxlen=STORM_WINDOW)
        """Whether each of the last answers was a 429 without rate-limit headers."""

    async def send(self, row_id: str, request: ChatRequest, ledger: Ledger) -> Reply:
        """One request through retry, slot, budget, limiter and client."""
        try:
            reply = await self._retrying.attempts(
                partial(_log_retry, row_id), self._attempt, request, ledger
            )
        except AttemptError as exc:
            self._refusals.failed(exc)
            raise
        return reply

    async def _attempt(self, request: ChatRequest, ledger: Ledger) -> Reply:
        """One attempt: hold an in-flight slot, reserve its cost, pay the rate limiter, send.

        The budget and the limiter are paid only once the slot is held, right before
        sending, so a reservation never goes stale while waiting for a slot.
        """
        self._control.check()
        tokens = self._estimator.cost(request)
        reserved = 0.0
        try:
            async with self._in_flight:
                self._control.check()
                reserved = self._reserve(request)
                await self._limiter.acquire(tokens)
                if self._control.is_stopping:
                    self._release(reserved)
                    raise Stopped
                ledger.sent()
                reply = await self._send_until_it_leaves(request, ledger)
        except AttemptError as exc:
            self._settle_failure(exc, tokens, reserved, ledger)
            raise
        self._settle_answer(request, reply, tokens, reserved, ledger)
        return reply

    async def _send_until_it_leaves(self, request: ChatRequest, ledger: Ledger) -> Reply:
        """Send; a request that never left the client (``NotSent``), or whose reused
        connection closed at once (``StaleConnection``, possibly billed), goes again at once
        on another connection, without a backoff or a new attempt (up to ``RESEND_UNSENT``)."""
        for resend in range(RESEND_UNSENT + 1):
            if resend:
                ledger.sent()  # a request all the same (never possibly billed)
            self._stats.count_request()
            try:
                return await self._send_once(request)
            except (NotSent, StaleConnection) as exc:
                if resend == RESEND_UNSENT:
                    raise
                if possibly_billed(exc, gateway=self._gateway):
                    ledger.lost()
                log.info("request.resent", reason=exc.message, resend=resend + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_once(self, request: ChatRequest) -> Reply:
        """One HTTP request; with an adaptive limit, measured."""
        if self._adaptive is None:
            return await self._client.send(request)
        return await self._send_measured(self._adaptive, request)

    async def _send_measured(self, limit: AdaptiveLimit, request: ChatRequest) -> Reply:
        """Send, telling the adaptive limit how long it took and how it ended."""
        sent = limit.sending()
        try:
            reply = await self._client.send(request)
        except AttemptError as exc:
            limit.finished(sent, None, exc)
            raise
        except BaseException:
            limit.abandoned()
            raise
        limit.finished(sent, reply.usage.completion_tokens, None)
        return reply

    def _reserve(self, request: ChatRequest) -> float:
        """Reserve the attempt's cost ceiling under the budget; stop the run when it does not fit."""
        if self._budget is None:
            return 0.0
        price = self._prices.resolve(request.model) if request.model else None
        if price is None:
            self._control.stop(
                Ended.BUDGET,
                f"model {request.model!r} has no known price, and limits.max_cost_usd needs one",
            )
            raise Stopped
        estimator = self._estimator
        completion = (
            request.max_tokens if request.max_tokens is not None else estimator.completion_guess
        )
        amount = attempt_ceiling(
            price, request.estimated_prompt_tokens * estimator.prompt_ratio, completion
        )
        if not self._budget.reserve(amount):
            self._control.stop(Ended.BUDGET, self._budget.refusal(amount))
            raise Stopped
        return amount

    def _release(self, reserved: float) -> None:
        if self._budget is not None:
            self._budget.release(reserved)

    def _settle_failure(
        self, exc: AttemptError, tokens: int, reserved: float, ledger: Ledger
    ) -> None:
        """A failed attempt: give the budget and the reserved tokens back (no usage was
        reported: a rejected request must not hold the tokens-per-minute bucket), note
        what the server said of its limits."""
        self._release(reserved)
        if possibly_billed(exc, gateway=self._gateway):
            ledger.lost()
        self._limiter.answered(exc.rate_limits)
        self._limiter.settle(tokens, 0)
        if isinstance(exc, RateLimited) and self._pauses_everyone(exc, tokens):
            pause = min(
                exc.retry_after_s or self._retry.initial_backoff_s, self._retry.max_backoff_s
            )
            self._limiter.cooldown(pause)
            log.info("rate_limit.pause", seconds=pause, error=exc.message)

    def _pauses_everyone(self, exc: RateLimited, tokens: int) -> bool:
        """Whether a 429 means the shared limit is spent (every worker pauses) or is a stray
        one (only this request backs off, honouring its Retry-After).

        With ``x-ratelimit-remaining-*`` headers the server says which: everyone pauses
        only when a reported bucket cannot take this request. Without them, everyone pauses
        when 429s are at least ``STORM_SHARE`` of the last ``STORM_WINDOW`` answers (a
        spent limit refuses most requests; a stray 429 is one among many answers).
        """
        info = exc.rate_limits
        if info is not None and (
            info.remaining_requests is not None or info.remaining_tokens is not None
        ):
            requests_out = info.remaining_requests is not None and info.remaining_requests < 1
            tokens_out = info.remaining_tokens is not None and info.remaining_tokens < tokens
            return requests_out or tokens_out
        self._recent.append(True)
        refused = sum(self._recent)
        return refused >= STORM_MIN and refused >= STORM_SHARE * len(self._recent)

    def _settle_answer(
        self, request: ChatRequest, reply: Reply, tokens: int, reserved: float, ledger: Ledger
    ) -> None:
        """An answer: correct the limiter and the estimate from its usage, price it."""
        self._recent.append(False)
        self._limiter.answered(reply.rate_limits)
        self._refusals.answered()
        usage = reply.usage
        if usage.prompt_tokens is not None and usage.completion_tokens is not None:
            charged = self._estimator.charged(request, usage.prompt_tokens, usage.completion_tokens)
            self._limiter.settle(tokens, charged)
            self._estimator.learn(request, usage.prompt_tokens, usage.completion_tokens)
        usd = reply_cost(self._prices.lookup(reply.model, request.model), usage)
        ledger.answered(usage, usd)
        if self._budget is not None:
            self._budget.settle(reserved, usd)


def _log_retry(row_id: str, state: RetryCallState) -> None:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    sleep_s = state.next_action.sleep if state.next_action is not None else 0.0
    log.info(
        "request.retry",
        id=row_id,
        attempt=state.attempt_number,
        sleep_s=round(sleep_s, 3),
        error_type=getattr(exc, "error_type", None),
        http_status=getattr(exc, "http_status", None),
        error=getattr(exc, "message", None),
    )
