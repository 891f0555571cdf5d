"""Small types shared by the stages: a prompt row, a request, a reply, an outcome, a run's counters."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

Message = dict[str, Any]
"""One OpenAI chat message: ``{"role": ..., "content": ...}``."""

MAX_HISTORY = 1000
"""Points of the in-flight limit's history a run keeps (``RunStats.count_concurrency``)."""


@dataclass(frozen=True, slots=True)
class PromptRow:
    """One input row, as read: its position, id, the values the request needs, kept columns.

    ``problem`` is set when the row could not even be read (a malformed JSON line);
    such a row becomes an error row without being sent.
    """

    seq: int
    id: str
    values: dict[str, Any]
    keep: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    line: int | None = None

    def where(self, source: str) -> str:
        """``"file: line N"`` for line-based inputs, ``"file: row N"`` otherwise."""
        return (
            f"{source}: line {self.line}" if self.line is not None else f"{source}: row {self.seq}"
        )


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A ready-to-send chat-completions body, canonically encoded.

    ``headers`` are the row's templated headers (None when the endpoint has none);
    ``model`` is the model asked for; ``max_tokens`` bounds the completion tokens of
    the whole answer (``max_tokens`` times ``n``), as rate limits and budgets count them.
    """

    body: bytes
    seed: int
    request_hash: str
    estimated_prompt_tokens: int
    max_tokens: int | None
    model: str | None = None
    headers: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What the server's ``x-ratelimit-*`` headers said (``None`` where absent)."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asked for (``arguments`` is the JSON text it wrote)."""

    id: str | None
    name: str | None
    arguments: str | None


def _plus(total: int | None, more: int | None) -> int | None:
    """Add token counts; None only while nothing was reported."""
    if more is None:
        return total
    return more if total is None else total + more


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as a server reported them (``None`` where it did not); adds with ``+``.

    ``cached_tokens`` are part of ``prompt_tokens``; ``reasoning_tokens`` part of
    ``completion_tokens`` as OpenAI counts them (``pipeline.cost`` knows the exception).
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            _plus(self.prompt_tokens, other.prompt_tokens),
            _plus(self.completion_tokens, other.completion_tokens),
            _plus(self.total_tokens, other.total_tokens),
            _plus(self.cached_tokens, other.cached_tokens),
            _plus(self.reasoning_tokens, other.reasoning_tokens),
        )


