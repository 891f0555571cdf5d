"""httpx client: auth styles, send one attempt (plain or streamed), classify errors.

This package is the only place that catches httpx (or aiohttp) exceptions; it
re-raises them as the ``AttemptError`` subclasses of ``pipeline.errors``. The API key
lives only in the request headers built here; every string the server returns (error
messages, content, ids, model, fingerprint, tool calls) is scrubbed of it, whole or in a
masked form (``pipeline.redact``), before anything stores or logs it.

    __init__.py   ChatClient: headers, transport, one attempt, transport errors
    parse.py      status -> error class, Retry-After, x-ratelimit-*, body -> Reply
    stream.py     server-sent events -> one completion (ttft, early end)

Transport: ``httpx.AsyncClient`` mounted on ``httpx_aiohttp.AiohttpTransport``
sized to the run's concurrency. httpcore's own pool costs about ten times more
CPU per request (see ``tests/bench``). A plain job's attempt is one ``post``; the
streaming path (``httpx-sse``) is taken only when the job streams.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType

import aiohttp
import anyio
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_sse import EventSource

from pipeline.client.parse import (
    MAX_MESSAGE,
    error_for_status,
    parse_duration,
    parse_rate_limits,
    parse_reply,
    parse_retry_after,
    reply_from,
    scrubbed_reply,
    server_message,
)
from pipeline.client.stream import StreamAssembler
from pipeline.errors import AttemptError, BadResponse, ConnectionFailed, RequestTimeout
from pipeline.records import ChatRequest, Reply
from pipeline.redact import Scrubber
from pipeline.spec import EndpointSpec

__all__ = [
    "ChatClient",
    "auth_headers",
    "error_for_status",
    "parse_duration",
    "parse_rate_limits",
    "parse_reply",
    "parse_retry_after",
]


def auth_headers(auth: str, api_key: str | None) -> dict[str, str]:
    """The header that carries the key in the endpoint's auth style."""
    if api_key is None or auth == "none":
        return {}
    if auth == "bearer":
        return {"Authorization": f"Bearer {api_key}"}
    return {auth: api_key}


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
    return ConnectionFailed(f"connection failed: {detail}"[:MAX_MESSAGE])


class ChatClient:
    """Sends chat-completions requests to one endpoint.

    ``headers`` replaces ``endpoint.headers`` when given (the runner passes the static
    ones; templated headers come with each request). With ``stream`` every attempt
    reads server-sent events.
    """

    def __init__(
        self,
        endpoint: EndpointSpec,
        *,
        api_key: str | None,
        max_connections: int,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> None:
        root = (base_url or endpoint.base_url).rstrip("/")
        self.url = httpx.URL(f"{root}/chat/completions")  # parsed once, not per request
        self._scrub = Scrubber([api_key])
        # a key of a few characters would match ordinary words of an answer: only error
        # messages are scrubbed of such a key (it is no real secret anyway)
        self._scrub_answer = Scrubber([api_key] if api_key and len(api_key) >= 8 else [])
        self._timeout_s = endpoint.timeout_s
        self._stream = stream
        default_headers = {
            "Content-Type": "application/json",
            **(endpoint.headers if headers is None else headers),
        }
        default_headers.update(auth_headers(endpoint.auth, api_key))
        self._http = httpx.AsyncClient(
            transport=transport
            or AiohttpTransport(
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                )
            ),
            headers=default_headers,
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

    def _reply(self, reply: Reply) -> Reply:
        """The reply with the key out of every string the server chose."""
        return scrubbed_reply(reply, self._scrub_answer) if self._scrub_answer else reply

    async def send(self, request: ChatRequest) -> Reply:
        """One attempt: the reply, or an ``AttemptError`` saying what went wrong."""
        if self._stream:
            return await self._send_streamed(request)
        started = time.perf_counter()
        try:
            with anyio.fail_after(self._timeout_s):
                response = await self._http.post(
                    self.url, content=request.body, headers=request.headers
                )
        except httpx.DecodingError as exc:
            raise BadResponse(f"response body could not be decoded: {exc}"[:MAX_MESSAGE]) from None
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            error = _transport_error(exc)
            raise type(error)(self._scrub(error.message)) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        rate_limits = parse_rate_limits(response.headers)
        if response.status_code != 200:
            raise self._status_error(response)
        return self._reply(parse_reply(response.content, 200, latency_ms, rate_limits))

    def _status_error(self, response: httpx.Response) -> AttemptError:
        return error_for_status(
            response.status_code,
            server_message(self._scrub(response.content.decode("utf-8", "replace")).encode())[
                :MAX_MESSAGE
            ],
            parse_retry_after(response.headers),
            parse_rate_limits(response.headers),
        )

    async def _send_streamed(self, request: ChatRequest) -> Reply:
        """One streamed attempt: events until ``[DONE]``; a stream that stops short is
        ``ConnectionFailed`` ("stream ended early"), retried like a dropped connection."""
        started = time.perf_counter()
        assembler = StreamAssembler(started)
        status = 0
        try:
            with anyio.fail_after(self._timeout_s):
                async with self._http.stream(
                    "POST", self.url, content=request.body, headers=request.headers
                ) as response:
                    status = response.status_code
                    if status != 200:
                        await response.aread()
                        raise self._status_error(response)
                    rate_limits = parse_rate_limits(response.headers)
                    if not response.headers.get("content-type", "").startswith("text/event-stream"):
                        body = await response.aread()  # a server that answered without streaming
                        return self._reply(
                            parse_reply(
                                body, 200, (time.perf_counter() - started) * 1000.0, rate_limits
                            )
                        )
                    async for event in EventSource(response).aiter_sse():
                        try:
                            assembler.feed(event.data)
                        except AttemptError as failure:
                            failure.message = self._scrub(failure.message)
                            failure.args = (failure.message,)
                            raise
        except httpx.DecodingError as exc:
            raise BadResponse(f"response body could not be decoded: {exc}"[:MAX_MESSAGE]) from None
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            error = _transport_error(exc)
            if status == 200 and isinstance(error, ConnectionFailed):
                error = ConnectionFailed(
                    f"stream ended early after {assembler.events} events: {error.message}"
                )
            raise type(error)(self._scrub(error.message)[:MAX_MESSAGE]) from None
        if not assembler.done:
            raise ConnectionFailed(f"stream ended early: no [DONE] after {assembler.events} events")
        latency_ms = (time.perf_counter() - started) * 1000.0
        return self._reply(
            reply_from(assembler.completion(), 200, latency_ms, rate_limits, assembler.ttft_ms)
        )
