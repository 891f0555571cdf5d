"""httpx client: auth styles, send one attempt, classify errors, parse choices and usage.

This is the only module that catches httpx (or aiohttp) exceptions; it re-raises
them as the ``AttemptError`` subclasses of ``pipeline.errors``. The API key lives
only in the request headers built here; error messages are scrubbed of it.

Transport: ``httpx.AsyncClient`` mounted on ``httpx_aiohttp.AiohttpTransport``
sized to the run's concurrency. httpcore's own pool costs about ten times more
CPU per request (see ``tests/bench``).
"""

from __future__ import annotations

import email.utils
import re
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aiohttp
import anyio
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from pipeline.errors import (
    AttemptError,
    AuthFailed,
    BadRequest,
    BadResponse,
    ConnectionFailed,
    NotFound,
    RateLimited,
    RequestTimeout,
    ServerError,
)
from pipeline.records import ChatRequest, RateLimitInfo, Reply
from pipeline.spec import EndpointSpec

_MAX_MESSAGE = 300
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def auth_headers(auth: str, api_key: str | None) -> dict[str, str]:
    """The header that carries the key in the endpoint's auth style."""
    if api_key is None or auth == "none":
        return {}
    if auth == "bearer":
        return {"Authorization": f"Bearer {api_key}"}
    return {auth: api_key}


def parse_retry_after(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def parse_duration(value: str | None) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"120ms"``, ``"1.5s"``; plain numbers are seconds."""
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


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None


def parse_rate_limits(headers: httpx.Headers) -> RateLimitInfo | None:
    """The ``x-ratelimit-*`` headers, when the server sends any."""
    if "x-ratelimit-remaining-requests" not in headers and "x-ratelimit-remaining-tokens" not in headers:
        return None
    return RateLimitInfo(
        limit_requests=_int_header(headers, "x-ratelimit-limit-requests"),
        limit_tokens=_int_header(headers, "x-ratelimit-limit-tokens"),
        remaining_requests=_int_header(headers, "x-ratelimit-remaining-requests"),
        remaining_tokens=_int_header(headers, "x-ratelimit-remaining-tokens"),
        reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
    )


def _server_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:_MAX_MESSAGE].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(data.get("message"), str):
            return str(data["message"])
    return body[:_MAX_MESSAGE].decode("utf-8", "replace").strip()


def error_for_status(
    status: int,
    message: str,
    retry_after_s: float | None,
    rate_limits: RateLimitInfo | None = None,
) -> AttemptError:
    """The error class for a non-200 status."""
    text = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    kind: type[AttemptError]
    if status == 429:
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


def parse_reply(body: bytes, status: int, latency_ms: float, rate_limits: RateLimitInfo | None) -> Reply:
    """A 200 body -> ``Reply``; anything unusable is ``BadResponse``."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadResponse(f"response body is not valid JSON ({exc.msg})", http_status=status) from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadResponse("response has no choices", http_status=status)
    choice: dict[str, Any] = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    usage = data.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    prompt_details, completion_details = usage.get("prompt_tokens_details"), usage.get("completion_tokens_details")
    return Reply(
        content=content if isinstance(content, str) else None,
        finish_reason=choice.get("finish_reason"),
        model=data.get("model"),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        total_tokens=usage.get("total_tokens"),
        http_status=status,
        latency_ms=latency_ms,
        rate_limits=rate_limits,
        cached_tokens=prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None,
        reasoning_tokens=completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None,
    )


def _transport_error(exc: BaseException) -> AttemptError:
    """A failure before a full answer arrived -> timeout or connection."""
    if isinstance(exc, TimeoutError):
        return RequestTimeout("timed out: no complete answer within endpoint.timeout_s")
    cause = exc.__cause__
    if isinstance(cause, TimeoutError | aiohttp.ServerTimeoutError):
        return RequestTimeout(f"timed out: {type(cause).__name__}")
    if isinstance(exc, httpx.TimeoutException) and cause is None:
        return RequestTimeout(f"timed out: {type(exc).__name__}")
    detail = str(cause or exc) or type(cause or exc).__name__
    return ConnectionFailed(f"connection failed: {detail}"[:_MAX_MESSAGE])


class ChatClient:
    """Sends chat-completions requests to one endpoint."""

    def __init__(
        self,
        endpoint: EndpointSpec,
        *,
        api_key: str | None,
        max_connections: int,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        root = (base_url or endpoint.base_url).rstrip("/")
        self.url = f"{root}/chat/completions"
        self._api_key = api_key
        self._timeout_s = endpoint.timeout_s
        headers = {"Content-Type": "application/json", **endpoint.headers}
        headers.update(auth_headers(endpoint.auth, api_key))
        self._http = httpx.AsyncClient(
            transport=transport
            or AiohttpTransport(
                limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
            ),
            headers=headers,
            params=endpoint.query or None,
            timeout=httpx.Timeout(endpoint.timeout_s),
            follow_redirects=False,
        )

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    async def send(self, request: ChatRequest) -> Reply:
        """One attempt: the reply, or an ``AttemptError`` saying what went wrong."""
        started = time.perf_counter()
        try:
            with anyio.fail_after(self._timeout_s):
                response = await self._http.post(self.url, content=request.body)
        except httpx.DecodingError as exc:
            raise BadResponse(f"response body could not be decoded: {exc}"[:_MAX_MESSAGE]) from None
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            error = _transport_error(exc)
            raise type(error)(self._scrub(error.message)) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        rate_limits = parse_rate_limits(response.headers)
        if response.status_code != 200:
            raise error_for_status(
                response.status_code,
                self._scrub(_server_message(response.content))[:_MAX_MESSAGE],
                parse_retry_after(response.headers),
                rate_limits,
            )
        return parse_reply(response.content, 200, latency_ms, rate_limits)
