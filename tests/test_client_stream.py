"""The client's streaming path, per-row headers and the new reply fields: each exchange
twice, through httpx on a MockTransport (a given transport: ``httpx-sse`` cuts the events)
and straight on aiohttp against a loopback server answering the same (``EventStream``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from pipeline.client import ChatClient, parse_reply
from pipeline.errors import AttemptError, BadResponse, ConnectionFailed, RateLimited, ServerError
from pipeline.records import ChatRequest, Reply, ToolCall
from pipeline.spec import EndpointSpec
from tests.helpers import serving

BASE_URL = "https://llm.example.test/v1"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def request(headers: dict[str, str] | None = None) -> ChatRequest:
    body = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    return ChatRequest(
        body=body,
        seed=1,
        request_hash="h",
        estimated_prompt_tokens=5,
        max_tokens=None,
        headers=headers,
    )


@pytest.fixture(autouse=True, params=["mock", "wire"])
def via(request: pytest.FixtureRequest) -> None:
    """Every exchange of a test goes through httpx's MockTransport, or over the wire."""
    _VIA[0] = str(request.param)


_VIA = ["mock"]


def _to_server(handler: Handler) -> Callable[[web.Request], Any]:
    """An aiohttp handler answering as ``handler`` does: its status and headers, its body
    in the pieces its stream yields; a stream that fails drops the connection."""

    async def answer(request: web.Request) -> web.StreamResponse:
        asked = httpx.Request(
            request.method, str(request.url), headers=dict(request.headers),
            content=await request.read(),
        )  # fmt: skip
        given = handler(asked)
        response = web.StreamResponse(status=given.status_code)
        for name, value in given.headers.items():
            if name.lower() not in ("content-length", "transfer-encoding"):
                response.headers[name] = value
        await response.prepare(request)
        try:
            async for piece in given.stream:
                await response.write(piece)
        except httpx.ReadError:
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response

    return answer


async def send(
    handler: Handler,
    *,
    stream: bool = True,
    req: ChatRequest | None = None,
    api_key: str | None = None,
    **endpoint: Any,
) -> Reply:
    async with contextlib.AsyncExitStack() as stack:
        transport: httpx.AsyncBaseTransport | None = httpx.MockTransport(handler)
        base_url = BASE_URL
        if _VIA[0] == "wire":
            transport, base_url = (
                None,
                await stack.enter_async_context(serving(_to_server(handler))),
            )
        spec = EndpointSpec(**{"base_url": base_url, **endpoint})
        client = await stack.enter_async_context(
            ChatClient(
                spec,
                api_key=api_key,
                max_connections=2,
                transport=transport,
                stream=stream,
                headers=endpoint.get("headers"),
            )
        )
        return await client.send(req or request())
    raise AssertionError("unreachable")


async def send_error(handler: Handler, **kwargs: Any) -> AttemptError:
    with pytest.raises(AttemptError) as info:
        await send(handler, **kwargs)
    return info.value


HEAD = {
    "id": "chatcmpl-9",
    "object": "chat.completion.chunk",
    "model": "m-2024",
    "system_fingerprint": "fp_1",
}


def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
    return b"data: " + orjson.dumps({**HEAD, "choices": choices, **extra}) + b"\n\n"


def delta(index: int = 0, finish: str | None = None, **fields: Any) -> dict[str, Any]:
    return {"index": index, "delta": fields, "finish_reason": finish}


USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
TEXT_STREAM = [
    chunk([delta(role="assistant", content="")]),
    chunk([delta(content="Hel")]),
    chunk([delta(content="lo!")]),
    chunk([delta(finish="stop")]),
    chunk([], usage=USAGE),
    b"data: [DONE]\n\n",
]


def sse(*events: bytes, status: int = 200) -> Handler:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status, headers={"content-type": "text/event-stream"}, content=b"".join(events)
        )

    return handler


@pytest.mark.anyio
async def test_stream_is_assembled_with_usage_and_ttft() -> None:
    reply = await send(sse(*TEXT_STREAM))
    assert reply.content == "Hello!"
    assert reply.choices == ("Hello!",)
    assert reply.finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        9,
        4,
        13,
    )
    assert reply.model == "m-2024"
    assert reply.system_fingerprint == "fp_1"
    assert reply.response_id == "chatcmpl-9"
    assert reply.ttft_ms is not None
    assert 0 <= reply.ttft_ms <= reply.latency_ms


@pytest.mark.anyio
async def test_heartbeats_and_comments_between_events_are_skipped() -> None:
    beats = [b": keep-alive\n\n", b"event: ping\n\n", b"event: ping\ndata:\n\n"]
    reply = await send(sse(beats[0], *TEXT_STREAM[:3], beats[1], beats[2], *TEXT_STREAM[3:]))
    assert reply.content == "Hello!"
    assert reply.usage.total_tokens == 13


