"""One input row -> its outcome for one model, read top to bottom::

    build ▸ reuse? ▸ cached? ▸ send ▸ [parse ▸ re-ask] ▸ outcome ▸ (store in the cache)

A row that cannot become a request is an error row (nothing sent); a result an
earlier run already has is reused; an answer the response cache holds for the exact
request is taken (nothing sent, nothing paid); otherwise the sender answers it, and an
answer that made an ok row (JSON-valid in JSON mode) is stored in the cache. In JSON mode an
unusable answer is asked again with the next re-ask seed, up to ``json_retries``
times, each re-ask a new request through the same sender.
"""

from __future__ import annotations

import structlog

from pipeline.cache import Hit, ResponseCache
from pipeline.errors import AnswerError, AttemptError, BadRowError
from pipeline.records import ChatRequest, Ledger, Outcome, PromptRow, Reply, RunStats
from pipeline.runner import outcome
from pipeline.runner.outcome import Answer, Where
from pipeline.runner.prepare import RequestPreparer
from pipeline.runner.reuse import Reuse
from pipeline.runner.send import Sender
from pipeline.structured import Extraction

log = structlog.get_logger("pipeline")


class RowJourney:
    """The per-row script of one run; shared by all workers (one event loop)."""

    def __init__(
        self,
        *,
        prepare: RequestPreparer,
        reuse: Reuse | None,
        sender: Sender,
        extraction: Extraction | None,
        json_retries: int,
        models: int,
        default_model: str | None,
        source_name: str,
        stats: RunStats,
        cache: ResponseCache | None = None,
    ) -> None:
        self._prepare = prepare
        self._reuse = reuse
        self._sender = sender
        self._extraction = extraction
        self._json_retries = json_retries
        self._models = models
        self._default_model = default_model
        self._source_name = source_name
        self._stats = stats
        self._cache = cache

    async def process(self, row: PromptRow, index: int, model: str | None) -> Outcome | None:
        """The outcome of ``row`` for its ``index``-th model; None when reused from an earlier run."""
        where = Where(row, row.seq * self._models + index, outcome.now())
        try:
            request = await self._prepare.build(row, model)
        except BadRowError as exc:
            place = row.where(self._source_name)
            return outcome.unbuildable(
                where, model or self._default_model, place, exc, self._json_columns(None, 0)
            )
        if self._reuse is not None and self._reuse.take(row.id, where.seq, request.request_hash):
            return None
        if self._extraction is None:
            return await self._ask(where, request)
        return await self._extract(where, request, self._extraction)

    async def _ask(self, where: Where, request: ChatRequest) -> Outcome:
        """Plain mode: one request, its answer or its error."""
        ledger = Ledger()
        try:
            reply, hit, cost = await self._answer(where.row.id, request, ledger)
        except AttemptError as exc:
            return outcome.failed(
                where, request, ledger, exc, request_hash=request.request_hash, columns={}
            )
        self._remember(request, reply, hit, cost)
        return self._finish(where, request, reply, ledger, hit, request.request_hash, Answer())

    async def _answer(
        self, row_id: str, request: ChatRequest, ledger: Ledger
    ) -> tuple[Reply, Hit | None, float | None]:
        """The cached answer to ``request``, else the sender's; with what it cost (then)."""
        if self._cache is not None:
            hit = self._cache.lookup(request)
            if hit is not None:
                self._stats.count_cache_hit(hit.cost_usd)
                return hit.reply, hit, hit.cost_usd
        before = ledger.cost_usd
        reply = await self._sender.send(row_id, request, ledger)
        paid = ledger.cost_usd
        return reply, None, None if before is None or paid is None else paid - before

    def _remember(
        self, request: ChatRequest, reply: Reply, hit: Hit | None, cost: float | None
    ) -> None:
        """Store a bought answer that made an ok row."""
        if self._cache is not None and hit is None:
            self._cache.store(request, reply, cost)

    @staticmethod
    def _finish(
        where: Where,
        request: ChatRequest,
        reply: Reply,
        ledger: Ledger,
        hit: Hit | None,
        request_hash: str,
        answer: Answer,
    ) -> Outcome:
        """The row of an answer: bought now, or taken from the cache."""
        if hit is None:
            return outcome.answered(
                where, request, reply, ledger, request_hash=request_hash, answer=answer
            )
        return outcome.cached(
            where,
            request,
            reply,
            ledger,
            cached_cost_usd=hit.cost_usd,
            request_hash=request_hash,
            answer=answer,
        )

    async def _extract(self, where: Where, request: ChatRequest, extraction: Extraction) -> Outcome:
        """JSON mode: send, parse; re-ask (new seed) on an unusable answer.

        Usage and cost add up every answer of the row; ``seed`` and the reply columns are
        those of the last request, ``request_hash`` that of the first (what resume looks up).
        """
        chained = await self._reasked_before(where, request, extraction)
        if chained is not None:
            return chained
        ledger = Ledger()
        first, first_hash = request, request.request_hash
        reask = 0
        while True:
            try:
                reply, hit, cost = await self._answer(where.row.id, request, ledger)
            except AttemptError as exc:
                columns = self._json_columns(None, reask)
                return outcome.failed(
                    where, request, ledger, exc, request_hash=first_hash, columns=columns
                )
            try:
                value = extraction.parse(reply.content, reply.finish_reason)
            except AnswerError as exc:
                if reask < self._json_retries:
                    reask += 1
                    request = await self._reask(where.row, request, reask, exc)
                    continue
                answer = Answer(self._json_columns(None, reask + 1), exc)
            else:
                answer = Answer(self._json_columns(value, reask + 1))
                self._remember(request, reply, hit, cost)
                if reask and self._cache is not None:
                    self._cache.store_reask(first, reask, *outcome.row_total(reply, ledger, hit))
            return self._finish(where, request, reply, ledger, hit, first_hash, answer)

    async def _reasked_before(
        self, where: Where, first: ChatRequest, extraction: Extraction
    ) -> Outcome | None:
        """The row from the cache when an earlier run had to re-ask its first request and
        stored the valid answer it reached (None when the first request's own answer is
        cached: the loop takes it)."""
        cache = self._cache
        if cache is None or not self._json_retries or cache.lookup(first) is not None:
            return None
        hit = cache.lookup_reask(first, self._json_retries)
        if hit is None:
            return None
        try:
            value = extraction.parse(hit.reply.content, hit.reply.finish_reason)
        except AnswerError:
            return None
        request = await self._prepare.build(where.row, first.model, hit.reask)
        self._stats.count_cache_hit(hit.cost_usd)
        return outcome.cached(
            where,
            request,
            hit.reply,
            Ledger(),
            cached_cost_usd=hit.cost_usd,
            request_hash=first.request_hash,
            answer=Answer(self._json_columns(value, hit.reask + 1)),
        )

    async def _reask(
        self, row: PromptRow, request: ChatRequest, reask: int, exc: AnswerError
    ) -> ChatRequest:
        """The request asking again, after an unusable answer to ``request``."""
        log.info(
            "request.json_retry",
            id=row.id,
            json_attempt=reask,
            error_type=exc.error_type,
            error=exc.message,
            seed=request.seed,
        )
        self._stats.count_json_reask()
        return await self._prepare.build(row, request.model, reask)

    def _json_columns(self, value: object, json_attempts: int) -> dict[str, object]:
        """The JSON-mode columns of one outcome (none without JSON mode)."""
        return outcome.json_columns(self._extraction, value, json_attempts)
