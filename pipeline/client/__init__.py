"""httpx client: auth styles, send one attempt (plain or streamed), classify errors.

This package is the only place that catches httpx (or aiohttp) exceptions; it
re-raises them as the ``AttemptError`` subclasses of ``pipeline.errors``. The API key
lives only in the request headers built here; every string the server returns (error
messages, content, ids, model, fingerprint, tool calls) is scrubbed of it, whole or in a
masked form (``pipeline.redact``), before anything stores or logs it.

    __init__.py   ChatClient: headers, transport, one attempt, transport errors
    parse.py      status -> error class, Retry-After, x-ratelimit-*, body -> Reply
    stream.py     server-sent events -> one completion (ttft, early end)

Transport: one ``aiohttp.ClientSession`` sized to the run's concurrency. A plain
attempt is one aiohttp ``post`` read whole: httpx on top of it cost about twice the
CPU per request (its ``Headers``, cookie jar and request/response models; see
``tests/bench``), and only ``retry-after*`` and ``x-ratelimit-*`` are read of the answer's
headers. A streamed attempt is one aiohttp ``post`` read as it arrives, its events cut by
``stream.EventStream`` (through httpx and ``httpx-sse`` it cost 2.4x the CPU of a plain
one). A given ``transport`` (an ``httpx.MockTransport`` in unit tests, httpcore in a
benchmark) takes every attempt through httpx instead.
"""

from __future__ import annotations

import contextlib
import errno
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType

import aiohttp
import aiohttp.http_exceptions
import anyio
import anyio.lowlevel
import httpx
import structlog
import yarl
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
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
from pipeline.client.stream import EventStream, StreamAssembler
from pipeline.errors import (
    AttemptError,
    BadResponse,
    ConnectionFailed,
    NotSent,
    RequestTimeout,
    StaleConnection,
)
from pipeline.records import ChatRequest, RateLimitInfo, Reply
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


class _Pool(aiohttp.TCPConnector):
    """aiohttp's connector, noting in ``_REUSED`` when an attempt gets a kept-alive connection
    (a ``TraceConfig`` would tell too, but its signals cost about 6% of a request's CPU)."""

    def __init__(self, *, limit: int, keepalive_timeout: float, tls: ssl.SSLContext) -> None:
        super().__init__(limit=limit, keepalive_timeout=keepalive_timeout, ssl=tls)
        self._served: weakref.WeakSet[ResponseHandler] = weakref.WeakSet()

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        connection = await super().connect(req, traces, timeout)
        protocol = connection.protocol
        if protocol in self._served:
            flag = _REUSED.get()
            if flag is not None:
                flag[0] = True
        elif protocol is not None:
            self._served.add(protocol)
        return connection


def _open_session(
    max_connections: int, timeout_s: float, headers: Mapping[str, str], tls: ssl.SSLContext
) -> aiohttp.ClientSession:
    """The run's connection pool (``_Pool``); ``timeout_s`` for the whole attempt, waiting
    for a pooled connection included (one timer: a read timeout too would be rescheduled on
    every chunk received); no cookie jar (an API client keeps no session, and parsing
    OpenAI's two ``Set-Cookie`` headers per answer cost more than the rest of the headers)."""
    connector = _Pool(limit=max_connections, keepalive_timeout=5.0, tls=tls)
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
    )


def _unsent_class(
    exc: BaseException, elapsed_s: float, reused: bool
) -> type[ConnectionFailed] | None:
    """``NotSent`` when the request surely never reached the server, ``StaleConnection``
    when a reused connection closed at once (probably the same, but not proven)."""
    cause = _wire_error(exc)
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


def _wire_error(exc: BaseException) -> BaseException | None:
    """aiohttp's own error: ``exc`` itself (a plain attempt), or what httpx wrapped."""
    return exc if isinstance(exc, aiohttp.ClientError) else exc.__cause__


def _undecodable(exc: BaseException) -> bool:
    """A body whose ``Content-Encoding`` did not decode (httpx's or aiohttp's decoder)."""
    return isinstance(exc, httpx.DecodingError) or isinstance(
        exc.__cause__, aiohttp.http_exceptions.ContentEncodingError
    )


WIRE_ERRORS = (httpx.TransportError, httpx.DecodingError, aiohttp.ClientError, TimeoutError)
"""What sending over httpx or aiohttp raises when no (whole) answer came back."""


def _attempt_failure(exc: BaseException, elapsed_s: float, reused: bool) -> AttemptError:
    """A chat attempt's failure: an undecodable body (``BadResponse``), else as
    ``_transport_error`` says."""
    if _undecodable(exc):
        return BadResponse(f"response body could not be decoded: {exc}"[:MAX_MESSAGE])
    return _transport_error(exc, elapsed_s, reused)


def _transport_error(
    exc: BaseException, elapsed_s: float = float("inf"), reused: bool = False
) -> AttemptError:
    """A failure before a full answer arrived -> timeout or connection (``NotSent`` when it
    never left the client)."""
    cause = _wire_error(exc)
    if isinstance(cause, TimeoutError | aiohttp.ServerTimeoutError):
        return RequestTimeout(f"timed out: {type(cause).__name__}")
    if isinstance(exc, TimeoutError):
        return RequestTimeout("timed out: no complete answer within endpoint.timeout_s")
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


@dataclass(frozen=True, slots=True)
class _Streamed:
    """A streamed answer as it arrives: status, headers, and either its whole body
    (``read``) or the data of its events (``events``)."""

    status: int
    headers: Mapping[str, str]
    read: Callable[[], Awaitable[bytes]]
    events: AsyncIterator[str]


