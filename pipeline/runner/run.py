"""The composer: one task group; reader -> N workers -> writer; stop, signals, summary."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from pipeline.allocators import give_back
from pipeline.budget import Budget
from pipeline.cache import ResponseCache, endpoint_identity, uncached_reason
from pipeline.client import ChatClient
from pipeline.client.batches import BatchClient
from pipeline.concurrency import AdaptiveLimit, Change, GradientController
from pipeline.errors import InputError, JobError, OutputError
from pipeline.limits import RateLimiter
from pipeline.prices import PriceTable
from pipeline.progress import ProgressLine
from pipeline.records import Ended, Outcome, PromptRow, RunStats, RunSummary
from pipeline.requests import RequestBuilder, split_headers
from pipeline.results import DoneIndex, PartWriter, recorded_cost
from pipeline.runner.batch import BatchJournal, BatchRows, BatchRun, BatchSettings, journal_path
from pipeline.runner.collector import fewer_collections
from pipeline.runner.control import RunControl, Stopped
from pipeline.runner.journey import RowJourney
from pipeline.runner.plan import RunPlan, models_of, optional_columns
from pipeline.runner.prepare import RequestPreparer
from pipeline.runner.reuse import Reuse
from pipeline.runner.send import LiveSender

log = structlog.get_logger("pipeline")

FLUSH_ROWS = 500
FLUSH_INTERVAL_S = 1.0
PROGRESS_INTERVAL_S = 0.5
DEFAULT_GRACE_S = 30.0
CACHE_FLUSH_INTERVAL_S = 1.0
_ROW_BUFFER = 1024

T = TypeVar("T")

LimiterFactory = Callable[[], RateLimiter]
"""Builds the run's rate limiter on its event loop (an engine's, e.g. leased from Ray's
global limiter); by default the job's own ``RateLimiter``."""


