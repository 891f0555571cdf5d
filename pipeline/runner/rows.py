"""One input row -> its outcomes: build, reuse, send under the limits with retries, parse, price.

Per model of the row: build the request (bad input -> an error row, nothing sent);
reuse an earlier run's result for the same (id, request hash); else send through
retry(in-flight slot > budget > rate limiter > client), and in JSON mode parse the
answer and re-ask on an unusable one. Every attempt that returns usage is priced.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import orjson
import structlog
from tenacity import AsyncRetrying, RetryCallState

from pipeline.budget import Budget
from pipeline.client import ChatClient
from pipeline.cost import RowCost, attempt_ceiling, possibly_billed, reply_cost
from pipeline.errors import (
    AnswerError,
    AttemptError,
    AuthFailed,
    BadRowError,
    NotFound,
    RateLimited,
)
from pipeline.limits import RateLimiter, TokenEstimator
from pipeline.prices import PriceTable
from pipeline.records import ChatRequest, Ended, Outcome, PromptRow, Reply, RunStats
from pipeline.requests import RequestBuilder, split_headers
from pipeline.results import DoneIndex, completion_key
from pipeline.retry import make_retrying
from pipeline.runner.plan import RunPlan, models_of
from pipeline.structured import Extraction

log = structlog.get_logger("pipeline")

FATAL_STREAK = 5
"""Consecutive 401/403/404 answers after which the run stops sending."""


class Stopped(Exception):
    """Raised inside a row when the run is stopping: the row is left for the next run."""


def _now() -> datetime:
    return datetime.now(UTC)


def _plus(total: int | None, more: int | None) -> int | None:
    """Add token counts; None only while nothing was reported."""
    if more is None:
        return total
    return more if total is None else total + more


class RowProcessor:
    """Turns rows into outcomes for one run; shared by all workers (one event loop)."""

    def __init__(
        self,
        plan: RunPlan,
        stats: RunStats,
        *,
        prices: PriceTable,
        retry_errors: bool,
        stop: Callable[[Ended, str], None],
        stopping: anyio.Event,
    ) -> None:
        job = plan.job
        self.plan = plan
        self.stats = stats
        self.prices = prices
        self.retry_errors = retry_errors
        self.stop = stop
        self._stopping = stopping
        self.source_name = str(plan.input_path)
        self.extraction: Extraction | None = plan.extraction
        self.static_headers, header_templates = split_headers(job.endpoint.headers)
        self.builder = RequestBuilder(
            job.request,
            prompt_column=job.input.prompt_column,
            messages_column=job.input.messages_column,
            response_format=self.extraction.response_format() if self.extraction else None,
            headers=header_templates,
        )
        self.models = models_of(job)
        self.limiter = RateLimiter(job.limits.requests_per_minute, job.limits.tokens_per_minute)
        self.estimator = TokenEstimator()
        self.in_flight = anyio.Semaphore(job.limits.concurrency)
        self.retrying = make_retrying(job.retry)
        self.done: DoneIndex | None = None
        self.budget: Budget | None = None
        self.client: ChatClient | None = None
        self._fatal_streak = 0
        extraction = self.extraction
        local_schema = (
            extraction is not None
            and extraction.mode == "json_object"
            and extraction.schema is not None
        )
        self._hash_salt = (
            orjson.dumps(extraction.schema, option=orjson.OPT_SORT_KEYS)
            if local_schema and extraction
            else None
        )

    async def _build(self, row: PromptRow, model: str | None, reask: int = 0) -> ChatRequest:
        """The row's request; built in a thread when that may read a file (images).

        When answers are validated against a schema that is not sent (``json_object`` with
        ``json_schema``), the request hash also covers that schema, so a resumed run does
        not reuse answers checked against another schema.
        """
        if self.builder.reads_files:
            request = await anyio.to_thread.run_sync(self.builder.build, row, model, reask)
        else:
            request = self.builder.build(row, model, reask)
        if self._hash_salt is not None:
            salted = hashlib.sha256(request.request_hash.encode() + self._hash_salt).hexdigest()
            request = dataclasses.replace(request, request_hash=salted)
        return request

    def _reuse(self, row: PromptRow, seq: int, request: ChatRequest) -> bool:
        """Whether an earlier run already finished this row with this exact request."""
        if self.done is None:
            return False
        index = self.done.find(
            completion_key(row.id, request.request_hash), retry_errors=self.retry_errors
        )
        if index is None:
            return False
        self.done.carry(index, seq)
        self.stats.count_reused(ok=self.done.ok(index), error_type=self.done.error_type(index))
        return True

    async def process(
        self, row: PromptRow, index: int = 0, model: str | None = None
    ) -> Outcome | None:
        """The outcome of one row for one model; None when an earlier run already has it."""
        started = _now()
        seq = row.seq * len(self.models) + index
        try:
            request = await self._build(row, model)
        except BadRowError as exc:
            return Outcome(
                seq=seq,
                id=row.id,
                status="error",
                started_at=started,
                finished_at=started,
                attempts=0,
                model=model or self.plan.job.request.model,
                error_type=exc.error_type,
                error_message=f"{row.where(self.source_name)}: {exc}",
                keep=row.keep,
                extra=self._json_columns(None, 0),
            )
        if self._reuse(row, seq, request):
            return None
        if self.extraction is not None:
            return await self._extract(row, seq, request, started, self.extraction)
        attempts = [0]
        bill = RowCost()
        try:
            reply = await self._send(row.id, request, attempts, bill)
        except AttemptError as exc:
            return self._failed(row, seq, request, started, attempts[0], exc, bill)
        return self._answered(row, seq, request, reply, started, attempts[0], bill)

    def _answered(
        self,
        row: PromptRow,
        seq: int,
        request: ChatRequest,
        reply: Reply,
        started: datetime,
        attempts: int,
        bill: RowCost,
        **overrides: Any,
    ) -> Outcome:
        """The outcome of a request that got an answer (``overrides`` set JSON-mode fields)."""
        fields: dict[str, Any] = {
            "seq": seq,
            "id": row.id,
            "status": "ok",
            "started_at": started,
            "finished_at": _now(),
            "attempts": attempts,
            "seed": request.seed,
            "request_hash": request.request_hash,
            "content": reply.content,
            "finish_reason": reply.finish_reason,
            "model": reply.model,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.total_tokens,
            "latency_ms": reply.latency_ms,
            "http_status": reply.http_status,
            "system_fingerprint": reply.system_fingerprint,
            "response_id": reply.response_id,
            "choices": reply.choices,
            "tool_calls": reply.tool_calls,
            "ttft_ms": reply.ttft_ms,
            "keep": row.keep,
            "cost_usd": bill.usd,
            "cached_tokens": reply.cached_tokens,
            "reasoning_tokens": reply.reasoning_tokens,
            "possibly_billed_attempts": bill.possibly_billed,
        }
        fields.update(overrides)
        return Outcome(**fields)

    def _note_fatal(self, exc: AttemptError) -> None:
        """Stop the run when the endpoint refuses everything (bad key, unknown model or path)."""
        if not isinstance(exc, AuthFailed | NotFound):
            self._fatal_streak = 0
            return
        self._fatal_streak += 1
        model_missing = isinstance(exc, NotFound) and "model" in exc.message.lower()
        if model_missing or self._fatal_streak >= FATAL_STREAK:
            self.stop(Ended.ABORTED, f"the endpoint refuses every request: {exc.message}")

    async def _extract(
        self,
        row: PromptRow,
        seq: int,
        request: ChatRequest,
        started: datetime,
        extraction: Extraction,
    ) -> Outcome:
        """JSON mode: send, parse; re-ask (new seed) on an unusable answer, up to ``json_retries`` times.

        Token counts add up every answer received for the row; ``seed`` and the reply
        columns are those of the last request, ``request_hash`` that of the first (the
        row's identity: what a resumed run looks up).
        """
        retries = self.plan.job.request.json_retries
        base_hash = request.request_hash
        attempts = [0]
        bill = RowCost()
        tokens: tuple[int | None, ...] = (None, None, None, None, None)
        reask = 0
        while True:
            try:
                reply = await self._send(row.id, request, attempts, bill)
            except AttemptError as exc:
                return self._failed(
                    row,
                    seq,
                    request,
                    started,
                    attempts[0],
                    exc,
                    bill,
                    tokens,
                    self._json_columns(None, reask),
                    base_hash,
                )
            tokens = tuple(
                _plus(total, count)
                for total, count in zip(
                    tokens,
                    (
                        reply.prompt_tokens,
                        reply.completion_tokens,
                        reply.total_tokens,
                        reply.cached_tokens,
                        reply.reasoning_tokens,
                    ),
                    strict=True,
                )
            )
            value, error = None, None
            try:
                value = extraction.parse(reply.content, reply.finish_reason)
            except AnswerError as exc:
                if reask < retries:
                    log.info(
                        "request.json_retry",
                        id=row.id,
                        json_attempt=reask + 1,
                        error_type=exc.error_type,
                        error=exc.message,
                        seed=request.seed,
                    )
                    reask += 1
                    self.stats.count_json_reask()
                    request = await self._build(row, request.model, reask)
                    continue
                error = exc
            return self._answered(
                row,
                seq,
                request,
                reply,
                started,
                attempts[0],
                bill,
                status="ok" if error is None else "error",
                request_hash=base_hash,
                prompt_tokens=tokens[0],
                completion_tokens=tokens[1],
                total_tokens=tokens[2],
                cached_tokens=tokens[3],
                reasoning_tokens=tokens[4],
                error_type=error.error_type if error else None,
                error_message=error.message if error else None,
                extra=self._json_columns(value, reask + 1),
            )

    def _json_columns(self, value: object, json_attempts: int) -> dict[str, object]:
        """The JSON-mode columns of one outcome (none without JSON mode)."""
        if self.extraction is None:
            return {}
        return {self.extraction.column.name: value, "json_attempts": json_attempts}

    async def _send(
        self, row_id: str, request: ChatRequest, attempts: list[int], bill: RowCost
    ) -> Reply:
        """One request through retry, limiter and client; ``attempts`` counts the HTTP attempts,
        ``bill`` what they cost."""
        retrying: AsyncRetrying = self.retrying.copy(before_sleep=partial(self._log_retry, row_id))
        reply: Reply = await retrying(self._attempt, request, attempts, bill)
        return reply

    def _failed(
        self,
        row: PromptRow,
        seq: int,
        request: ChatRequest,
        started: datetime,
        attempts: int,
        exc: AttemptError,
        bill: RowCost,
        tokens: tuple[int | None, ...] = (None, None, None, None, None),
        extra: dict[str, object] | None = None,
        request_hash: str | None = None,
    ) -> Outcome:
        """The error row of a request that never got a usable HTTP answer."""
        self._note_fatal(exc)
        return Outcome(
            seq=seq,
            id=row.id,
            status="error",
            started_at=started,
            finished_at=_now(),
            attempts=attempts,
            seed=request.seed,
            request_hash=request_hash or request.request_hash,
            model=request.model,
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            total_tokens=tokens[2],
            http_status=exc.http_status,
            error_type=exc.error_type,
            error_message=exc.message,
            keep=row.keep,
            extra=extra or {},
            cost_usd=bill.usd,
            cached_tokens=tokens[3],
            reasoning_tokens=tokens[4],
            possibly_billed_attempts=bill.possibly_billed,
        )

    def _check_stopping(self) -> None:
        """No new attempt once the run is stopping: the row is left for the next run."""
        if self._stopping.is_set():
            raise Stopped

    def _reserve(self, request: ChatRequest) -> float:
        """Reserve the attempt's cost ceiling under the budget; stop the run when it does not fit."""
        if self.budget is None:
            return 0.0
        price = self.prices.resolve(request.model) if request.model else None
        if price is None:
            self.stop(
                Ended.BUDGET,
                f"model {request.model!r} has no known price, and limits.max_cost_usd needs one",
            )
            raise Stopped
        completion = (
            request.max_tokens
            if request.max_tokens is not None
            else self.estimator.completion_guess
        )
        amount = attempt_ceiling(
            price, request.estimated_prompt_tokens * self.estimator.prompt_ratio, completion
        )
        if not self.budget.reserve(amount):
            self.stop(Ended.BUDGET, self.budget.refusal(amount))
            raise Stopped
        return amount

    async def _attempt(self, request: ChatRequest, attempts: list[int], bill: RowCost) -> Reply:
        """One attempt: hold an in-flight slot, reserve its cost, pay the rate limiter, send,
        price the answer.

        The budget and the limiter are paid only once the slot is held, right before
        sending, so a reservation never goes stale while waiting for a slot.
        """
        assert self.client is not None
        self._check_stopping()
        cost = self.estimator.cost(request)
        reserved = 0.0
        try:
            async with self.in_flight:
                self._check_stopping()
                reserved = self._reserve(request)
                await self.limiter.acquire(cost)
                if self._stopping.is_set():
                    if self.budget is not None:
                        self.budget.release(reserved)
                    raise Stopped
                attempts[0] += 1
                self.stats.count_request()
                reply = await self.client.send(request)
        except AttemptError as exc:
            if self.budget is not None:
                self.budget.release(reserved)
            if possibly_billed(exc):
                bill.possibly_billed += 1
            self.limiter.answered(exc.rate_limits)
            if isinstance(exc, RateLimited):
                self.limiter.settle(cost, 0)
                retry = self.plan.job.retry
                self.limiter.cooldown(
                    min(exc.retry_after_s or retry.initial_backoff_s, retry.max_backoff_s)
                )
            raise
        self.limiter.answered(reply.rate_limits)
        self._fatal_streak = 0
        if reply.prompt_tokens is not None and reply.completion_tokens is not None:
            self.limiter.settle(
                cost, self.estimator.charged(request, reply.prompt_tokens, reply.completion_tokens)
            )
            self.estimator.learn(request, reply.prompt_tokens, reply.completion_tokens)
        usd = reply_cost(self.prices.lookup(reply.model, request.model), reply)
        bill.add(usd)
        if self.budget is not None:
            self.budget.settle(reserved, usd)
        return reply

    def _log_retry(self, row_id: str, state: RetryCallState) -> None:
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