@pytest.mark.anyio
async def test_stream_with_several_choices_and_a_tool_call() -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    reply = await send(
        sse(
            chunk([delta(0, role="assistant", content=None)]),
            chunk([delta(1, content="second")]),
            chunk([delta(0, tool_calls=[call])]),
            chunk([delta(0, tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}])]),
            chunk([delta(0, tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}])]),
            chunk([delta(0, finish="tool_calls"), delta(1, finish="stop")]),
            b"data: [DONE]\n\n",
        )
    )
    assert reply.content is None
    assert reply.choices == (None, "second")
    assert reply.finish_reason == "tool_calls"
    assert reply.tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)
    assert reply.usage.prompt_tokens is None


@pytest.mark.anyio
@pytest.mark.parametrize(
    "events",
    [
        TEXT_STREAM[:-1],  # ended cleanly, but no [DONE]
        [*TEXT_STREAM[:2], TEXT_STREAM[2][:20]],  # cut in the middle of an event
    ],
    ids=["no-done", "mid-event"],
)
async def test_stream_that_ends_early_is_a_connection_error(events: list[bytes]) -> None:
    error = await send_error(sse(*events))
    assert isinstance(error, ConnectionFailed)
    assert error.error_type == "connection"
    assert "stream ended early" in error.message


class _Broken(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"".join(TEXT_STREAM[:2])
        raise httpx.ReadError("peer closed connection without sending complete message body")


@pytest.mark.anyio
async def test_connection_dropped_mid_stream_is_retryable_and_says_so() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Broken())

    error = await send_error(handler)
    assert isinstance(error, ConnectionFailed)
    assert error.message.startswith("stream ended early after 2 events: connection failed: ")


@pytest.mark.anyio
async def test_an_undecodable_stream_is_a_bad_response() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(b"this is not gzip"))

    error = await send_error(handler)
    assert isinstance(error, BadResponse)
    assert "could not be decoded" in error.message


@pytest.mark.anyio
async def test_bad_events() -> None:
    error = await send_error(sse(TEXT_STREAM[0], b"data: {not json\n\n", b"data: [DONE]\n\n"))
    assert isinstance(error, BadResponse)
    assert "stream event 2 is not valid JSON" in error.message
    error = await send_error(sse(b'data: {"error": {"message": "overloaded"}}\n\n'))
    assert isinstance(error, ServerError)
    assert error.message == "error event in stream: overloaded"


@pytest.mark.anyio
async def test_stream_request_answered_with_an_error_status() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, headers={"retry-after": "2"}, json={"error": {"message": "slow down"}}
        )

    error = await send_error(handler)
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 2.0
    assert error.message == "HTTP 429: slow down"


@pytest.mark.anyio
async def test_stream_request_answered_without_streaming_is_still_read() -> None:
    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "id": "x",
                "choices": [{"message": {"content": "plain"}, "finish_reason": "stop"}],
            },
        )

    reply = await send(handler)
    assert reply.content == "plain"
    assert reply.ttft_ms is None


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_row_headers_join_the_static_ones(stream: bool) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if stream:
            return sse(*TEXT_STREAM)(req)
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})

    await send(
        handler,
        stream=stream,
        req=request({"x-portkey-trace-id": "r7"}),
        headers={"x-portkey-provider": "openai"},
    )
    assert seen[0].headers["x-portkey-trace-id"] == "r7"
    assert seen[0].headers["x-portkey-provider"] == "openai"


def test_reply_keeps_all_choices_tool_calls_fingerprint_and_id() -> None:
    body = {
        "id": "chatcmpl-2",
        "system_fingerprint": "fp_2",
        "choices": [
            {"message": {"content": None, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": '{"x": 1}'}},
            ]}, "finish_reason": "tool_calls"},
            {"message": {"content": "two"}, "finish_reason": "stop"},
        ],
    }  # fmt: skip
    reply = parse_reply(orjson.dumps(body), 200, 1.0, None)
    assert reply.choices == (None, "two")
    assert reply.tool_calls == (ToolCall("call_a", "f", "{}"), ToolCall("call_b", "g", '{"x": 1}'))
    assert (reply.response_id, reply.system_fingerprint) == ("chatcmpl-2", "fp_2")
    plain = parse_reply(
        orjson.dumps({"choices": [{"message": {"content": "one"}}]}), 200, 1.0, None
    )
    assert (plain.choices, plain.tool_calls, plain.response_id) == (("one",), None, None)


@pytest.mark.anyio
async def test_an_error_event_naming_the_key_is_scrubbed() -> None:
    key = "sk-stream-secret-77"
    events = [
        chunk([delta(content="Hi")]),
        b"data: " + orjson.dumps({"error": {"message": f"bad key Bearer {key}"}}) + b"\n\n",
    ]
    with pytest.raises(ServerError) as info:
        await send(sse(*events), api_key=key)
    assert key not in info.value.message
    assert key not in str(info.value)
    assert "***" in info.value.message


def test_usage_that_is_not_a_number_is_ignored_not_a_crash() -> None:
    body = orjson.dumps(
        {
            "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": "5", "completion_tokens": True, "total_tokens": 7,
                      "prompt_tokens_details": {"cached_tokens": "2"}},
        }
    )  # fmt: skip
    reply = parse_reply(body, 200, 1.0, None)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (
        None,
        None,
        7,
    )
    assert reply.usage.cached_tokens is None
