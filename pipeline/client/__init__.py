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

import errno
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import TracebackType

import aiohttp
import anyio
import anyio.lowlevel
import httpx
import structlog
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
    server_code,
    server_message,
)
from pipeline.client.stream import StreamAssembler
from pipeline.errors import (
    AttemptError,
    BadResponse,
    ConnectionFailed,
    NotSent,
    RequestTimeout,
    StaleConnection,
)
from pipeline.records import ChatRequest, Reply
from pipeline.redact import Scrubber
from pipeline.spec import EndpointSpec

log = structlog.get_logger("pipeline")

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


STALE_CONNECTION_S = 0.25
"""A reset or disconnect on a *reused* kept-alive connection sooner than this after sending,
before any answer, is a connection the server had already closed (llama-server closes after
each streamed answer while announcing keep-alive): the request never reached it."""

_REUSED: ContextVar[list[bool] | None] = ContextVar("pipeline_connection_reused", default=None)
"""Set per attempt: whether aiohttp took a kept-alive connection from its pool."""


async def _on_reuse(*_: object) -> None:
    flag = _REUSED.get()
    if flag is not None:
        flag[0] = True


def _session_factory(max_connections: int) -> Callable[[], aiohttp.ClientSession]:
    """aiohttp sessions as the transport would make them, plus a trace of reused connections."""

    def make() -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(_on_reuse)
        connector = aiohttp.TCPConnector(
            limit=max_connections, keepalive_timeout=5.0, ssl=httpx.create_ssl_context()
        )
        return aiohttp.ClientSession(connector=connector, trace_configs=[trace])

    return make


def _unsent_class(
    exc: BaseException, elapsed_s: float, reused: bool
) -> type[ConnectionFailed] | None:
    """``NotSent`` when the request surely never reached the server, ``StaleConnection``
    when a reused connection closed at once (probably the same, but not proven)."""
    cause = exc.__cause__
    if isinstance(exc, httpx.ConnectError) or isinstance(cause, aiohttp.ClientConnectorError):
        return NotSent  # no connection was ever made
    if isinstance(cause, aiohttp.ClientOSError) and "request body" in str(cause):
        return NotSent  # the body could not be written: no complete request left
    if not reused or elapsed_s >= STALE_CONNECTION_S:
        return None
    if isinstance(cause, aiohttp.ClientOSError) and cause.errno in (errno.ECONNRESET, errno.EPIPE):
        return NotSent  # a reset: our bytes reached a socket the server had closed
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return StaleConnection
    return None


def _transport_error(
    exc: BaseException, elapsed_s: float = float("inf"), reused: bool = False
) -> AttemptError:
    """A failure before a full answer arrived -> timeout or connection (``NotSent`` when it
    never left the client)."""
    if isinstance(exc, TimeoutError):
        return RequestTimeout("timed out: no complete answer within endpoint.timeout_s")
    cause = exc.__cause__
    if isinstance(cause, TimeoutError | aiohttp.ServerTimeoutError):
        return RequestTimeout(f"timed out: {type(cause).__name__}")
    if isinstance(exc, httpx.TimeoutException) and cause is None:
        return RequestTimeout(f"timed out: {type(exc).__name__}")
    detail = str(cause or exc) or type(cause or exc).__name__
    unsent = _unsent_class(exc, elapsed_s, reused)
    if unsent is NotSent:
        return NotSent(f"connection failed before sending: {detail}"[:MAX_MESSAGE])
    if unsent is StaleConnection:
        return StaleConnection(f"connection closed at once: {detail}"[:MAX_MESSAGE])
    return ConnectionFailed(f"connection failed: {detail}"[:MAX_MESSAGE])


async def _notice_close() -> None:
    """Let the event loop read a close the server sent right after a streamed answer, before
    the connection goes back to the pool: a half-closed connection is then not reused."""
    for _ in range(2):  # one turn to read the end of the stream, one to close the transport
        await anyio.lowlevel.checkpoint()


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
        self._no_reuse = False
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
                ),
                client=_session_factory(max_connections),
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
        reused = [False]
        token = _REUSED.set(reused)
        try:
            if self._stream:
                return await self._send_streamed(request, reused)
            return await self._send_plain(request, reused)
        except (NotSent, StaleConnection):
            if reused[0] and not self._no_reuse:
                # the server closes kept-alive connections under us: stop reusing them
                self._no_reuse = True
                log.warning("client.connections_not_reused", reason="server closes them")
            raise
        finally:
            _REUSED.reset(token)

    def _headers(self, request: ChatRequest) -> dict[str, str] | None:
        """The row's headers, plus ``Connection: close`` once the server proved it closes
        kept-alive connections (each request then gets a new one)."""
        if not self._no_reuse:
            return request.headers
        return {**(request.headers or {}), "Connection": "close"}

    async def _send_plain(self, request: ChatRequest, reused: list[bool]) -> Reply:
        """One plain attempt: one ``post``."""
        started = time.perf_counter()
        try:
            with anyio.fail_after(self._timeout_s):
                response = await self._http.post(
                    self.url, content=request.body, headers=self._headers(request)
                )
        except httpx.DecodingError as exc:
            raise BadResponse(f"response body could not be decoded: {exc}"[:MAX_MESSAGE]) from None
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            error = _transport_error(exc, time.perf_counter() - started, reused[0])
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
            server_code(response.content),
        )

    async def _send_streamed(self, request: ChatRequest, reused: list[bool]) -> Reply:
        """One streamed attempt: events until ``[DONE]``; a stream that stops short is
        ``ConnectionFailed`` ("stream ended early"), retried like a dropped connection."""
        started = time.perf_counter()
        assembler = StreamAssembler(started)
        status = 0
        try:
            with anyio.fail_after(self._timeout_s):
                async with self._http.stream(
                    "POST", self.url, content=request.body, headers=self._headers(request)
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
                    await _notice_close()
        except httpx.DecodingError as exc:
            raise BadResponse(f"response body could not be decoded: {exc}"[:MAX_MESSAGE]) from None
        except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
            elapsed = time.perf_counter() - started if status == 0 else float("inf")
            error = _transport_error(exc, elapsed, reused[0])
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
