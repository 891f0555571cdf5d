"""Tests of the chat client against ``httpx.MockTransport``: no network."""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anyio
import httpx
import orjson
import pytest

from pipeline.client import (
    ChatClient,
    auth_headers,
    error_for_status,
    parse_duration,
    parse_rate_limits,
    parse_retry_after,
)
from pipeline.errors import (
    AttemptError,
    AuthFailed,
    BadRequest,
    BadResponse,
    ConnectionFailed,
    FatalError,
    NotFound,
    NotSent,
    RateLimited,
    RequestTimeout,
    RetryableError,
    ServerError,
)
from pipeline.records import ChatRequest, RateLimitInfo, Reply
from pipeline.spec import EndpointSpec

KEY = "sk-test-0123456789abcdefSECRET"
BASE_URL = "https://llm.example.test/v1"

Handler = Callable[[httpx.Request], Any]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chat_request(body: dict[str, Any] | None = None) -> ChatRequest:
    encoded = orjson.dumps(body or {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    return ChatRequest(
        body=encoded, seed=1, request_hash="h", estimated_prompt_tokens=5, max_tokens=None
    )


def completion(content: str | None = "Hello!", **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
        **extra,
    }


async def send(
    handler: Handler,
    *,
    api_key: str | None = KEY,
    request: ChatRequest | None = None,
    **endpoint: Any,
) -> Reply:
    spec = EndpointSpec(**{"base_url": BASE_URL, **endpoint})
    async with ChatClient(
        spec, api_key=api_key, max_connections=4, transport=httpx.MockTransport(handler)
    ) as client:
        return await client.send(request or chat_request())


async def send_error(handler: Handler, **kwargs: Any) -> AttemptError:
    with pytest.raises(AttemptError) as info:
        await send(handler, **kwargs)
    return info.value


def recording(response: httpx.Response | None = None) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response or httpx.Response(200, json=completion())

    return handler, seen


# ---- the request ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [
        ("bearer", "authorization", f"Bearer {KEY}"),
        ("x-api-key", "x-api-key", KEY),
        ("api-key", "api-key", KEY),
    ],
)
async def test_auth_header_styles(auth: str, header: str, value: str) -> None:
    handler, seen = recording()
    await send(handler, auth=auth)

    (request,) = seen
    assert request.headers[header] == value
    others = {"authorization", "x-api-key", "api-key"} - {header}
    assert not others & set(request.headers.keys())


@pytest.mark.anyio
@pytest.mark.parametrize(("auth", "api_key"), [("none", KEY), ("bearer", None)])
async def test_no_auth_header(auth: str, api_key: str | None) -> None:
    handler, seen = recording()
    await send(handler, auth=auth, api_key=api_key)

    (request,) = seen
    assert {"authorization", "x-api-key", "api-key"}.isdisjoint(request.headers.keys())
    assert KEY not in str(request.headers)


def test_auth_headers_function() -> None:
    assert auth_headers("bearer", "k") == {"Authorization": "Bearer k"}
    assert auth_headers("x-api-key", "k") == {"x-api-key": "k"}
    assert auth_headers("api-key", "k") == {"api-key": "k"}
    assert auth_headers("none", "k") == {}
    assert auth_headers("bearer", None) == {}


@pytest.mark.anyio
async def test_extra_headers_query_and_url() -> None:
    handler, seen = recording()
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": 3}
    await send(
        handler,
        request=chat_request(body),
        base_url=BASE_URL + "/",
        headers={"x-portkey-provider": "openai", "x-trace": "abc"},
        query={"api-version": "2024-10-21"},
    )

    (request,) = seen
    assert request.method == "POST"
    assert request.url.copy_with(query=None) == httpx.URL(f"{BASE_URL}/chat/completions")
    assert request.url.params["api-version"] == "2024-10-21"
    assert request.headers["x-portkey-provider"] == "openai"
    assert request.headers["x-trace"] == "abc"
    assert request.headers["content-type"] == "application/json"
    assert request.content == orjson.dumps(body)


