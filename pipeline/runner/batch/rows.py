"""A row's state in batch mode, and the one place a line's result moves it on.

Each pending (row, model) is a ``BatchRow``: its ``Where``, the request now asked (the
first, or a JSON re-ask), its ``Ledger`` over every answered line, and how often it was
resubmitted. ``BatchRows.settle`` applies one line's result: an answer (parsed and maybe
re-asked in JSON mode), an HTTP error (an error row, classified like live ones), or an
unfinished line (resubmitted up to ``max_resubmits``). Rows end only through
``pipeline.runner.outcome``.

With a response cache, ``take_cached`` runs before a row goes into a batch file: a row
whose request the cache answers is a cache-hit row and never submitted (a JSON re-ask
the cache answers too, as in live mode). An answered line that makes an ok row (JSON-valid
in JSON mode) is stored with the batch price it cost, so live and batch runs share entries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio

from pipeline.cache import Hit, ResponseCache
from pipeline.cost import reply_cost
from pipeline.errors import AnswerError, AttemptError, BadRowError, RequestTimeout
from pipeline.prices import PriceTable
from pipeline.records import ChatRequest, Ledger, Outcome, PromptRow, Reply, RunStats
from pipeline.runner import outcome
from pipeline.runner.batch.lines import LineResult, Unfinished, custom_id
from pipeline.runner.outcome import Answer, Where
from pipeline.runner.prepare import RequestPreparer
from pipeline.runner.reuse import Reuse
from pipeline.structured import Extraction


@dataclass
class BatchRow:
    """One (row, model) not done yet."""

    where: Where
    request: ChatRequest
    first: ChatRequest
    """The row's first request: its hash is the row's identity (what resume looks up)."""
    reask: int = 0
    resubmits: int = 0
    ledger: Ledger = field(default_factory=Ledger)
    line_id: str = ""

    def __post_init__(self) -> None:
        self.line_id = custom_id(self.where.seq, self.reask, self.request)


class BatchRows:
    """The pending rows of a batch run, by output position."""

    def __init__(
        self,
        *,
        prepare: RequestPreparer,
        extraction: Extraction | None,
        json_retries: int,
        max_resubmits: int,
        prices: PriceTable,
        stats: RunStats,
        source_name: str,
        default_model: str | None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.pending: dict[int, BatchRow] = {}
        self._source_name = source_name
        self._default_model = default_model
        self._prepare = prepare
        self._extraction = extraction
        self._json_retries = json_retries
        self._max_resubmits = max_resubmits
        self._prices = prices
        self._stats = stats
        self._cache = cache

    async def admit(
        self, row: PromptRow, seq: int, model: str | None, reuse: Reuse | None
    ) -> Outcome | None:
        """Build ▸ reuse? ▸ pending: the error row of a row that cannot become a request,
        else None (reused from an earlier run, or pending)."""
        where = Where(row, seq, outcome.now())
        try:
            request = await self._prepare.build(row, model)
        except BadRowError as exc:
            place = row.where(self._source_name)
            return outcome.unbuildable(
                where, model or self._default_model, place, exc, self._json_columns(None, 0)
            )
        if reuse is None or not reuse.take(row.id, seq, request.request_hash):
            self.pending[seq] = BatchRow(where, request, request)
        return None

    async def admit_all(
        self, batches: Iterator[list[PromptRow]], models: list[str | None], reuse: Reuse | None
    ) -> list[Outcome]:
        """Every input row (batches read off the event loop), for every model; the error
        rows of those that cannot become requests."""
        unbuildable: list[Outcome] = []
        while (batch := await anyio.to_thread.run_sync(next, batches, None)) is not None:
            for row in batch:
                for index, model in enumerate(models):
                    made = await self.admit(row, row.seq * len(models) + index, model, reuse)
                    if made is not None:
                        unbuildable.append(made)
        return unbuildable

    def row_of(self, line_id: str, seq: int) -> BatchRow | None:
        """The pending row this line asks for now (None: done, or an older ask)."""
        row = self.pending.get(seq)
        return row if row is not None and row.line_id == line_id else None

    async def settle(self, row: BatchRow, result: LineResult, batch_id: str) -> Outcome | None:
        """Apply one line's result; the row's outcome when it is done."""
        if isinstance(result, Unfinished):
            if result.code == "request_timeout":
                row.ledger.sent()
                row.ledger.lost()
                self._stats.count_request()
            return self._unfinished(row, result)
        row.ledger.sent()
        self._stats.count_request()
        if isinstance(result, AttemptError):
            return self._done(
                outcome.failed(
                    row.where,
                    row.request,
                    row.ledger,
                    result,
                    request_hash=row.first.request_hash,
                    columns=self._json_columns(None, row.reask),
                ),
                batch_id,
            )
        price = self._prices.lookup(result.model, row.request.model)
        usd = reply_cost(price.for_batch() if price is not None else None, result.usage)
        row.ledger.answered(result.usage, usd)
        return await self._answered(row, result, batch_id, usd)

    async def _answered(
        self, row: BatchRow, reply: Reply, batch_id: str, usd: float | None
    ) -> Outcome | None:
        answer = Answer()
        if self._extraction is not None:
            try:
                value = self._extraction.parse(reply.content, reply.finish_reason)
            except AnswerError as exc:
                if row.reask < self._json_retries:
                    await self._reask(row)
                    return None
                answer = Answer(self._json_columns(None, row.reask + 1), exc)
            else:
                answer = Answer(self._json_columns(value, row.reask + 1))
        if answer.error is None:
            self._remember(row, reply, usd, None)
        return self._done(
            outcome.answered(
                row.where,
                row.request,
                reply,
                row.ledger,
                request_hash=row.first.request_hash,
                answer=answer,
            ),
            batch_id,
        )

    async def take_cached(self, rows: list[BatchRow]) -> list[Outcome]:
        """Before ``rows`` go into a batch file: the outcomes of those the response cache
        answers (no longer pending); the others stay pending, maybe at a JSON re-ask."""
        taken: list[Outcome] = []
        if self._cache is None:
            return taken
        for row in rows:
            made = await self._from_cache(row, self._cache)
            if made is not None:
                taken.append(made)
        return taken

    async def _from_cache(self, row: BatchRow, cache: ResponseCache) -> Outcome | None:
        """The row's outcome when the cache answers its request, else None (live mode's
        rules: a cached answer JSON mode cannot use is asked again with the next seed)."""
        if row.reask == 0:
            chained = await self._reasked_before(row, cache)
            if chained is not None:
                return chained
        while (hit := cache.lookup(row.request)) is not None:
            self._stats.count_cache_hit(hit.cost_usd)
            answer = Answer()
            if self._extraction is not None:
                try:
                    value = self._extraction.parse(hit.reply.content, hit.reply.finish_reason)
                except AnswerError as exc:
                    if row.reask < self._json_retries:
                        await self._reask(row)
                        continue
                    answer = Answer(self._json_columns(None, row.reask + 1), exc)
                else:
                    answer = Answer(self._json_columns(value, row.reask + 1))
            if answer.error is None:
                self._remember(row, hit.reply, None, hit)
            return self._done(self._cached(row, row.request, hit, answer), None)
        return None

    async def _reasked_before(self, row: BatchRow, cache: ResponseCache) -> Outcome | None:
        """The row from the cache when an earlier run re-asked its first request and stored
        the valid answer it reached (None when the first request's own answer is cached)."""
        if self._extraction is None or not self._json_retries:
            return None
        if cache.lookup(row.first) is not None:
            return None
        hit = cache.lookup_reask(row.first, self._json_retries)
        if hit is None:
            return None
        try:
            value = self._extraction.parse(hit.reply.content, hit.reply.finish_reason)
        except AnswerError:
            return None
        request = await self._prepare.build(row.where.row, row.first.model, hit.reask)
        self._stats.count_cache_hit(hit.cost_usd)
        answer = Answer(self._json_columns(value, hit.reask + 1))
        return self._done(self._cached(row, request, hit, answer), None)

    @staticmethod
    def _cached(row: BatchRow, request: ChatRequest, hit: Hit, answer: Answer) -> Outcome:
        return outcome.cached(
            row.where,
            request,
            hit.reply,
            row.ledger,
            cached_cost_usd=hit.cost_usd,
            request_hash=row.first.request_hash,
            answer=answer,
        )

    def _remember(self, row: BatchRow, reply: Reply, usd: float | None, hit: Hit | None) -> None:
        """Store an answer that made an ok row: bought now (``usd``, at the batch price), or
        a cached one reached after re-asks (then only the chain from the first request)."""
        if self._cache is None:
            return
        if hit is None:
            self._cache.store(row.request, reply, usd)
        if row.reask:
            self._cache.store_reask(
                row.first, row.reask, *outcome.row_total(reply, row.ledger, hit)
            )

    async def flush_cache(self, at_least: int = 1) -> None:
        """Write the answers the cache buffers (in a thread) once there are ``at_least``."""
        if self._cache is not None and self._cache.pending >= at_least:
            await anyio.to_thread.run_sync(self._cache.flush)

    async def _reask(self, row: BatchRow) -> None:
        """The row goes into a follow-up batch, asked again with the next re-ask seed."""
        row.reask += 1
        row.request = await self._prepare.build(row.where.row, row.request.model, row.reask)
        row.line_id = custom_id(row.where.seq, row.reask, row.request)
        self._stats.count_json_reask()

    def _unfinished(self, row: BatchRow, result: Unfinished) -> Outcome | None:
        """Resubmit, unless it has been resubmitted ``max_resubmits`` times already."""
        if row.resubmits < self._max_resubmits:
            row.resubmits += 1
            return None
        error = RequestTimeout(f"{result.code}: {result.message} (after {row.resubmits} resubmits)")
        error.error_type = result.code
        return self._done(
            outcome.failed(
                row.where,
                row.request,
                row.ledger,
                error,
                request_hash=row.first.request_hash,
                columns=self._json_columns(None, row.reask),
            ),
            None,
        )

    def _done(self, made: Outcome, batch_id: str | None) -> Outcome:
        del self.pending[made.seq]
        # a batch line has no latency of its own: the batch's time is not the request's
        return dataclasses.replace(made, batch_id=batch_id, latency_ms=None)

    def _json_columns(self, value: object, json_attempts: int) -> dict[str, object]:
        return outcome.json_columns(self._extraction, value, json_attempts)
