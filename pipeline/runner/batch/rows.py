"""A row's state in batch mode, and the one place a line's result moves it on.

Each pending (row, model) is a ``BatchRow``: its ``Where``, the request now asked (the
first, or a JSON re-ask), its ``Ledger`` over every answered line, and how often it was
resubmitted. ``BatchRows.settle`` applies one line's result: an answer (parsed and maybe
re-asked in JSON mode), an HTTP error (an error row, classified like live ones), or an
unfinished line (resubmitted up to ``max_resubmits``). Rows end only through
``pipeline.runner.outcome``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio

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
    first_hash: str
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
            self.pending[seq] = BatchRow(where, request, request.request_hash)
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
                    request_hash=row.first_hash,
                    columns=self._json_columns(None, row.reask),
                ),
                batch_id,
            )
        price = self._prices.lookup(result.model, row.request.model)
        usd = reply_cost(price.for_batch() if price is not None else None, result.usage)
        row.ledger.answered(result.usage, usd)
        return await self._answered(row, result, batch_id)

    async def _answered(self, row: BatchRow, reply: Reply, batch_id: str) -> Outcome | None:
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
        return self._done(
            outcome.answered(
                row.where,
                row.request,
                reply,
                row.ledger,
                request_hash=row.first_hash,
                answer=answer,
            ),
            batch_id,
        )

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
                request_hash=row.first_hash,
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