@pytest.mark.anyio
async def test_url_without_query() -> None:
    handler, seen = recording()
    await send(handler)
    assert str(seen[0].url) == f"{BASE_URL}/chat/completions"


def test_base_url_override() -> None:
    spec = EndpointSpec(base_url="fake")
    client = ChatClient(
        spec,
        api_key=None,
        max_connections=1,
        base_url="http://127.0.0.1:9/v1/",
        transport=httpx.MockTransport(lambda r: httpx.Response(200)),
    )
    assert client.url == "http://127.0.0.1:9/v1/chat/completions"


# ---- the reply --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_reply_is_parsed() -> None:
    handler, _ = recording(httpx.Response(200, json=completion("Short summary.")))
    reply = await send(handler)

    assert reply.content == "Short summary."
    assert reply.finish_reason == "stop"
    assert reply.model == "gpt-4o-mini-2024-07-18"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        11,
        3,
        14,
    )
    assert reply.http_status == 200
    assert reply.latency_ms >= 0.0
    assert reply.rate_limits is None


@pytest.mark.anyio
async def test_reply_without_usage_or_content() -> None:
    data = completion(None)
    del data["usage"]
    data["choices"][0]["finish_reason"] = "tool_calls"
    handler, _ = recording(httpx.Response(200, json=data))

    reply = await send(handler)

    assert reply.content is None
    assert reply.finish_reason == "tool_calls"
    assert reply.usage.prompt_tokens is None
    assert reply.usage.total_tokens is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"choices": []}', "no choices"),
        (b'{"id": "x"}', "no choices"),
        (b'{"choices": "nope"}', "no choices"),
        (b'{"choices": ["text"]}', "no choices"),
        (b"[1, 2]", "no choices"),
        (b"null", "no choices"),
    ],
)
async def test_unusable_200_is_bad_response(body: bytes, says: str) -> None:
    handler, _ = recording(httpx.Response(200, content=body))

    error = await send_error(handler)

    assert isinstance(error, BadResponse)
    assert isinstance(error, RetryableError)
    assert error.error_type == "bad_response"
    assert error.http_status == 200
    assert says in str(error)


# ---- status classification --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "kind", "error_type"),
    [
        (429, RateLimited, "rate_limited"),
        (408, RequestTimeout, "timeout"),
        (409, ServerError, "server_error"),
        (500, ServerError, "server_error"),
        (502, ServerError, "server_error"),
        (503, ServerError, "server_error"),
        (504, ServerError, "server_error"),
        (400, BadRequest, "bad_request"),
        (422, BadRequest, "bad_request"),
        (413, BadRequest, "bad_request"),
        (401, AuthFailed, "auth"),
        (403, AuthFailed, "auth"),
        (404, NotFound, "not_found"),
    ],
)
async def test_status_classification(
    status: int, kind: type[AttemptError], error_type: str
) -> None:
    handler, _ = recording(
        httpx.Response(status, json={"error": {"message": "the server says no"}})
    )

    error = await send_error(handler)

    assert type(error) is kind
    assert error.error_type == error_type
    assert error.http_status == status
    assert str(error) == f"HTTP {status}: the server says no"
    retryable = status in {429, 408, 409} or status >= 500
    assert isinstance(error, RetryableError) is retryable
    assert isinstance(error, FatalError) is not retryable


@pytest.mark.anyio
async def test_redirect_is_a_bad_request_pointing_at_base_url() -> None:
    handler, _ = recording(httpx.Response(301, headers={"location": "https://elsewhere.test/"}))
    error = await send_error(handler)
    assert isinstance(error, BadRequest)
    assert "check endpoint.base_url" in str(error)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "model not found", "type": "x"}}', "HTTP 500: model not found"),
        (b'{"error": "overloaded"}', "HTTP 500: overloaded"),
        (b'{"message": "try later"}', "HTTP 500: try later"),
        (b"<html>Bad gateway</html>\n", "HTTP 500: <html>Bad gateway</html>"),
        (b"", "HTTP 500"),
    ],
)
async def test_error_message_from_body(body: bytes, message: str) -> None:
    handler, _ = recording(httpx.Response(500, content=body))
    error = await send_error(handler)
    assert str(error) == message