USAGE_COLUMNS: tuple[str, ...] = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
)
"""The output columns that come from an outcome's ``Usage``."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful chat-completions answer, reduced to what the output keeps.

    ``choices`` holds every choice's content (``content`` is the first's);
    ``tool_calls`` are the first choice's; ``ttft_ms`` is set for streamed answers.
    """

    content: str | None
    finish_reason: str | None
    model: str | None
    http_status: int
    latency_ms: float
    usage: Usage = Usage()
    rate_limits: RateLimitInfo | None = None
    choices: tuple[str | None, ...] = ()
    tool_calls: tuple[ToolCall, ...] | None = None
    ttft_ms: float | None = None
    system_fingerprint: str | None = None
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One output row: the result of a prompt row, ok or error.

    ``extra`` holds the values of columns a capability adds (JSON mode: ``parsed`` or
    ``parsed_json`` and ``json_attempts``); ``keep`` the kept input columns.
    ``cache_hit``: the answer came from the response cache (``cost_usd`` is what this run
    paid, ``cached_cost_usd`` what the cached answer cost when it was bought).
    """

    seq: int
    id: str
    status: str
    started_at: datetime
    finished_at: datetime
    attempts: int
    seed: int | None = None
    request_hash: str | None = None
    content: str | None = None
    finish_reason: str | None = None
    model: str | None = None
    usage: Usage = Usage()
    latency_ms: float | None = None
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    system_fingerprint: str | None = None
    response_id: str | None = None
    choices: tuple[str | None, ...] | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    ttft_ms: float | None = None
    keep: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    cost_usd: float | None = 0.0
    possibly_billed_attempts: int = 0
    cache_hit: bool = False
    cached_cost_usd: float | None = None
    batch_id: str | None = None
    """The provider batch that answered the row (batch mode only)."""


@dataclass(slots=True)
class Ledger:
    """What one (row, model) cost so far, over all its attempts and JSON re-asks.

    ``attempts`` counts HTTP requests sent; ``usage`` adds every answer received;
    ``cost_usd`` sums their prices (``None`` once one could not be priced: never a
    guess); ``possibly_billed`` counts attempts sent whose answer never arrived in full.
    """

    attempts: int = 0
    usage: Usage = Usage()
    cost_usd: float | None = 0.0
    possibly_billed: int = 0

    def sent(self) -> None:
        """One more HTTP request left for this row."""
        self.attempts += 1

    def answered(self, usage: Usage, cost_usd: float | None) -> None:
        """An answer arrived: add its usage and its price (``None``: it could not be priced)."""
        self.usage += usage
        self.cost_usd = (
            None if cost_usd is None or self.cost_usd is None else self.cost_usd + cost_usd
        )

    def lost(self) -> None:
        """An attempt was sent but its answer never arrived in full (may be billed)."""
        self.possibly_billed += 1


class Ended(StrEnum):
    """How a run ended; the lifecycle maps it to an exit code."""

    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    """SIGINT (Ctrl-C): checkpointed, resumable."""
    TERMINATED = "terminated"
    """SIGTERM (a scheduler stopping the run): checkpointed, resumable."""
    ABORTED = "aborted"
    """The endpoint refused every request (bad key, unknown model or path)."""
    BUDGET = "budget"
    """``limits.max_cost_usd`` would be passed."""
    INPUT_FAILED = "input_failed"
    """A part of the input could not be read mid-run: checkpointed, the error names it."""
    PENDING = "pending"
    """Batch mode with ``--no-wait``: batches are still running; run again later."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run reports: counts, tokens, time, where the output went, how it ended.

    ``ended`` says how the run ended and ``reason`` why. ``cost_usd`` is what this run's answers cost (rows that could
    not be priced left out: ``unpriced_rows``); ``earlier_cost_usd`` what the results of
    earlier runs of the same output cost. ``cache_hits`` rows were answered from the
    response cache, which saved ``cache_saved_usd`` (their original cost).
    """

    output_path: str
    rows_total: int
    rows_ok: int
    rows_error: int
    errors_by_type: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    requests_sent: int
    elapsed_s: float
    json_reasks: int = 0
    rows_reused: int = 0
    rows_sent: int = 0
    ended: Ended = Ended.COMPLETE
    reason: str | None = None
    cost_usd: float = 0.0
    unpriced_rows: int = 0
    earlier_cost_usd: float = 0.0
    possibly_billed_attempts: int = 0
    cache_hits: int = 0
    cache_saved_usd: float = 0.0
    concurrency: int | None = None
    """With ``concurrency = "auto"``: the in-flight limit at the end (None: fixed)."""
    concurrency_history: tuple[tuple[float, int], ...] = ()
    """With ``concurrency = "auto"``: (seconds since the run started, limit) at each change."""

    @property
    def complete(self) -> bool:
        """Whether every row was processed and the output written."""
        return self.ended is Ended.COMPLETE


@dataclass
class RunStats:
    """A run's live counters (one event loop: no locks needed); the ``count_*`` methods
    are their only updaters, ``summary`` the one place they become a ``RunSummary``."""

    total: int
    done: int = 0
    ok: int = 0
    error: int = 0
    requests: int = 0
    reused: int = 0
    sent: int = 0
    json_reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors_by_type: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    cost_usd: float = 0.0
    unpriced: int = 0
    earlier_cost_usd: float = 0.0
    possibly_billed: int = 0
    cache_hits: int = 0
    cache_saved_usd: float = 0.0
    concurrency: int | None = None
    concurrency_history: list[tuple[float, int]] = field(default_factory=list)

    def count_request(self) -> None:
        """One HTTP request is about to be sent."""
        self.requests += 1

    def count_json_reask(self) -> None:
        """One JSON-mode answer was unusable and is asked again."""
        self.json_reasks += 1

    def count_earlier_cost(self, usd: float) -> None:
        """What the earlier results of this output cost (read before the run starts)."""
        self.earlier_cost_usd += usd

    def count_cache_hit(self, saved_usd: float | None) -> None:
        """One answer taken from the response cache instead of being bought again
        (``saved_usd``: what it cost originally; None when it could not be priced)."""
        self.cache_hits += 1
        self.cache_saved_usd += saved_usd or 0.0

    def count_reused(self, *, ok: bool, error_type: str | None) -> None:
        """One row taken from an earlier run's results, sent nothing."""
        self.reused += 1
        self._count_row(ok=ok, error_type=error_type)

    def count_written(self, outcome: Outcome) -> None:
        """One outcome of this run handed to the writer."""
        self.sent += outcome.attempts > 0
        self._count_row(ok=outcome.status == "ok", error_type=outcome.error_type)
        self.prompt_tokens += outcome.usage.prompt_tokens or 0
        self.completion_tokens += outcome.usage.completion_tokens or 0
        if outcome.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost_usd += outcome.cost_usd
        self.possibly_billed += outcome.possibly_billed_attempts

    def count_concurrency(self, limit: int) -> None:
        """The in-flight limit (``concurrency = "auto"``) is now ``limit``; the history keeps
        at most ``MAX_HISTORY`` points (every other one dropped when full)."""
        self.concurrency = limit
        history = self.concurrency_history
        history.append((round(self.elapsed_s, 3), limit))
        if len(history) > MAX_HISTORY:
            history[1:-1] = history[2:-1:2]

    def _count_row(self, *, ok: bool, error_type: str | None) -> None:
        self.done += 1
        if ok:
            self.ok += 1
        else:
            self.error += 1
            self.errors_by_type[error_type or "unknown"] += 1

    def summary(self, output_path: str, ended: Ended, reason: str | None) -> RunSummary:
        """The run's summary: the one place counters become what is reported."""
        return RunSummary(
            output_path=output_path,
            rows_total=self.done,
            rows_ok=self.ok,
            rows_error=self.error,
            errors_by_type=dict(self.errors_by_type),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            requests_sent=self.requests,
            elapsed_s=self.elapsed_s,
            rows_reused=self.reused,
            rows_sent=self.sent,
            ended=ended,
            reason=reason,
            json_reasks=self.json_reasks,
            cost_usd=self.cost_usd,
            unpriced_rows=self.unpriced,
            earlier_cost_usd=self.earlier_cost_usd,
            possibly_billed_attempts=self.possibly_billed,
            cache_hits=self.cache_hits,
            cache_saved_usd=self.cache_saved_usd,
            concurrency=self.concurrency,
            concurrency_history=tuple(self.concurrency_history),
        )

    @property
    def projected_cost_usd(self) -> float | None:
        """Spent so far (earlier runs included) plus this run's cost per row times the rows left."""
        sent = self.done - self.reused
        if sent <= 0:
            return None
        return (
            self.earlier_cost_usd
            + self.cost_usd
            + self.cost_usd / sent * max(0, self.total - self.done)
        )

    @property
    def elapsed_s(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started
