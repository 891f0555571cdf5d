"""Small frozen types shared by the stages: a prompt row, a request, a reply, an outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Message = dict[str, Any]
"""One OpenAI chat message: ``{"role": ..., "content": ...}``."""


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


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful chat-completions answer, reduced to what the output keeps.

    ``choices`` holds every choice's content (``content`` is the first's);
    ``tool_calls`` are the first choice's; ``ttft_ms`` is set for streamed answers.
    """

    content: str | None
    finish_reason: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    http_status: int
    latency_ms: float
    rate_limits: RateLimitInfo | None = None
    choices: tuple[str | None, ...] = ()
    tool_calls: tuple[ToolCall, ...] | None = None
    ttft_ms: float | None = None
    system_fingerprint: str | None = None
    response_id: str | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One output row: the result of a prompt row, ok or error.

    ``extra`` holds the values of columns a capability adds (JSON mode: ``parsed`` or
    ``parsed_json`` and ``json_attempts``); ``keep`` the kept input columns.
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
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
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
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    possibly_billed_attempts: int = 0


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run reports: counts, tokens, time, where the output went, how it ended.

    ``ended`` is ``"complete"``, ``"interrupted"`` (a signal), ``"aborted"`` (the
    endpoint refused everything) or ``"budget"`` (``limits.max_cost_usd`` reached);
    ``reason`` says why. ``cost_usd`` is what this run's answers cost (rows that could
    not be priced left out: ``unpriced_rows``); ``earlier_cost_usd`` what the results of
    earlier runs of the same output cost.
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
    ended: str = "complete"
    reason: str | None = None
    cost_usd: float = 0.0
    unpriced_rows: int = 0
    earlier_cost_usd: float = 0.0
    possibly_billed_attempts: int = 0

    @property
    def complete(self) -> bool:
        """Whether every row was processed and the output written."""
        return self.ended == "complete"
