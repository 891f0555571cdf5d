"""The plain attempt straight on aiohttp (no transport given), against loopback servers:
what goes out (auth, query, headers, body), what is read back, and each failure's class."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
import pytest
from aiohttp import web

from pipeline.client import ChatClient
from pipeline.errors import (
    AttemptError,
    BadRequest,
    BadResponse,
    ConnectionFailed,
    RateLimited,
    RequestTimeout,
    StaleConnection,
)
from pipeline.records import ChatRequest, RateLimitInfo
from pipeline.spec import EndpointSpec
from tests.helpers import FakeFactory, serving

KEY = "sk-test-0123456789abcdefSECRET"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def chat_request(headers: dict[str, str] | None = None) -> ChatRequest:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    return ChatRequest(body, 1, "h", estimated_prompt_tokens=5, max_tokens=None, headers=headers)


def completion(content: str = "ok") -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "model": "m",
            "choices": [{"index": 0, "message": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    )


async def send_to(handler: Handler, request: ChatRequest | None = None, **endpoint: Any) -> Any:
    """The reply (or the attempt error) of one plain attempt to a server running ``handler``."""
    async with serving(handler) as url:
        spec = EndpointSpec(**{"base_url": url, **endpoint})
        async with ChatClient(spec, api_key=KEY, max_connections=2) as client:
            try:
                return await client.send(request or chat_request())
            except AttemptError as exc:
                return exc


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("auth", "header", "value"),
    [("bearer", "Authorization", f"Bearer {KEY}"), ("api-key", "api-key", KEY)],
)
async def test_what_goes_out(auth: str, header: str, value: str) -> None:
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        return web.Response(body=completion(), content_type="application/json")

    reply = await send_to(
        handler,
        chat_request({"x-row": "7"}),
        auth=auth,
        query={"api-version": "2024-10-21"},
        headers={"x-team": "ml"},
    )

    assert reply.content == "ok"
    (request,) = seen
    assert request.method == "POST"
    assert request.query["api-version"] == "2024-10-21"
    assert request.headers[header] == value
    assert request.headers["content-type"] == "application/json"
    assert (request.headers["x-team"], request.headers["x-row"]) == ("ml", "7")
    assert bodies == [chat_request().body]


@pytest.mark.anyio
async def test_cookies_are_neither_kept_nor_sent_back() -> None:
    cookies: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        cookies.append(request.headers.get("cookie"))
        response = web.Response(body=completion(), content_type="application/json")
        response.set_cookie("__cf_bm", "abc", path="/")
        return response

    async with serving(handler) as url:
        spec = EndpointSpec(base_url=url)
        async with ChatClient(spec, api_key=KEY, max_connections=2) as client:
            for _ in range(2):
                await client.send(chat_request())
    assert cookies == [None, None]


@pytest.mark.anyio
async def test_rate_limit_headers_and_retry_after_are_read() -> None:
    async def handler(request: web.Request) -> web.Response:
        headers = {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-remaining-tokens": "1200",
            "x-ratelimit-reset-requests": "1.5s",
            "Retry-After": "2",
        }
        body = orjson.dumps({"error": {"message": f"slow down {KEY}", "code": "rate_limit"}})
        return web.Response(status=429, body=body, headers=headers)

    error = await send_to(handler)

    assert type(error) is RateLimited
    assert error.retry_after_s == 2.0
    assert error.rate_limits == RateLimitInfo(
        remaining_requests=0, remaining_tokens=1200, reset_requests_s=1.5
    )
    assert KEY not in error.message
    assert error.message.startswith("HTTP 429: slow down")


@pytest.mark.anyio
async def test_a_redirect_is_not_followed() -> None:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    error = await send_to(handler)

    assert type(error) is BadRequest
    assert "unexpected redirect" in error.message


@pytest.mark.anyio
async def test_an_undecodable_body_is_a_bad_response() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"this is not gzip", headers={"Content-Encoding": "gzip"})

    error = await send_to(handler)

    assert type(error) is BadResponse
    assert "could not be decoded" in error.message


@pytest.mark.anyio
async def test_a_server_that_never_answers_is_a_timeout() -> None:
    async def handler(request: web.Request) -> web.Response:
        await anyio.sleep(5)
        raise AssertionError("unreachable")

    error = await send_to(handler, timeout_s=0.2)

    assert type(error) is RequestTimeout


@pytest.mark.anyio
async def test_a_dropped_connection_is_connection_failed() -> None:
    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    error = await send_to(handler)

    assert isinstance(error, ConnectionFailed)


@pytest.mark.anyio
async def test_the_fake_answers_through_the_plain_path(fake_server: FakeFactory) -> None:
    server = fake_server(requests_per_minute=600)
    spec = EndpointSpec(base_url=server.base_url)
    async with ChatClient(spec, api_key=None, max_connections=2) as client:
        reply = await client.send(chat_request())
    assert reply.http_status == 200
    assert reply.content
    assert reply.rate_limits is not None
    assert reply.rate_limits.limit_requests == 600


@pytest.mark.anyio
async def test_a_reused_connection_closed_at_once_stops_reuse() -> None:
    """The second request rides the first one's kept-alive connection and the server drops
    it unanswered: a stale connection (possibly read, so not ``NotSent``), and from then
    on every request asks for its own connection."""
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("connection"))
        if len(seen) == 2:
            assert request.transport is not None
            request.transport.close()
        return web.Response(body=completion(), content_type="application/json")

    async with serving(handler) as url:
        spec = EndpointSpec(base_url=url)
        async with ChatClient(spec, api_key=KEY, max_connections=1) as client:
            await client.send(chat_request())
            with pytest.raises(ConnectionFailed) as info:
                await client.send(chat_request())
            await client.send(chat_request())

    assert type(info.value) is StaleConnection
    assert seen[2] is not None
    assert seen[2].lower() == "close"