class Runner:
    """One run of one job."""

    def __init__(
        self,
        plan: RunPlan,
        *,
        api_key: str | None,
        base_url: str | None = None,
        progress: ProgressLine | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        fresh: bool = False,
        retry_errors: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
        handle_signals: bool = False,
        prices: PriceTable | None = None,
        cache_path: Path | None = None,
        merge: bool = True,
        limiter: LimiterFactory | None = None,
        batch_wait: bool = True,
    ) -> None:
        job = plan.job
        if job.endpoint.is_fake and base_url is None:
            raise JobError(
                "base_url = 'fake' is started by the `pipeline` command; pass base_url=..."
            )
        self.plan = plan
        self.api_key = api_key
        self.base_url = base_url
        self.models = models_of(job)
        self.stats = RunStats(total=plan.rows * len(self.models))
        self.control = RunControl(grace_s)
        self.prices = prices if prices is not None else PriceTable.for_job(job.prices)
        batched = job.batch.enabled or journal_path(plan.output_path).exists()
        self.writer = PartWriter(
            plan.output_path,
            plan.source.keep_schema(),
            plan.extraction.output_schema if plan.extraction else None,
            optional_columns(job) + (["batch_id"] if batched else []),
            keep_seq=plan.shard is not None,
        )
        self.batch_wait = batch_wait
        self.progress = progress
        self._limiter = limiter
        self.source_name = str(plan.input_path)
        self.fresh = fresh
        self.retry_errors = retry_errors
        self.handle_signals = handle_signals
        self._transport = transport
        self._work_scope: anyio.CancelScope | None = None
        self.cache_path = cache_path
        self._input_error: str | None = None
        self._merge = merge  # False: results stay in part files (an estimate's sample)

    def stop(self, ended: Ended, reason: str) -> None:
        """Stop taking rows; in-flight requests get the grace period to finish."""
        self.control.stop(ended, reason)

    async def run(self) -> RunSummary:
        """Send every row not already done, write every outcome, merge the output."""
        job = self.plan.job
        await anyio.to_thread.run_sync(self.writer.prepare)
        # with --fresh nothing is reused, but earlier results are still read: what the
        # output no longer holds moves to the archive, paid for and kept
        earlier_files = self.writer.earlier_results()
        earlier: DoneIndex | None = None
        if earlier_files:
            earlier = await anyio.to_thread.run_sync(DoneIndex.load, earlier_files)
            self.stats.count_earlier_cost(
                await anyio.to_thread.run_sync(recorded_cost, earlier_files)
            )
        log.info(
            "job.started",
            job=job.name,
            run_id=self.plan.run_id,
            rows=self.plan.rows,
            input=self.source_name,
            output=str(self.plan.output_path),
            model=job.request.model or job.request.models or f"column {job.request.model_column}",
            concurrency=job.limits.concurrency,
            earlier_results=len(earlier) if earlier is not None else 0,
        )
        cache = await self._open_cache()
        try:
            if job.batch.enabled:
                await self._run_batch(earlier, cache)
            else:
                with fewer_collections():
                    await self._run_stages(earlier, cache)
        except BaseExceptionGroup as group:
            output_errors = group.subgroup(OutputError)
            if output_errors is not None and output_errors.exceptions:
                raise _first_leaf(output_errors) from None
            raise
        finally:
            if cache is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_close_cache, cache)
        if self._input_error is not None:
            self.stop(Ended.INPUT_FAILED, self._input_error)
        if not self.control.is_stopping and self._merge:
            carried = earlier.carried.per_source() if earlier is not None else None
            kept = self._kept_values() if carried and self.plan.job.input.keep_columns else None
            await anyio.to_thread.run_sync(self.writer.finalize, carried, kept)
        if self.progress is not None:
            self.progress.close(self.stats)
        return self._summary()

    def _kept_values(self) -> Iterator[dict[str, Any]]:
        """The input's kept values again, one per output row (each row once per model)."""
        copies = len(self.models)
        for batch in self.plan.source.batches(self.plan.limit):
            for row in batch:
                for _ in range(copies):
                    yield row.keep

    async def _open_cache(self) -> ResponseCache | None:
        """The response cache, when the run has one and the job's answers may be cached."""
        if self.cache_path is None:
            return None
        job = self.plan.job
        reason = uncached_reason(job.request, job.cache)
        if reason is not None:
            log.info("cache.off", path=str(self.cache_path), reason=reason)
            return None
        identity = endpoint_identity(job.endpoint)
        cache = await anyio.to_thread.run_sync(ResponseCache.open, self.cache_path, identity)
        if cache is not None:
            log.info("cache.opened", path=str(self.cache_path))
        return cache

    async def _flush_cache(self, cache: ResponseCache) -> None:
        """Write the cache's buffered answers every ``CACHE_FLUSH_INTERVAL_S``, in a thread."""
        while True:
            await anyio.sleep(CACHE_FLUSH_INTERVAL_S)
            if cache.pending:
                await anyio.to_thread.run_sync(cache.flush)

    def _journey(
        self, client: ChatClient, earlier: DoneIndex | None, cache: ResponseCache | None
    ) -> RowJourney:
        """The per-row script of this run, built whole once the client is open."""
        job = self.plan.job
        limits = job.limits
        budget = None
        if limits.max_cost_usd is not None:
            budget = Budget(limits.max_cost_usd, spent_usd=self.stats.earlier_cost_usd)
        limiter = (
            self._limiter()
            if self._limiter is not None
            else RateLimiter(limits.requests_per_minute, limits.tokens_per_minute)
        )
        sender = LiveSender(
            client,
            concurrency=self._in_flight_limit(),
            limiter=limiter,
            budget=budget,
            prices=self.prices,
            retry=job.retry,
            stats=self.stats,
            control=self.control,
            gateway=job.endpoint.is_gateway,
        )
        extraction = self.plan.extraction
        response_format = extraction.response_format() if extraction else None
        reuse = None
        if earlier is not None and not self.fresh:
            reuse = Reuse(earlier, retry_errors=self.retry_errors, stats=self.stats)
        return RowJourney(
            prepare=RequestPreparer(
                RequestBuilder.for_job(job, response_format=response_format),
                extraction,
                limits.tokens_per_minute,
            ),
            reuse=reuse,
            sender=sender,
            extraction=extraction,
            json_retries=job.request.json_retries,
            models=len(self.models),
            default_model=job.request.model,
            source_name=self.source_name,
            stats=self.stats,
            cache=cache,
        )

    def _in_flight_limit(self) -> int | AdaptiveLimit:
        """The fixed concurrency, or for ``concurrency = "auto"`` a limit the run moves."""
        limits = self.plan.job.limits
        if isinstance(limits.concurrency, int):
            return limits.concurrency
        controller = GradientController(limits.min_concurrency, limits.max_concurrency)
        self.stats.count_concurrency(controller.limit)
        return AdaptiveLimit(controller, on_change=self._concurrency_changed)

    def _concurrency_changed(self, change: Change) -> None:
        self.stats.count_concurrency(change.limit)
        log.info(
            "concurrency.changed",
            previous=change.previous,
            limit=change.limit,
            reason=change.reason,
            latency_ratio=change.latency_ratio,
        )

    def _workers(self) -> int:
        """Twice the concurrency; with auto, enough for ``max_concurrency`` but not more than rows."""
        limits = self.plan.job.limits
        if isinstance(limits.concurrency, int):
            return worker_count(limits.concurrency, self.stats.total)
        return worker_count(limits.max_concurrency, self.stats.total)

    async def _run_stages(self, earlier: DoneIndex | None, cache: ResponseCache | None) -> None:
        job = self.plan.job
        workers = self._workers()
        async with (
            ChatClient(
                job.endpoint,
                api_key=self.api_key,
                max_connections=job.limits.most_in_flight,
                base_url=self.base_url,
                transport=self._transport,
                headers=split_headers(job.endpoint.headers)[0],
                stream=job.request.stream,
            ) as client,
        ):
            journey = self._journey(client, earlier, cache)
            rows_send, rows_receive = anyio.create_memory_object_stream[PromptRow](
                max(_ROW_BUFFER, 2 * workers)
            )
            out_send, out_receive = anyio.create_memory_object_stream[Outcome](
                max(1024, 2 * workers)
            )
            writer_done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write, out_receive, writer_done)
                if self.progress is not None and self.progress.enabled:
                    tg.start_soon(self._draw)
                if self.handle_signals:
                    tg.start_soon(self._watch_signals)
                tg.start_soon(self._enforce_grace)
                if cache is not None:
                    tg.start_soon(self._flush_cache, cache)
                async with anyio.create_task_group() as work:
                    self._work_scope = work.cancel_scope
                    work.start_soon(self._read, rows_send)
                    async with out_send, rows_receive:
                        for _ in range(workers):
                            work.start_soon(
                                self._work, journey, rows_receive.clone(), out_send.clone()
                            )
                await writer_done.wait()
                tg.cancel_scope.cancel()

    async def _run_batch(self, earlier: DoneIndex | None, cache: ResponseCache | None) -> None:
        """Batch mode: every row not done through provider batches (``pipeline.runner.batch``)."""
        job = self.plan.job
        async with BatchClient(
            job.endpoint,
            api_key=self.api_key,
            headers=split_headers(job.endpoint.headers)[0],
            base_url=self.base_url,
            transport=self._transport,
        ) as client:
            deployment = client.routes.deployment
            if deployment is not None and job.request.model != deployment:
                raise JobError(
                    f"[request] model: batch lines must name the Azure deployment {deployment!r}"
                )
            rows = self._batch_rows(cache)
            reuse = None
            if earlier is not None:
                reuse = Reuse(earlier, retry_errors=self.retry_errors, stats=self.stats)
            unbuildable = await rows.admit_all(
                self.plan.source.batches(self.plan.limit), self.models, reuse
            )
            await self._write_now(unbuildable)
            settings = BatchSettings(
                job.name,
                self.plan.run_id,
                hashlib.sha256(str(self.plan.output_path.resolve()).encode()).hexdigest()[:16],
                job.batch,
                job.retry,
                wait=self.batch_wait,
            )
            run = BatchRun(
                settings,
                client=client,
                rows=rows,
                journal=BatchJournal(self.plan.output_path),
                control=self.control,
                write=self._write_now,
                on_poll=self._draw_once,
            )
            async with anyio.create_task_group() as tg:
                if self.handle_signals:
                    tg.start_soon(self._watch_signals)
                await run.run()
                tg.cancel_scope.cancel()

    def _batch_rows(self, cache: ResponseCache | None) -> BatchRows:
        job, extraction = self.plan.job, self.plan.extraction
        response_format = extraction.response_format() if extraction else None
        return BatchRows(
            prepare=RequestPreparer(
                RequestBuilder.for_job(job, response_format=response_format), extraction
            ),
            extraction=extraction,
            json_retries=job.request.json_retries,
            max_resubmits=job.batch.max_resubmits,
            prices=self.prices,
            stats=self.stats,
            source_name=self.source_name,
            default_model=job.request.model,
            cache=cache,
        )

    async def _write_now(self, outcomes: list[Outcome]) -> None:
        """Write outcomes as one part file before going on (batch mode)."""
        for outcome in outcomes:
            self.stats.count_written(outcome)
        await anyio.to_thread.run_sync(self.writer.write_part, outcomes)

    def _draw_once(self, note: str) -> None:
        if self.progress is not None and self.progress.enabled:
            self.progress.draw(self.stats, note)

    async def _watch_signals(self) -> None:
        """First SIGINT/SIGTERM: stop gracefully. Second: cancel in-flight requests now."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.control.is_stopping:
                    log.warning("job.stopping_now", signal=name)
                    self._cancel_work()
                else:
                    ended = Ended.TERMINATED if signum == signal.SIGTERM else Ended.INTERRUPTED
                    self.stop(ended, f"received {name}")

    async def _enforce_grace(self) -> None:
        """Once stopping, give in-flight requests ``grace_s``, then cancel them."""
        await self.control.stopping.wait()
        await anyio.sleep(self.control.grace_s)
        self._cancel_work()

    def _cancel_work(self) -> None:
        if self._work_scope is not None:
            self._work_scope.cancel()

    def _summary(self) -> RunSummary:
        control = self.control
        return self.stats.summary(str(self.plan.output_path), control.ended, control.reason)

    async def _read(self, send: MemoryObjectSendStream[PromptRow]) -> None:
        """Feed rows, a batch at a time from a thread, keeping the buffer ahead of the workers full.

        Once the run is stopping (the workers are gone and the buffer may be closed), it
        stops feeding.
        """
        batches = self.plan.source.batches(self.plan.limit)
        async with send:
            while not self.control.is_stopping:
                try:
                    batch = await anyio.to_thread.run_sync(next, batches, None)
                except InputError as exc:
                    # a corrupt part of the input: the rows read so far are still sent,
                    # then the run stops (checkpointed, not merged)
                    self._input_error = str(exc)
                    log.error("input.unreadable", error=self._input_error)
                    return
                if batch is None:
                    return
                for row in batch:
                    if self.control.is_stopping:
                        return
                    try:
                        await _put(send, row)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return

    async def _work(
        self,
        journey: RowJourney,
        rows: MemoryObjectReceiveStream[PromptRow],
        out: MemoryObjectSendStream[Outcome],
    ) -> None:
        """One worker: take a row, produce its outcomes (one per model), repeat, until the
        rows run out or the run stops."""
        async with rows, out:
            while (row := await _take(rows)) is not None:
                for index, model in enumerate(self.models):
                    if self.control.is_stopping:
                        return
                    try:
                        outcome = await journey.process(row, index, model)
                    except Stopped:
                        return
                    if outcome is not None:
                        await _put(out, outcome)

    async def _write(self, outcomes: MemoryObjectReceiveStream[Outcome], done: anyio.Event) -> None:
        """Collect outcomes, write a part file every second or every ``FLUSH_ROWS`` rows;
        compact part files beside it as they pile up (one compaction at a time)."""
        buffer: list[Outcome] = []
        deadline = time.monotonic() + FLUSH_INTERVAL_S
        compacting = anyio.Lock()
        async with outcomes, anyio.create_task_group() as compactions:
            while True:
                try:
                    outcome = _waiting(outcomes)
                except anyio.EndOfStream:
                    break
                if outcome is None:  # none waiting: wait, until the next flush at most
                    with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                        try:
                            outcome = await outcomes.receive()
                        except anyio.EndOfStream:
                            break
                if outcome is not None:
                    buffer.append(outcome)
                    self.stats.count_written(outcome)
                if len(buffer) >= FLUSH_ROWS or time.monotonic() >= deadline:
                    batch, buffer = buffer, []
                    if batch:
                        await anyio.to_thread.run_sync(self.writer.write_part, batch)
                    if not compacting.locked():
                        compactions.start_soon(self._compact, compacting)
                    deadline = time.monotonic() + FLUSH_INTERVAL_S
            await anyio.to_thread.run_sync(self.writer.write_part, buffer)
        await anyio.to_thread.run_sync(give_back)  # before the merge
        done.set()

    async def _compact(self, compacting: anyio.Lock) -> None:
        """Compact this run's part files in a thread while any are due."""
        async with compacting:
            while (due := self.writer.compaction_due()) is not None:
                await anyio.to_thread.run_sync(self.writer.compact, *due)
                await anyio.to_thread.run_sync(give_back)

    async def _draw(self) -> None:
        """Redraw the progress line until the run ends."""
        assert self.progress is not None
        while True:
            self.progress.draw(self.stats)
            await anyio.sleep(PROGRESS_INTERVAL_S)


def worker_count(concurrency: int, rows: int) -> int:
    """Twice ``concurrency`` workers (one waits while one sends), never more than rows."""
    return max(1, min(2 * concurrency, rows))


async def _put(send: MemoryObjectSendStream[T], item: T) -> None:
    """Send without yielding to the loop when the buffer has room (the common case)."""
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        await send.send(item)


async def _take(receive: MemoryObjectReceiveStream[T]) -> T | None:
    """The next item, without yielding to the loop when one is waiting (the common case);
    None once the stream has ended."""
    try:
        item = _waiting(receive)
        return item if item is not None else await receive.receive()
    except anyio.EndOfStream:
        return None


def _waiting(receive: MemoryObjectReceiveStream[T]) -> T | None:
    """An item already waiting (no cancel scope, no timer), else None; raises
    ``EndOfStream`` once the stream has ended."""
    try:
        item: T = receive.receive_nowait()
    except anyio.WouldBlock:
        return None
    return item


def _close_cache(cache: ResponseCache) -> None:
    """Write what the cache still buffers, then close it (blocking: run in a thread)."""
    cache.flush()
    cache.close()


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first non-group exception inside a (nested) exception group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