@pytest.mark.anyio
async def test_long_error_body_is_truncated() -> None:
    handler, _ = recording(httpx.Response(500, content=b"x" * 5000))
    error = await send_error(handler)
    assert len(str(error)) <= len("HTTP 500: ") + 300


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "200", "retry-after": "9"}, 0.2),
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
async def test_429_retry_after(headers: dict[str, str], expected: float | None) -> None:
    handler, _ = recording(
        httpx.Response(429, headers=headers, json={"error": {"message": "slow down"}})
    )

    error = await send_error(handler)

    assert isinstance(error, RateLimited)
    assert error.retry_after_s == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.anyio
async def test_429_retry_after_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    headers = {"retry-after": email.utils.format_datetime(when, usegmt=True)}
    handler, _ = recording(httpx.Response(429, headers=headers))

    error = await send_error(handler)

    assert isinstance(error, RateLimited)
    assert error.retry_after_s is not None
    assert 115.0 <= error.retry_after_s <= 120.0  # the date has whole seconds


def test_parse_retry_after_http_date_exact() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    headers = httpx.Headers({"Retry-After": "Wed, 01 Jan 2025 12:00:30 GMT"})
    assert parse_retry_after(headers, now=now) == 30.0
    past = httpx.Headers({"Retry-After": "Wed, 01 Jan 2025 11:00:00 GMT"})
    assert parse_retry_after(past, now=now) == 0.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "-5"}), now=now) == 0.0


# ---- rate-limit headers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("120ms", 0.12),
        ("1.5s", 1.5),
        ("2m30.5s", 150.5),
        ("1h2m", 3720.0),
        ("0.5", 0.5),
        ("17", 17.0),
        (None, None),
        ("soon", None),
        ("", None),
    ],
)
def test_parse_duration(value: str | None, seconds: float | None) -> None:
    result = parse_duration(value)
    if seconds is None:
        assert result is None
    else:
        assert result == pytest.approx(seconds)


RATE_HEADERS = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-limit-tokens": "200000",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-remaining-tokens": "199850",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-reset-tokens": "6m0s",
}
RATE_INFO = RateLimitInfo(
    limit_requests=500,
    limit_tokens=200_000,
    remaining_requests=499,
    remaining_tokens=199_850,
    reset_requests_s=pytest.approx(0.12),
    reset_tokens_s=360.0,
)


@pytest.mark.anyio
async def test_rate_limit_headers_on_success() -> None:
    handler, _ = recording(httpx.Response(200, headers=RATE_HEADERS, json=completion()))
    reply = await send(handler)
    assert reply.rate_limits == RATE_INFO


@pytest.mark.anyio
async def test_rate_limit_headers_on_429() -> None:
    handler, _ = recording(httpx.Response(429, headers={**RATE_HEADERS, "retry-after": "2"}))
    error = await send_error(handler)
    assert error.rate_limits == RATE_INFO
    assert error.retry_after_s == 2.0


def test_rate_limit_headers_partial_and_absent() -> None:
    assert parse_rate_limits(httpx.Headers({"x-ratelimit-limit-requests": "5"})) is None
    info = parse_rate_limits(
        httpx.Headers({"x-ratelimit-remaining-tokens": "12.0", "x-ratelimit-limit-tokens": "lots"})
    )
    assert info == RateLimitInfo(remaining_tokens=12)


def test_error_for_status_carries_everything() -> None:
    info = RateLimitInfo(remaining_requests=0)
    error = error_for_status(429, "", 3.0, info)
    assert str(error) == "HTTP 429"
    assert (error.http_status, error.retry_after_s, error.rate_limits) == (429, 3.0, info)