async def _events(body: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The data of each event of an aiohttp body, as its bytes arrive."""
    events = EventStream()
    async for chunk in body.iter_any():
        for data in events.feed(chunk):
            yield data
    for data in events.end():
        yield data


async def _sse_events(response: httpx.Response) -> AsyncIterator[str]:
    """The data of each event of an httpx response (``httpx-sse``)."""
    async for event in EventSource(response).aiter_sse():
        yield event.data


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
        self._max_connections = max_connections
        self._default_headers = {
            "Content-Type": "application/json",
            **(endpoint.headers if headers is None else headers),
        }
        self._default_headers.update(auth_headers(endpoint.auth, api_key))
        self._session: aiohttp.ClientSession | None = None
        self._http: httpx.AsyncClient | None = None
        """httpx on the given transport, which then takes every attempt (else: aiohttp)."""
        if transport is not None:
            self._http = httpx.AsyncClient(
                transport=transport,
                headers=self._default_headers,
                params=endpoint.query or None,
                timeout=httpx.Timeout(endpoint.timeout_s),
                follow_redirects=False,
            )
        # the URL with the endpoint's query merged in, for aiohttp; encoded once
        merged = httpx.Request("POST", self.url, params=endpoint.query or None).url
        self._wire_url = yarl.URL(str(merged), encoded=True)

    def _pool(self) -> aiohttp.ClientSession:
        """The aiohttp session, opened on first use (inside the event loop)."""
        if self._session is None:
            self._session = _open_session(
                self._max_connections,
                self._timeout_s,
                self._default_headers,
                httpx.create_ssl_context(),
            )
        return self._session

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
        if self._session is not None:
            await self._session.close()

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
        """One plain attempt: one ``post``, read whole."""
        started = time.perf_counter()
        try:
            status, headers, body = await self._post(request)
        except WIRE_ERRORS as exc:
            error = _attempt_failure(exc, time.perf_counter() - started, reused[0])
            raise type(error)(self._scrub(error.message)) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        rate_limits = parse_rate_limits(headers)
        if status != 200:
            raise self._status_error(status, headers, body, rate_limits)
        return self._reply(parse_reply(body, 200, latency_ms, rate_limits))

    def _aiohttp_post(self, request: ChatRequest) -> aiohttp.client._RequestContextManager:
        """The request on the run's aiohttp session (its ``total`` timeout is
        ``endpoint.timeout_s``): enter it to get the response."""
        return self._pool().post(
            self._wire_url,
            data=request.body,
            headers=self._headers(request),
            allow_redirects=False,
        )

    async def _post(self, request: ChatRequest) -> tuple[int, Mapping[str, str], bytes]:
        """Status, headers and body of one POST: on aiohttp (its ``total`` timeout is
        ``endpoint.timeout_s``), or through httpx's transport within the same deadline."""
        if self._http is None:
            async with self._aiohttp_post(request) as response:
                return response.status, response.headers, await response.read()
        with anyio.fail_after(self._timeout_s):
            answer = await self._http.post(
                self.url, content=request.body, headers=self._headers(request)
            )
        return answer.status_code, answer.headers, answer.content

    @contextlib.asynccontextmanager
    async def _open_stream(self, request: ChatRequest) -> AsyncIterator[_Streamed]:
        """A streamed POST as it arrives: on aiohttp, its events cut by ``EventStream``;
        through httpx (a given transport), by ``httpx-sse``."""
        if self._http is None:
            async with self._aiohttp_post(request) as response:
                yield _Streamed(
                    response.status, response.headers, response.read, _events(response.content)
                )
            return
        async with self._http.stream(
            "POST", self.url, content=request.body, headers=self._headers(request)
        ) as answer:
            yield _Streamed(answer.status_code, answer.headers, answer.aread, _sse_events(answer))

    def _status_error(
        self,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        rate_limits: RateLimitInfo | None,
    ) -> AttemptError:
        return error_for_status(
            status,
            server_message(self._scrub(body.decode("utf-8", "replace")).encode())[:MAX_MESSAGE],
            parse_retry_after(headers),
            rate_limits,
            server_code(body),
        )

    async def _send_streamed(self, request: ChatRequest, reused: list[bool]) -> Reply:
        """One streamed attempt: events until ``[DONE]``; a stream that stops short is
        ``ConnectionFailed`` ("stream ended early"), retried like a dropped connection."""
        started = time.perf_counter()
        assembler = StreamAssembler(started)
        status = 0
        try:
            with anyio.fail_after(self._timeout_s):
                async with self._open_stream(request) as answer:
                    status = answer.status
                    rate_limits = parse_rate_limits(answer.headers)
                    if status != 200:
                        body = await answer.read()
                        raise self._status_error(status, answer.headers, body, rate_limits)
                    if not answer.headers.get("content-type", "").startswith("text/event-stream"):
                        body = await answer.read()  # a server that answered without streaming
                        return self._reply(
                            parse_reply(
                                body, 200, (time.perf_counter() - started) * 1000.0, rate_limits
                            )
                        )
                    async for data in answer.events:
                        try:
                            assembler.feed(data)
                        except AttemptError as failure:
                            failure.message = self._scrub(failure.message)
                            failure.args = (failure.message,)
                            raise
                    await _notice_close()
        except WIRE_ERRORS as exc:
            elapsed = time.perf_counter() - started if status == 0 else float("inf")
            error = _attempt_failure(exc, elapsed, reused[0])
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
