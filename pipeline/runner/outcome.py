"""The only place a reply, a ledger or an error becomes an output row (``Outcome``).

Pure functions: every sender (live, batch) and the per-row script end a row through
them, so every way of sending writes the same columns. ``Where`` holds what all
outcomes of one (row, model) share; ``Answer`` the JSON-mode result of an answer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipeline.cache import Hit
from pipeline.errors import AnswerError, AttemptError, BadRowError
from pipeline.records import ChatRequest, Ledger, Outcome, PromptRow, Reply
from pipeline.structured import Extraction


def now() -> datetime:
    """The current time in UTC (what ``started_at`` and ``finished_at`` hold)."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Where:
    """One (row, model): the input row, its output position, when work on it started."""

    row: PromptRow
    seq: int
    started: datetime


@dataclass(frozen=True, slots=True)
class Answer:
    """What JSON mode made of an answer: the typed value or the reason it is unusable,
    and the columns it fills (``parsed``/``parsed_json`` and ``json_attempts``)."""

    columns: dict[str, object] = field(default_factory=dict)
    error: AnswerError | None = None


def json_columns(
    extraction: Extraction | None, value: object, json_attempts: int
) -> dict[str, object]:
    """The JSON-mode columns of one outcome (none without JSON mode)."""
    if extraction is None:
        return {}
    return {extraction.column.name: value, "json_attempts": json_attempts}


def unbuildable(
    where: Where, model: str | None, place: str, exc: BadRowError, columns: dict[str, object]
) -> Outcome:
    """The error row of an input row that could not become a request (nothing sent)."""
    return Outcome(
        seq=where.seq,
        id=where.row.id,
        status="error",
        started_at=where.started,
        finished_at=where.started,
        attempts=0,
        model=model,
        error_type=exc.error_type,
        error_message=f"{place}: {exc}",
        keep=where.row.keep,
        extra=columns,
    )


def answered(
    where: Where,
    request: ChatRequest,
    reply: Reply,
    ledger: Ledger,
    *,
    request_hash: str,
    answer: Answer,
) -> Outcome:
    """The row of a request that got an HTTP answer (``answer.error``: unusable in JSON mode).

    Usage and cost are the ledger's (every answer of the row); ``request_hash`` is the
    row's identity, that of its first request; the rest is the last reply's.
    """
    error = answer.error
    return Outcome(
        seq=where.seq,
        id=where.row.id,
        status="ok" if error is None else "error",
        started_at=where.started,
        finished_at=now(),
        attempts=ledger.attempts,
        seed=request.seed,
        request_hash=request_hash,
        content=reply.content,
        finish_reason=reply.finish_reason,
        model=reply.model,
        usage=ledger.usage,
        latency_ms=reply.latency_ms,
        http_status=reply.http_status,
        error_type=error.error_type if error else None,
        error_message=error.message if error else None,
        system_fingerprint=reply.system_fingerprint,
        response_id=reply.response_id,
        choices=reply.choices,
        tool_calls=reply.tool_calls,
        ttft_ms=reply.ttft_ms,
        keep=where.row.keep,
        extra=answer.columns,
        cost_usd=ledger.cost_usd,
        possibly_billed_attempts=ledger.possibly_billed,
    )


def failed(
    where: Where,
    request: ChatRequest,
    ledger: Ledger,
    exc: AttemptError,
    *,
    request_hash: str,
    columns: dict[str, object],
) -> Outcome:
    """The error row of a request that never got a usable HTTP answer (after retries)."""
    return Outcome(
        seq=where.seq,
        id=where.row.id,
        status="error",
        started_at=where.started,
        finished_at=now(),
        attempts=ledger.attempts,
        seed=request.seed,
        request_hash=request_hash,
        model=request.model,
        usage=ledger.usage,
        http_status=exc.http_status,
        error_type=exc.error_type,
        error_message=exc.message,
        keep=where.row.keep,
        extra=columns,
        cost_usd=ledger.cost_usd,
        possibly_billed_attempts=ledger.possibly_billed,
    )


def cached(
    where: Where,
    request: ChatRequest,
    reply: Reply,
    ledger: Ledger,
    *,
    cached_cost_usd: float | None,
    request_hash: str,
    answer: Answer,
) -> Outcome:
    """The row of a request answered from the response cache: ``cache_hit``, the cached
    reply's columns and usage (added to what the ledger paid for earlier answers of the
    row, in JSON mode), ``cost_usd`` what this run paid (the ledger: 0 when nothing was
    sent), ``cached_cost_usd`` what the cached answer cost when it was bought. No latency
    or HTTP status: nothing was sent for it."""
    row = answered(where, request, reply, ledger, request_hash=request_hash, answer=answer)
    return dataclasses.replace(
        row,
        usage=ledger.usage + reply.usage,
        latency_ms=None,
        http_status=None,
        ttft_ms=None,
        cache_hit=True,
        cached_cost_usd=cached_cost_usd,
    )


def row_total(reply: Reply, ledger: Ledger, hit: Hit | None) -> tuple[Reply, float | None]:
    """``reply`` with the usage of all the row's answers, and what they all cost (the
    ledger's, plus the cached last answer's when it came from the cache): what the response
    cache stores for a row that needed JSON re-asks, in live and batch mode alike."""
    if hit is None:
        return dataclasses.replace(reply, usage=ledger.usage), ledger.cost_usd
    paid, cached = ledger.cost_usd, hit.cost_usd
    total = None if paid is None or cached is None else paid + cached
    return dataclasses.replace(reply, usage=ledger.usage + reply.usage), total
