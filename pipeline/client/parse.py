"""What the server said: status -> error class, ``Retry-After``, ``x-ratelimit-*``, and a
completion body -> ``Reply`` (choices, tool calls, usage, fingerprint, id)."""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.errors import (
    AttemptError,
    AuthFailed,
    BadRequest,
    BadResponse,
    NotFound,
    QuotaExhausted,
    RateLimited,
    RequestTimeout,
    ServerError,
)
from pipeline.records import RateLimitInfo, Reply, ToolCall, Usage

MAX_MESSAGE = 300
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _finite(text: str) -> float | None:
    """A finite number, or None (``inf`` and ``nan`` are not waits)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    """A token count as reported, or None when it is not a whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        seconds = _finite(millis)
        if seconds is not None:
            return max(0.0, seconds / 1000.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _finite(value)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@functools.lru_cache(maxsize=1024)
def parse_duration(value: str | None) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"120ms"``, ``"1.5s"``; plain numbers are
    seconds. Cached: a server repeats a few values in every answer."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts:
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


def parse_rate_limits(headers: Mapping[str, str]) -> RateLimitInfo | None:
    """The ``x-ratelimit-*`` headers, when the server sends any."""
    if (
        "x-ratelimit-remaining-requests" not in headers
        and "x-ratelimit-remaining-tokens" not in headers
    ):
        return None
    return RateLimitInfo(
        limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


def server_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:MAX_MESSAGE].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return body[:MAX_MESSAGE].decode("utf-8", "replace").strip()


def server_code(body: bytes) -> str | None:
    """The ``error.code`` (else ``error.type``) of an OpenAI-style error body, if any."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None
    for key in ("code", "type"):
        if isinstance(error.get(key), str):
            return str(error[key])
    return None


def error_for_status(
    status: int,
    message: str,
    retry_after_s: float | None,
    rate_limits: RateLimitInfo | None = None,
    code: str | None = None,
) -> AttemptError:
    """The error class for a non-200 status (``code``: the body's ``error.code``)."""
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    kind: type[AttemptError]
    if status == 429 and code == "insufficient_quota":
        kind = QuotaExhausted
    elif status == 429:
        kind = RateLimited
    elif status == 408:
        kind = RequestTimeout
    elif status == 409 or status >= 500:
        kind = ServerError
    elif status in (401, 403):
        kind = AuthFailed
    elif status == 404:
        kind = NotFound
    elif 300 <= status < 400:
        text = f"HTTP {status}: unexpected redirect; check endpoint.base_url"
        kind = BadRequest
    else:
        kind = BadRequest
    return kind(text, http_status=status, retry_after_s=retry_after_s, rate_limits=rate_limits)


def parse_reply(
    body: bytes, status: int, latency_ms: float, rate_limits: RateLimitInfo | None
) -> Reply:
    """A 200 body -> ``Reply``; anything unusable is ``BadResponse``."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadResponse(
            f"response body is not valid JSON ({exc.msg})", http_status=status
        ) from None
    return reply_from(data, status, latency_ms, rate_limits)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _content(choice: Any) -> str | None:
    message = choice.get("message") if isinstance(choice, dict) else None
    return _text(message.get("content")) if isinstance(message, dict) else None


def _tool_calls(choice: dict[str, Any]) -> tuple[ToolCall, ...] | None:
    """The first choice's tool calls as (id, name, arguments); None when it made none."""
    message = choice.get("message")
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list) or not calls:
        return None
    found: list[ToolCall] = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            found.append(
                ToolCall(
                    _text(call.get("id")),
                    _text(function.get("name")),
                    _text(function.get("arguments")),
                )
            )
    return tuple(found) or None


def reply_from(
    data: Any,
    status: int,
    latency_ms: float,
    rate_limits: RateLimitInfo | None,
    ttft_ms: float | None = None,
) -> Reply:
    """A decoded ``chat.completion`` object -> ``Reply``; no choices is ``BadResponse``."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadResponse("response has no choices", http_status=status)
    choice: dict[str, Any] = choices[0]
    content = _content(choice)
    return Reply(
        content=content,
        finish_reason=choice.get("finish_reason"),
        model=data.get("model"),
        http_status=status,
        latency_ms=latency_ms,
        usage=usage_from(data.get("usage")),
        rate_limits=rate_limits,
        choices=(content,) if len(choices) == 1 else tuple(_content(c) for c in choices),
        tool_calls=_tool_calls(choice),
        ttft_ms=ttft_ms,
        system_fingerprint=_text(data.get("system_fingerprint")),
        response_id=_text(data.get("id")),
    )


def scrubbed_reply(reply: Reply, scrub: Callable[[str], str]) -> Reply:
    """``reply`` with ``scrub`` applied to every string the server chose (``reply`` itself
    when none holds a secret: the usual case costs no copy)."""

    def clean(text: str | None) -> str | None:
        return None if text is None else scrub(text)

    calls = reply.tool_calls
    texts = [reply.content, reply.finish_reason, reply.model, *reply.choices]
    texts += [reply.system_fingerprint, reply.response_id]
    for call in calls or ():
        texts += [call.id, call.name, call.arguments]
    if all(text is None or scrub(text) == text for text in texts):
        return reply
    return dataclasses.replace(
        reply,
        content=clean(reply.content),
        finish_reason=clean(reply.finish_reason),
        model=clean(reply.model),
        choices=tuple(clean(c) for c in reply.choices),
        tool_calls=None
        if calls is None
        else tuple(ToolCall(clean(c.id), clean(c.name), clean(c.arguments)) for c in calls),
        system_fingerprint=clean(reply.system_fingerprint),
        response_id=clean(reply.response_id),
    )


def usage_from(usage: Any) -> Usage:
    """An OpenAI ``usage`` object -> ``Usage``; anything not a whole number is left out."""
    if not isinstance(usage, dict):
        return Usage()
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    return Usage(
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        total_tokens=_count(usage.get("total_tokens")),
        cached_tokens=(
            _count(prompt_details.get("cached_tokens"))
            if isinstance(prompt_details, dict)
            else None
        ),
        reasoning_tokens=(
            _count(completion_details.get("reasoning_tokens"))
            if isinstance(completion_details, dict)
            else None
        ),
    )
