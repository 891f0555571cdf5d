"""The only composer: one task group; reader -> N workers -> writer.

    source ──rows──▶ workers (2 x concurrency, at most `concurrency` in flight)
                         │ for each model: build ▸ retry( limiter ▸ client ) [▸ parse, re-ask]
                         ▼
                      outcomes ──▶ writer (part files every second / 500 rows) ──▶ finalize

Rows that fail are data: every input row produces exactly one outcome per model
(one model unless the job lists ``models``); outcome ``seq`` is
``row.seq * len(models) + model index``, so the output is in input order, then in
the order the models are listed. In JSON mode each answer is parsed
(``pipeline.structured``); an unusable one is asked again, with the next re-ask seed,
up to ``json_retries`` times, each re-ask a new request through the same retry and
limiter path.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import structlog
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream
from tenacity import AsyncRetrying, RetryCallState

from pipeline import fake
from pipeline.budget import Budget, recorded_cost
from pipeline.build import RequestBuilder, split_headers, template_fields
from pipeline.client import ChatClient
from pipeline.cost import RowCost, attempt_ceiling, possibly_billed, reply_cost
from pipeline.errors import (
    AnswerError,
    AttemptError,
    AuthFailed,
    BadRowError,
    JobError,
    NotFound,
    OutputError,
    RateLimited,
)
from pipeline.limits import RateLimiter, TokenEstimator
from pipeline.prices import PriceTable
from pipeline.progress import ProgressLine, RunStats
from pipeline.records import ChatRequest, Outcome, PromptRow, Reply, RunSummary
from pipeline.resume import DoneIndex, completion_key
from pipeline.retry import make_retrying
from pipeline.sinks import RESERVED_COLUMNS, PartWriter
from pipeline.sources import Source, open_source
from pipeline.spec import JobSpec
from pipeline.structured import Extraction, load_extraction

log = structlog.get_logger("pipeline")

FLUSH_ROWS = 500
FLUSH_INTERVAL_S = 1.0
PROGRESS_INTERVAL_S = 0.5
DEFAULT_GRACE_S = 30.0
FATAL_STREAK = 5
_ROW_BUFFER = 4096


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Everything resolved before the first request: paths, source, row count."""

    job: JobSpec
    input_path: Path
    output_path: Path
    source: Source
    rows: int
    limit: int | None
    run_id: str
    extraction: Extraction | None = None


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by time: ``20261123T010203Z-1a2b3c``."""
    moment = now or datetime.now(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def resolve_output(template: str, name: str, *, run_id: str, day: date | None = None) -> Path:
    """Fill ``{name}``, ``{date}`` (UTC today, or ``day``), ``{datetime}`` and ``{run_id}``."""
    now = datetime.now(UTC)
    values = {
        "name": name,
        "date": (day or now.date()).isoformat(),
        "datetime": now.strftime("%Y-%m-%dT%H%M%SZ"),
        "run_id": run_id,
    }
    try:
        return Path(template.format_map(values))
    except (KeyError, ValueError) as exc:
        raise JobError(
            f"[output] path: unknown placeholder {exc} (use {{name}}, {{date}}, {{datetime}} or {{run_id}})"
        ) from None


def value_columns(job: JobSpec) -> list[str]:
    """Input columns the request builder reads (so each is checked to exist before the run)."""
    names: list[str] = []
    if job.input.messages_column:
        names.append(job.input.messages_column)
    if job.input.prompt_column:
        names.append(job.input.prompt_column)
    if job.request.template:
        names.extend(template_fields(job.request.template))
    request = job.request
    names.extend(c for c in (request.model_column, request.seed_column, request.image_column) if c)
    _, header_templates = split_headers(job.endpoint.headers)
    if header_templates is not None:
        names.extend(header_templates.columns())
    return list(dict.fromkeys(names))


def optional_columns(job: JobSpec) -> list[str]:
    """The optional output columns this job fills: choices (n > 1), tool_calls, ttft_ms."""
    request = job.request
    wanted = {"choices": request.choices > 1, "tool_calls": request.tools is not None, "ttft_ms": request.stream}
    return [name for name, on in wanted.items() if on]


def plan_run(
    job: JobSpec,
    *,
    input_path: Path | None = None,
    output_path: Path | None = None,
    limit: int | None = None,
    day: date | None = None,
) -> RunPlan:
    """Open and check the input, resolve the output; raises ``UserError`` on any mistake."""
    extraction = load_extraction(job.request)
    taken = set(RESERVED_COLUMNS) | set(extraction.output_schema.names if extraction else ())
    clash = sorted(set(job.input.keep_columns) & taken)
    if clash:
        raise JobError(f"[input] keep_columns: {clash[0]!r} is already an output column")
    source_path = input_path or Path(job.input.path)
    source = open_source(
        source_path,
        id_column=job.input.id_column,
        value_columns=value_columns(job),
        keep_columns=job.input.keep_columns,
        batch_size=job.input.batch_size,
    )
    preflight = source.preflight(limit)
    run_id = new_run_id()
    output = output_path or resolve_output(job.output.path, job.name, run_id=run_id, day=day)
    return RunPlan(job, source_path, output, source, preflight.rows, limit, run_id, extraction)


def _now() -> datetime:
    return datetime.now(UTC)


def _plus(total: int | None, more: int | None) -> int | None:
    """Add token counts; None only while nothing was reported."""
    if more is None:
        return total
    return more if total is None else total + more


@asynccontextmanager
async def _endpoint_url(job: JobSpec) -> AsyncIterator[str | None]:
    """Start the built-in fake server when the job asks for it; yield the URL to use."""
    if not job.endpoint.is_fake:
        yield None
        return
    spec = job.fake
    config = fake.FakeConfig(
        latency_s=spec.latency_ms / 1000.0,
        latency_jitter_s=spec.jitter_ms / 1000.0,
        requests_per_minute=spec.requests_per_minute,
        tokens_per_minute=spec.tokens_per_minute,
        error_500_rate=spec.error_500_rate,
        error_502_rate=spec.error_502_rate,
        error_503_rate=spec.error_503_rate,
        rate_limit_rate=spec.rate_limit_rate,
        retry_after_s=spec.retry_after_s,
        drop_rate=spec.drop_rate,
        hang_rate=spec.hang_rate,
        bad_request_rate=spec.bad_request_rate,
        malformed_rate=spec.malformed_rate,
        invalid_json_rate=spec.invalid_json_rate,
        schema_mismatch_rate=spec.schema_mismatch_rate,
        fault_seed=spec.fault_seed,
        cached_share=spec.cached_share,
    )
    async with fake.serve(config) as server:
        log.info("fake_server.started", base_url=server.base_url)
        yield server.base_url


class _Stopped(Exception):
    """Raised inside a row when the run is stopping: the row is left for the next run."""


class Runner:
    """One run of one job."""

    def __init__(
        self,
        plan: RunPlan,
        *,
        api_key: str | None,
        progress: ProgressLine | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        fresh: bool = False,
        retry_errors: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
        handle_signals: bool = False,
        prices: PriceTable | None = None,
    ) -> None:
        job = plan.job
        self.plan = plan
        self.api_key = api_key
        self.extraction = plan.extraction
        self.static_headers, header_templates = split_headers(job.endpoint.headers)
        self.builder = RequestBuilder(
            job.request,
            prompt_column=job.input.prompt_column,
            messages_column=job.input.messages_column,
            response_format=self.extraction.response_format() if self.extraction else None,
            headers=header_templates,
        )
        self.models: list[str | None] = [*job.request.models] if job.request.models else [None]
        self.limiter = RateLimiter(job.limits.requests_per_minute, job.limits.tokens_per_minute)
        self.estimator = TokenEstimator()
        self.in_flight = anyio.Semaphore(job.limits.concurrency)
        self.retrying = make_retrying(job.retry)
        self.optional = optional_columns(job)
        self.writer = PartWriter(
            plan.output_path,
            plan.source.keep_schema(),
            self.extraction.output_schema if self.extraction else None,
            self.optional,
        )
        self.stats = RunStats(total=plan.rows * len(self.models))
        self.progress = progress
        self.source_name = str(plan.input_path)
        self.fresh = fresh
        self.retry_errors = retry_errors
        self.grace_s = grace_s
        self.handle_signals = handle_signals
        self.done: DoneIndex | None = None
        self.prices = prices if prices is not None else PriceTable.for_job(job.prices)
        self.budget: Budget | None = None
        self._transport = transport
        self._client: ChatClient | None = None
        self._stopping = anyio.Event()
        self._ended = "complete"
        self._reason: str | None = None
        self._fatal_streak = 0
        self._work_scope: anyio.CancelScope | None = None

    def stop(self, ended: str, reason: str) -> None:
        """Stop taking rows; in-flight requests get ``grace_s`` to finish."""
        if self._stopping.is_set():
            return
        self._ended, self._reason = ended, reason
        self._stopping.set()
        log.warning("job.stopping", reason=reason, grace_s=self.grace_s)

    async def run(self) -> RunSummary:
        """Send every row not already done, write every outcome, merge the output."""
        job = self.plan.job
        await anyio.to_thread.run_sync(partial(self.writer.prepare, fresh=self.fresh))
        earlier = [] if self.fresh else self.writer.earlier_results()
        if earlier:
            self.done = await anyio.to_thread.run_sync(DoneIndex.load, earlier)
            self.stats.earlier_cost_usd = await anyio.to_thread.run_sync(recorded_cost, earlier)
        if job.limits.max_cost_usd is not None:
            self.budget = Budget(job.limits.max_cost_usd, spent_usd=self.stats.earlier_cost_usd)
        workers = 2 * job.limits.concurrency
        log.info(
            "job.started",
            job=job.name,
            run_id=self.plan.run_id,
            rows=self.plan.rows,
            input=self.source_name,
            output=str(self.plan.output_path),
            model=job.request.model or job.request.models or f"column {job.request.model_column}",
            concurrency=job.limits.concurrency,
            earlier_results=len(self.done) if self.done is not None else 0,
        )
        try:
            await self._run_stages(workers)
        except BaseExceptionGroup as group:
            output_errors = group.subgroup(OutputError)
            if output_errors is not None and output_errors.exceptions:
                raise _first_leaf(output_errors) from None
            raise
        if not self._stopping.is_set():
            carried = None
            if self.done is not None:
                carried = [
                    (path, self.done.carried.selected[i], {row: seq for (src, row), seq in self.done.carried.moved.items() if src == i})
                    for i, path in enumerate(self.done.sources)
                ]
            await anyio.to_thread.run_sync(self.writer.finalize, carried)
        if self.progress is not None:
            self.progress.close(self.stats)
        return self._summary()

    async def _run_stages(self, workers: int) -> None:
        job = self.plan.job
        async with _endpoint_url(job) as base_url, ChatClient(
            job.endpoint,
            api_key=self.api_key,
            max_connections=job.limits.concurrency,
            base_url=base_url,
            transport=self._transport,
            headers=self.static_headers,
            stream=job.request.stream,
        ) as client:
            self._client = client
            rows_send, rows_receive = anyio.create_memory_object_stream[PromptRow](
                max(_ROW_BUFFER, 2 * workers)
            )
            out_send, out_receive = anyio.create_memory_object_stream[Outcome](max(1024, 2 * workers))
            writer_done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write, out_receive, writer_done)
                if self.progress is not None and self.progress.enabled:
                    tg.start_soon(self._draw)
                if self.handle_signals:
                    tg.start_soon(self._watch_signals)
                tg.start_soon(self._enforce_grace)
                async with anyio.create_task_group() as work:
                    self._work_scope = work.cancel_scope
                    work.start_soon(self._read, rows_send)
                    async with out_send, rows_receive:
                        for _ in range(workers):
                            work.start_soon(self._work, rows_receive.clone(), out_send.clone())
                await writer_done.wait()
                tg.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        """First SIGINT/SIGTERM: stop gracefully. Second: cancel in-flight requests now."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self._stopping.is_set():
                    log.warning("job.stopping_now", signal=name)
                    self._cancel_work()
                else:
                    self.stop("interrupted", f"received {name}")

    async def _enforce_grace(self) -> None:
        """Once stopping, give in-flight requests ``grace_s``, then cancel them."""
        await self._stopping.wait()
        await anyio.sleep(self.grace_s)
        self._cancel_work()

    def _cancel_work(self) -> None:
        if self._work_scope is not None:
            self._work_scope.cancel()

    def _summary(self) -> RunSummary:
        summary = RunSummary(
            output_path=str(self.plan.output_path),
            rows_total=self.stats.done,
            rows_ok=self.stats.ok,
            rows_error=self.stats.error,
            errors_by_type=dict(self.stats.errors_by_type),
            prompt_tokens=self.stats.prompt_tokens,
            completion_tokens=self.stats.completion_tokens,
            requests_sent=self.stats.requests,
            elapsed_s=self.stats.elapsed_s,
            rows_reused=self.stats.reused,
            ended=self._ended if self._stopping.is_set() else "complete",
            reason=self._reason,
            json_reasks=self.stats.json_reasks,
            cost_usd=self.stats.cost_usd,
            unpriced_rows=self.stats.unpriced,
            earlier_cost_usd=self.stats.earlier_cost_usd,
            possibly_billed_attempts=self.stats.possibly_billed,
        )
        log.info(
            "job.finished",
            job=self.plan.job.name,
            run_id=self.plan.run_id,
            ended=summary.ended,
            reason=summary.reason,
            output=summary.output_path,
            rows=summary.rows_total,
            ok=summary.rows_ok,
            error=summary.rows_error,
            reused=summary.rows_reused,
            errors_by_type=summary.errors_by_type,
            prompt_tokens=summary.prompt_tokens,
            completion_tokens=summary.completion_tokens,
            requests=summary.requests_sent,
            json_reasks=summary.json_reasks,
            elapsed_s=round(summary.elapsed_s, 3),
            cost_usd=round(summary.cost_usd, 6),
            possibly_billed_attempts=summary.possibly_billed_attempts,
        )
        return summary

    async def _read(self, send: MemoryObjectSendStream[PromptRow]) -> None:
        """Feed rows, a batch at a time from a thread, keeping the buffer ahead of the workers full."""
        batches = self.plan.source.batches(self.plan.limit)
        async with send:
            while not self._stopping.is_set():
                batch = await anyio.to_thread.run_sync(next, batches, None)
                if batch is None:
                    return
                for row in batch:
                    try:
                        send.send_nowait(row)
                    except anyio.WouldBlock:
                        await send.send(row)

    async def _work(self, rows: ObjectReceiveStream[PromptRow], out: MemoryObjectSendStream[Outcome]) -> None:
        """One worker: take a row, produce its outcomes (one per model), repeat, until the
        rows run out or the run stops."""
        async with rows, out:
            async for row in rows:
                for index, model in enumerate(self.models):
                    if self._stopping.is_set():
                        return
                    try:
                        outcome = await self._process(row, index, model)
                    except _Stopped:
                        return
                    if outcome is None:
                        continue
                    try:
                        out.send_nowait(outcome)
                    except anyio.WouldBlock:
                        await out.send(outcome)

    async def _build(self, row: PromptRow, model: str | None) -> ChatRequest:
        """The row's request; built in a thread when that may read a file (images)."""
        if self.builder.reads_files:
            return await anyio.to_thread.run_sync(self.builder.build, row, model)
        return self.builder.build(row, model)

    def _reuse(self, row: PromptRow, seq: int, request: ChatRequest) -> bool:
        """Whether an earlier run already finished this row with this exact request."""
        if self.done is None:
            return False
        index = self.done.find(completion_key(row.id, request.request_hash), retry_errors=self.retry_errors)
        if index is None:
            return False
        self.done.carry(index, seq)
        stats = self.stats
        stats.done += 1
        stats.reused += 1
        if self.done.ok(index):
            stats.ok += 1
        else:
            stats.error += 1
            stats.errors_by_type[self.done.error_type(index) or "unknown"] += 1
        return True

    async def _process(self, row: PromptRow, index: int = 0, model: str | None = None) -> Outcome | None:
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
            self.stop("aborted", f"the endpoint refuses every request: {exc.message}")

    async def _extract(
        self, row: PromptRow, seq: int, request: ChatRequest, started: datetime, extraction: Extraction
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
                    row, seq, request, started, attempts[0], exc, bill, tokens, self._json_columns(None, reask), base_hash
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
                    self.stats.json_reasks += 1
                    request = self.builder.build(row, request.model, reask)
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

    async def _send(self, row_id: str, request: ChatRequest, attempts: list[int], bill: RowCost) -> Reply:
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
        )

    def _reserve(self, request: ChatRequest) -> float:
        """Reserve the attempt's cost ceiling under the budget; stop the run when it does not fit."""
        if self.budget is None:
            return 0.0
        price = self.prices.resolve(request.model) if request.model else None
        if price is None:
            self.stop("budget", f"model {request.model!r} has no known price, and limits.max_cost_usd needs one")
            raise _Stopped
        completion = request.max_tokens if request.max_tokens is not None else self.estimator.completion_guess
        amount = attempt_ceiling(price, request.estimated_prompt_tokens * self.estimator.prompt_ratio, completion)
        if not self.budget.reserve(amount):
            self.stop("budget", self.budget.refusal(amount))
            raise _Stopped
        return amount

    async def _attempt(self, request: ChatRequest, attempts: list[int], bill: RowCost) -> Reply:
        """One attempt: hold an in-flight slot, reserve its cost, pay the rate limiter, send,
        price the answer.

        The budget and the limiter are paid only once the slot is held, right before
        sending, so a reservation never goes stale while waiting for a slot.
        """
        assert self._client is not None
        if self._stopping.is_set():
            raise _Stopped
        cost = self.estimator.cost(request)
        reserved = 0.0
        try:
            async with self.in_flight:
                reserved = self._reserve(request)
                await self.limiter.acquire(cost)
                attempts[0] += 1
                self.stats.requests += 1
                reply = await self._client.send(request)
        except AttemptError as exc:
            if self.budget is not None:
                self.budget.release(reserved)
            if possibly_billed(exc):
                bill.possibly_billed += 1
            self.limiter.answered(exc.rate_limits)
            if isinstance(exc, RateLimited):
                self.limiter.settle(cost, 0)
                self.limiter.cooldown(exc.retry_after_s or self.plan.job.retry.initial_backoff_s)
            raise
        self.limiter.answered(reply.rate_limits)
        self._fatal_streak = 0
        if reply.prompt_tokens is not None and reply.completion_tokens is not None:
            self.limiter.settle(cost, self.estimator.charged(request, reply.prompt_tokens, reply.completion_tokens))
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

    async def _write(self, outcomes: ObjectReceiveStream[Outcome], done: anyio.Event) -> None:
        """Collect outcomes, write a part file every second or every ``FLUSH_ROWS`` rows."""
        buffer: list[Outcome] = []
        deadline = time.monotonic() + FLUSH_INTERVAL_S
        async with outcomes:
            while True:
                outcome: Outcome | None = None
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                    try:
                        outcome = await outcomes.receive()
                    except anyio.EndOfStream:
                        break
                if outcome is not None:
                    buffer.append(outcome)
                    self._count(outcome)
                if len(buffer) >= FLUSH_ROWS or time.monotonic() >= deadline:
                    batch, buffer = buffer, []
                    if batch:
                        await anyio.to_thread.run_sync(self.writer.write_part, batch)
                    deadline = time.monotonic() + FLUSH_INTERVAL_S
        await anyio.to_thread.run_sync(self.writer.write_part, buffer)
        done.set()

    def _count(self, outcome: Outcome) -> None:
        stats = self.stats
        stats.done += 1
        if outcome.status == "ok":
            stats.ok += 1
        else:
            stats.error += 1
            stats.errors_by_type[outcome.error_type or "unknown"] += 1
        stats.prompt_tokens += outcome.prompt_tokens or 0
        stats.completion_tokens += outcome.completion_tokens or 0
        stats.add_cost(outcome.cost_usd, outcome.possibly_billed_attempts)

    async def _draw(self) -> None:
        """Redraw the progress line until the run ends."""
        assert self.progress is not None
        while True:
            self.progress.draw(self.stats)
            await anyio.sleep(PROGRESS_INTERVAL_S)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first non-group exception inside a (nested) exception group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
