"""The only composer: one task group; reader -> N workers -> writer.

    source ──rows──▶ workers (2 x concurrency, at most `concurrency` in flight)
                         │ for each model: build ▸ retry( limiter ▸ client )
                         ▼
                      outcomes ──▶ writer (part files every second / 500 rows) ──▶ finalize

Rows that fail are data: every input row produces exactly one outcome per model
(one model unless the job lists ``models``); outcome ``seq`` is
``row.seq * len(models) + model index``, so the output is in input order, then in
the order the models are listed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
import httpx
import structlog
from anyio.abc import ObjectReceiveStream
from anyio.streams.memory import MemoryObjectSendStream
from tenacity import AsyncRetrying, RetryCallState

from pipeline import fake
from pipeline.build import RequestBuilder, split_headers, template_fields
from pipeline.client import ChatClient
from pipeline.errors import AttemptError, BadRowError, JobError, RateLimited
from pipeline.limits import RateLimiter, TokenEstimator
from pipeline.progress import ProgressLine, RunStats
from pipeline.records import ChatRequest, Outcome, PromptRow, Reply, RunSummary
from pipeline.retry import make_retrying
from pipeline.sinks import RESERVED_COLUMNS, PartWriter
from pipeline.sources import Source, open_source
from pipeline.spec import JobSpec

log = structlog.get_logger("pipeline")

FLUSH_ROWS = 500
FLUSH_INTERVAL_S = 1.0
PROGRESS_INTERVAL_S = 0.5
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


def resolve_output(template: str, name: str, today: datetime | None = None) -> Path:
    """Fill ``{name}`` and ``{date}`` (UTC, YYYY-MM-DD) in the output path."""
    now = today or datetime.now(UTC)
    values = {"name": name, "date": now.strftime("%Y-%m-%d")}
    try:
        return Path(template.format_map(values))
    except (KeyError, ValueError) as exc:
        raise JobError(f"[output] path: unknown placeholder {exc} (use {{name}} or {{date}})") from None


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
) -> RunPlan:
    """Open and check the input, resolve the output; raises ``UserError`` on any mistake."""
    clash = sorted(set(job.input.keep_columns) & set(RESERVED_COLUMNS))
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
    output = output_path or resolve_output(job.output.path, job.name)
    return RunPlan(job, source_path, output, source, preflight.rows, limit)


def _now() -> datetime:
    return datetime.now(UTC)


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
        fault_seed=spec.fault_seed,
    )
    async with fake.serve(config) as server:
        log.info("fake_server.started", base_url=server.base_url)
        yield server.base_url


class Runner:
    """One run of one job."""

    def __init__(
        self,
        plan: RunPlan,
        *,
        api_key: str | None,
        progress: ProgressLine | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        job = plan.job
        self.plan = plan
        self.api_key = api_key
        self.static_headers, header_templates = split_headers(job.endpoint.headers)
        self.builder = RequestBuilder(
            job.request,
            prompt_column=job.input.prompt_column,
            messages_column=job.input.messages_column,
            headers=header_templates,
        )
        self.models: list[str | None] = [*job.request.models] if job.request.models else [None]
        self.limiter = RateLimiter(job.limits.requests_per_minute, job.limits.tokens_per_minute)
        self.estimator = TokenEstimator()
        self.in_flight = anyio.Semaphore(job.limits.concurrency)
        self.retrying = make_retrying(job.retry)
        self.optional = optional_columns(job)
        self.writer = PartWriter(plan.output_path, plan.source.keep_schema(), self.optional)
        self.stats = RunStats(total=plan.rows * len(self.models))
        self.progress = progress
        self.source_name = str(plan.input_path)
        self._transport = transport
        self._client: ChatClient | None = None

    async def run(self) -> RunSummary:
        """Send every row, write every outcome, merge the output; returns the summary."""
        job = self.plan.job
        await anyio.to_thread.run_sync(self.writer.prepare)
        workers = 2 * job.limits.concurrency
        log.info(
            "job.started",
            job=job.name,
            rows=self.plan.rows,
            input=self.source_name,
            output=str(self.plan.output_path),
            model=job.request.model or job.request.models or f"column {job.request.model_column}",
            concurrency=job.limits.concurrency,
        )
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
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read, rows_send)
                async with out_send, rows_receive:
                    for _ in range(workers):
                        tg.start_soon(self._work, rows_receive.clone(), out_send.clone())
                writer_done = anyio.Event()
                tg.start_soon(self._write, out_receive, writer_done)
                if self.progress is not None and self.progress.enabled:
                    tg.start_soon(self._draw, writer_done)
        await anyio.to_thread.run_sync(self.writer.finalize)
        if self.progress is not None:
            self.progress.close(self.stats)
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
        )
        log.info(
            "job.finished",
            job=job.name,
            output=summary.output_path,
            rows=summary.rows_total,
            ok=summary.rows_ok,
            error=summary.rows_error,
            errors_by_type=summary.errors_by_type,
            prompt_tokens=summary.prompt_tokens,
            completion_tokens=summary.completion_tokens,
            requests=summary.requests_sent,
            elapsed_s=round(summary.elapsed_s, 3),
        )
        return summary

    async def _read(self, send: MemoryObjectSendStream[PromptRow]) -> None:
        """Feed rows, a batch at a time from a thread, keeping the buffer ahead of the workers full."""
        batches = self.plan.source.batches(self.plan.limit)
        async with send:
            while True:
                batch = await anyio.to_thread.run_sync(next, batches, None)
                if batch is None:
                    return
                for row in batch:
                    try:
                        send.send_nowait(row)
                    except anyio.WouldBlock:
                        await send.send(row)

    async def _work(self, rows: ObjectReceiveStream[PromptRow], out: MemoryObjectSendStream[Outcome]) -> None:
        """One worker: take a row, produce its outcome (one per model), repeat."""
        async with rows, out:
            async for row in rows:
                for index, model in enumerate(self.models):
                    outcome = await self._process(row, index, model)
                    try:
                        out.send_nowait(outcome)
                    except anyio.WouldBlock:
                        await out.send(outcome)

    async def _build(self, row: PromptRow, model: str | None) -> ChatRequest:
        """The row's request; built in a thread when that may read a file (images)."""
        if self.builder.reads_files:
            return await anyio.to_thread.run_sync(self.builder.build, row, model)
        return self.builder.build(row, model)

    async def _process(self, row: PromptRow, index: int = 0, model: str | None = None) -> Outcome:
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
            )
        attempts = [0]
        retrying: AsyncRetrying = self.retrying.copy(before_sleep=partial(self._log_retry, row.id))
        try:
            reply: Reply = await retrying(self._attempt, request, attempts)
        except AttemptError as exc:
            return Outcome(
                seq=seq,
                id=row.id,
                status="error",
                started_at=started,
                finished_at=_now(),
                attempts=attempts[0],
                seed=request.seed,
                request_hash=request.request_hash,
                model=request.model,
                http_status=exc.http_status,
                error_type=exc.error_type,
                error_message=exc.message,
                keep=row.keep,
            )
        return Outcome(
            seq=seq,
            id=row.id,
            status="ok",
            started_at=started,
            finished_at=_now(),
            attempts=attempts[0],
            seed=request.seed,
            request_hash=request.request_hash,
            content=reply.content,
            finish_reason=reply.finish_reason,
            model=reply.model,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            total_tokens=reply.total_tokens,
            latency_ms=reply.latency_ms,
            http_status=reply.http_status,
            system_fingerprint=reply.system_fingerprint,
            response_id=reply.response_id,
            choices=reply.choices,
            tool_calls=reply.tool_calls,
            ttft_ms=reply.ttft_ms,
            keep=row.keep,
        )

    async def _attempt(self, request: ChatRequest, attempts: list[int]) -> Reply:
        """One attempt: pay the rate limiter, hold an in-flight slot, send."""
        assert self._client is not None
        cost = self.estimator.cost(request)
        await self.limiter.acquire(cost)
        attempts[0] += 1
        self.stats.requests += 1
        try:
            async with self.in_flight:
                reply = await self._client.send(request)
        except AttemptError as exc:
            if exc.rate_limits is not None:
                self.limiter.observe(exc.rate_limits)
            if isinstance(exc, RateLimited):
                self.limiter.settle(cost, 0)
                self.limiter.cooldown(exc.retry_after_s or self.plan.job.retry.initial_backoff_s)
            raise
        if reply.rate_limits is not None:
            self.limiter.observe(reply.rate_limits)
        if reply.prompt_tokens is not None and reply.completion_tokens is not None:
            self.limiter.settle(cost, self.estimator.charged(request, reply.prompt_tokens, reply.completion_tokens))
            self.estimator.learn(request, reply.prompt_tokens, reply.completion_tokens)
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

    async def _draw(self, done: anyio.Event) -> None:
        """Redraw the progress line until the writer is done."""
        assert self.progress is not None
        while not done.is_set():
            self.progress.draw(self.stats)
            with anyio.move_on_after(PROGRESS_INTERVAL_S):
                await done.wait()