# ---- secrets ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"error": {"message": f"Incorrect API key provided: {KEY}."}}),
        f"bad key {KEY} bad key".encode(),
        orjson.dumps({"error": f"key={KEY}"}),
    ],
)
async def test_api_key_in_error_body_is_scrubbed(body: bytes) -> None:
    handler, _ = recording(httpx.Response(401, content=body))

    error = await send_error(handler)

    assert isinstance(error, AuthFailed)
    assert KEY not in str(error)
    assert KEY not in error.message
    assert "***" in str(error)


@pytest.mark.anyio
async def test_api_key_cut_by_truncation_does_not_leak() -> None:
    message = "x" * (300 - 12) + KEY  # the key straddles the 300-character cut
    handler, _ = recording(httpx.Response(401, json={"error": {"message": message}}))

    error = await send_error(handler)

    assert KEY[:12] not in str(error)


@pytest.mark.anyio
async def test_api_key_in_transport_error_is_scrubbed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused while sending Bearer {KEY}", request=request)

    error = await send_error(handler)

    assert isinstance(error, ConnectionFailed)
    assert KEY not in str(error)
    assert "***" in str(error)


# ---- transport failures -----------------------------------------------------------------


@pytest.mark.anyio
async def test_connect_error_is_connection_failed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    error = await send_error(handler)

    assert type(error) is NotSent  # refused: it never left, and is resent at once
    assert isinstance(error, ConnectionFailed)
    assert error.error_type == "connection"
    assert str(error) == "connection failed before sending: connection refused"
    assert error.__cause__ is None
    assert error.__suppress_context__ is True


@pytest.mark.anyio
async def test_aiohttp_error_is_connection_failed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise aiohttp.ServerDisconnectedError()

    error = await send_error(handler)
    assert type(error) is ConnectionFailed


@pytest.mark.anyio
@pytest.mark.parametrize(
    "kind", [httpx.ReadTimeout, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteTimeout]
)
async def test_httpx_timeouts_are_request_timeout(kind: type[httpx.TimeoutException]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise kind("timed out", request=request)

    error = await send_error(handler)

    assert type(error) is RequestTimeout
    assert error.error_type == "timeout"


@pytest.mark.anyio
async def test_read_timeout_caused_by_asyncio_timeout_is_request_timeout() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        try:
            raise TimeoutError
        except TimeoutError as exc:
            raise httpx.ReadError("", request=request) from exc

    error = await send_error(handler)
    assert type(error) is RequestTimeout


@pytest.mark.anyio
async def test_client_side_deadline_is_request_timeout() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await anyio.Event().wait()  # the server never answers; endpoint.timeout_s fires
        raise AssertionError("unreachable")

    error = await send_error(handler, timeout_s=0.001)

    assert type(error) is RequestTimeout
    assert "endpoint.timeout_s" in str(error)


@pytest.mark.anyio
async def test_undecodable_body_is_an_attempt_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"content-encoding": "gzip"},
            stream=httpx.ByteStream(b"this is not gzip"),
        )

    error = await send_error(handler)

    assert isinstance(error, RetryableError)


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["inf", "1e400"])
async def test_unparseable_rate_limit_header_is_ignored(value: str) -> None:
    headers = {"x-ratelimit-remaining-requests": value, "x-ratelimit-remaining-tokens": "5"}
    handler, _ = recording(httpx.Response(200, headers=headers, json=completion()))

    reply = await send(handler)

    assert reply.rate_limits == RateLimitInfo(remaining_tokens=5)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_retry_after_that_is_not_finite_is_ignored(value: str) -> None:
    from pipeline.client import parse_retry_after

    assert parse_retry_after(httpx.Headers({"retry-after": value})) is None
    assert parse_retry_after(httpx.Headers({"retry-after-ms": value})) is None
