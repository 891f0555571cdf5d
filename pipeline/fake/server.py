"""The HTTP side: one low-level aiohttp handler, run on the caller's loop or in a thread.

Order of checks per request: auth (401), path and query (404), required headers (400),
body (400), required body fields (400), model (404), concurrency (429), rate limits (429,
at arrival), fault draw (a drop closes at once), latency, then the drawn fault or the
completion: one JSON body, or server-sent events when the request asks to stream. The
profile (``FakeConfig.profile``) decides the path, query, auth styles, headers, body
fields and models.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from pipeline.fake.batches import BatchService
from pipeline.fake.capacity import Capacity, parse_schedule
from pipeline.fake.config import ContentFault, FakeConfig, Fault
from pipeline.fake.content import (
    IncomingChat,
    InvalidRequestError,
    completion,
    error_body,
    parse_request,
)
from pipeline.fake.leak import leak_credential, leak_message
from pipeline.fake.profiles import Refusal
from pipeline.fake.ratelimit import ServerQuota, format_duration
from pipeline.fake.realistic import OpenAIHeaders, dress
from pipeline.fake.stats import FakeStats, RecordedRequest
from pipeline.fake.stream import events as stream_events
from pipeline.fake.stream import write_events

_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-portkey-api-key"})
_SERVER_ERRORS = {
    Fault.ERROR_500: (500, "The server had an error while processing your request. Sorry about that!"),
    Fault.ERROR_502: (502, "Bad gateway."),
    Fault.ERROR_503: (503, "The server is overloaded or not ready yet."),
}  # fmt: skip
_HEALTH = orjson.dumps({"status": "ok"})


class FakeServer:
    """One fake OpenAI-compatible endpoint: its config, its counters and its handler."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.stats = FakeStats()
        self._started = time.monotonic()
        self.batches = BatchService(config)
        self._base_url: str | None = None
        self._bearer = None if config.api_key is None else f"Bearer {config.api_key}"
        self._profile = config.profile
        self._key_headers = tuple(s for s in config.profile.auth_styles if s != "bearer")
        self._quota = (
            None
            if config.requests_per_minute is None and config.tokens_per_minute is None
            else ServerQuota(
                config.requests_per_minute,
                config.tokens_per_minute,
                config.limit_window_s,
                time.monotonic(),
            )
        )
        self._fault_rates = tuple(config.fault_rates().items())
        self._faults_on = any(rate > 0 for _, rate in self._fault_rates)
        self._fault_rng = random.Random(config.fault_seed)
        self._content_rates = tuple(config.content_fault_rates().items())
        self._content_faults_on = any(rate > 0 for _, rate in self._content_rates)
        self._content_rng = random.Random(f"{config.fault_seed}:content")
        self._jitter_rng = random.Random(f"{config.fault_seed}:jitter")
        self._upstream_rng = random.Random(f"{config.fault_seed}:upstream")
        self._in_flight = 0
        self._closing = asyncio.Event()
        self._openai = OpenAIHeaders(config.fault_seed) if config.realistic else None
        self.capacity = (
            None
            if config.slots is None
            else Capacity(
                config.slots,
                config.token_s,
                config.batch_slowdown,
                config.queue_limit,
                parse_schedule(config.slots_schedule),
            )
        )

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:54321/v1``."""
        if self._base_url is None:
            raise RuntimeError("the fake server has not started")
        return self._base_url

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one HTTP request."""
        if request.method == "GET" and request.path == "/stats":
            stats = self.stats.to_dict() | {"batches": self.batches.stats.to_dict()}
            return _json(200, orjson.dumps(stats))
        if request.method == "GET" and request.path == "/health":
            return _json(200, _HEALTH)
        body = await request.read()
        self.stats.received += 1
        if self.config.record_requests:
            self.stats.requests.append(_record(request, body))
        response = await self._answer(request, body)
        if response is None:
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never sent: the transport is closed
        self.stats.by_status[response.status] += 1
        if (
            self._openai is not None
            and not response.prepared
            and "x-request-id" in response.headers
        ):
            response.headers.extend(self._openai.cookies())
        return response

    async def _answer(self, request: web.BaseRequest, body: bytes) -> web.StreamResponse | None:
        """The response to send, or None to close the connection without one."""
        if self._bearer is not None and not self._authorized(request.headers):
            return _error(
                401, "Incorrect API key provided", "invalid_request_error", code="invalid_api_key"
            )
        if self.batches.owns(request.path):
            refusal = self._profile.check_batch_route(request.query, request.headers)
            if refusal is not None:
                return _refuse(refusal)
            return await self.batches.handle(request, body)
        refusal = self._profile.check_route(
            request.method, request.path, request.query, request.headers
        )
        if refusal is not None:
            return _refuse(refusal)
        too_large = self.config.max_body_bytes
        if too_large is not None and len(body) > too_large:
            return _error(
                413,
                f"Request too large: {len(body)} bytes, at most {too_large}",
                "invalid_request_error",
            )
        try:
            chat = parse_request(body)
        except InvalidRequestError as exc:
            return _error(400, exc.message, "invalid_request_error", param=exc.param)
        refusal = self._profile.check_body(chat.fields, chat.model)
        if refusal is not None:
            return _refuse(refusal)
        limit = self.config.max_concurrency
        if limit is not None and self._in_flight >= limit:
            return _error(
                429,
                f"Too many concurrent requests: limit {limit}",
                "requests",
                code="rate_limit_exceeded",
                headers={"retry-after": "1"},
            )
        headers, refused = self._admit(chat)
        if refused is not None:
            return refused
        fault = self._draw_fault() if self._faults_on else None
        content_fault = self._draw_content_fault() if self._content_faults_on else None
        if fault is Fault.DROP:
            self.stats.dropped += 1
            return None
        self._in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self._in_flight)
        try:
            return await self._respond(request, chat, body, fault, headers, content_fault)
        finally:
            self._in_flight -= 1

    def _admit(self, chat: IncomingChat) -> tuple[dict[str, str], web.StreamResponse | None]:
        """The answer's headers (the quota's; in realistic mode, OpenAI's with the quota's
        winning), and the quota's 429 when it refuses the request (None: admitted)."""
        headers: dict[str, str] = {}
        if self._openai is not None:
            headers = self._openai.headers(chat.cost_tokens, self.config.latency_s * 1000)
        if self._quota is None:
            return headers, None
        now = time.monotonic()
        admission = self._quota.admit(chat.cost_tokens, now)
        headers |= admission.headers
        if admission.refused is None:
            self.stats.count_admitted(now - self._started, chat.cost_tokens)
            return headers, None
        unit = "RPM" if admission.refused == "requests" else "TPM"
        refusal = _error(
            429,
            f"Rate limit reached for {admission.refused} per min ({unit}) on {chat.model}: "
            f"Limit {admission.limit}, Requested {admission.requested}. "
            f"Please try again in {format_duration(admission.wait_ms / 1000)}.",
            admission.refused,
            code="rate_limit_exceeded",
            headers=headers | _retry_headers(admission.wait_ms),
        )
        return headers, refusal

    async def _respond(
        self,
        request: web.BaseRequest,
        chat: IncomingChat,
        body: bytes,
        fault: Fault | None,
        headers: dict[str, str],
        content_fault: ContentFault | None = None,
    ) -> web.StreamResponse | None:
        """Wait the configured latency, then answer with the completion or the drawn fault."""
        delay = self.config.latency_s
        if self.config.latency_jitter_s:
            delay += self._jitter_rng.uniform(0, self.config.latency_jitter_s)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is Fault.HANG:
            await self._hang()
            return None
        injected = self._injected(fault, request, headers)
        if injected is not None:
            return injected
        digest = hashlib.sha256(body).hexdigest()
        if chat.response_format is None or (
            content_fault is ContentFault.SCHEMA_MISMATCH and chat.response_format.schema is None
        ):
            content_fault = None
        answer = completion(
            chat,
            f"chatcmpl-{digest[:24]}",
            int(time.time()),
            content_fault,
            self.config.cached_share,
            prose=self.config.realistic,
        )
        if self.config.realistic:
            answer = dress(answer)
        rate = self.config.upstream_error_rate
        if rate and self._upstream_rng.random() < rate:
            self.stats.lost_upstream += 1  # generated upstream, then lost by the gateway
            return _error(502, "Upstream error: the provider's response was lost.", "server_error")
        if self.config.leak_key:
            answer = leak_credential(answer, _credential(request.headers))
        tokens = int(answer["usage"]["completion_tokens"])
        if self.capacity is not None and fault is None and not await self.capacity.decode(tokens):
            return await self._overflow(headers)
        if chat.stream:
            self._count_content_fault(content_fault)
            return await self._stream(request, chat, answer, digest, fault, headers)
        encoded = orjson.dumps(answer)
        if fault is Fault.MALFORMED:
            return _json(200, encoded[: len(encoded) // 2], headers)
        self._count_content_fault(content_fault)
        self._count_completion(chat, digest)
        return _json(200, encoded, headers)

    def _injected(
        self, fault: Fault | None, request: web.BaseRequest, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        """The error answer of an injected HTTP fault (None: no such fault drawn)."""
        if fault is Fault.RATE_LIMIT:
            return _error(
                429,
                "Rate limit reached (injected fault).",
                "requests",
                code="rate_limit_exceeded",
                headers=headers | _retry_headers(round(self.config.retry_after_s * 1000)),
            )
        leaked = _credential(request.headers) if self.config.leak_key else ""
        if fault in _SERVER_ERRORS:
            status, message = _SERVER_ERRORS[fault]
            return _error(status, leak_message(message, leaked), "server_error", headers=headers)
        if fault is Fault.BAD_REQUEST:
            message = leak_message("Invalid request (injected fault).", leaked)
            return _error(400, message, "invalid_request_error", headers=headers)
        return None

    async def _overflow(self, headers: dict[str, str]) -> web.StreamResponse | None:
        """The capacity model's queue is full: a 503, or hang like an overloaded server."""
        self.stats.overflowed += 1
        if self.config.queue_overflow == "hang":
            await self._hang()
            return None
        return _error(
            503, "The server is overloaded: the queue is full.", "server_error", headers=headers
        )

    async def _hang(self) -> None:
        """Hang unanswered for ``hang_s`` (or until the server closes)."""
        self.stats.hung += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.hang_s):
                await self._closing.wait()

    async def _stream(
        self, request: web.BaseRequest, chat: IncomingChat, answer: dict[str, object], digest: str,
        fault: Fault | None, headers: dict[str, str],
    ) -> web.StreamResponse | None:  # fmt: skip
        """Send the answer as server-sent events; a cut closes the connection mid-event."""
        events = stream_events(answer, chat.include_usage)
        if fault is Fault.MALFORMED:
            events[len(events) // 2] = b"data: {not json\n\n"
        cookies = () if self._openai is None else self._openai.cookies()
        response = await write_events(
            request, events, headers, cut=fault is Fault.STREAM_CUT, more=cookies
        )
        if response is not None and self.config.close_after_stream:
            await response.write_eof()  # the answer is complete; then the connection goes
            if request.transport is not None:
                request.transport.close()
        if response is None:
            self.stats.cut += 1
        elif fault is None:
            self._count_completion(chat, digest)
        return response

    def _count_content_fault(self, fault: ContentFault | None) -> None:
        if fault is ContentFault.INVALID_JSON:
            self.stats.invalid_json += 1
        elif fault is ContentFault.SCHEMA_MISMATCH:
            self.stats.schema_mismatch += 1

    def _count_completion(self, chat: IncomingChat, digest: str) -> None:
        self.stats.completions_by_request[digest] += 1
        if chat.seed is not None:
            self.stats.completions_by_seed[chat.seed] += 1

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        """The key is presented in one of the profile's auth styles."""
        key = self.config.api_key
        if "bearer" in self._profile.auth_styles and headers.get("authorization") == self._bearer:
            return True
        return any(headers.get(name) == key for name in self._key_headers)

    def _draw_fault(self) -> Fault | None:
        """Draw every fault in order (a fixed number of draws per request); the first hit wins."""
        hit = None
        for fault, rate in self._fault_rates:
            if self._fault_rng.random() < rate and hit is None:
                hit = fault
        return hit

    def _draw_content_fault(self) -> ContentFault | None:
        """Like ``_draw_fault``, for the content faults, from their own generator."""
        hit = None
        for fault, rate in self._content_rates:
            if self._content_rng.random() < rate and hit is None:
                hit = fault
        return hit

    def _bind(self, host: str, port: int) -> None:
        root = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self._base_url = root + self._profile.base_path

    def _close(self) -> None:
        """Release hanging requests so shutdown is quick."""
        self._closing.set()


@asynccontextmanager
async def serve(
    config: FakeConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[FakeServer]:
    """Run a fake server on the running asyncio loop until the block exits."""
    server = FakeServer(config)
    runner = web.ServerRunner(
        web.Server(
            server.handle,
            access_log=None,
            handler_cancellation=True,
            request_factory=_large_bodies,
        ),
        shutdown_timeout=config.latency_s + config.latency_jitter_s + 1.0,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        server._bind(host, int(runner.addresses[0][1]))
        yield server
    finally:
        server._close()
        await runner.cleanup()


@contextmanager
def serve_in_thread(
    config: FakeConfig, host: str = "127.0.0.1", port: int = 0
) -> Iterator[FakeServer]:
    """Run a fake server on its own loop in a daemon thread; return once it listens."""
    ready: concurrent.futures.Future[tuple[FakeServer, Callable[[], object]]] = (
        concurrent.futures.Future()
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            async with serve(config, host, port) as server:
                ready.set_result((server, lambda: loop.call_soon_threadsafe(stop.set)))
                await stop.wait()
        except BaseException as exc:
            if ready.done():
                raise
            ready.set_exception(exc)

    thread = threading.Thread(target=asyncio.run, args=(run(),), name="fake-server", daemon=True)
    thread.start()
    try:
        server, stop = ready.result()
    except BaseException:
        thread.join()
        raise
    try:
        yield server
    finally:
        stop()
        thread.join()


_MAX_BODY = 210_000_000
"""Batch input files go up to 200 MB (aiohttp's default cap is 1 MiB)."""


def _large_bodies(
    message: RawRequestMessage,
    payload: StreamReader,
    protocol: RequestHandler,
    writer: AbstractStreamWriter,
    task: asyncio.Task[None],
) -> web.BaseRequest:
    """Requests that may carry a batch input file."""
    return web.BaseRequest(
        message,
        payload,
        protocol,
        writer,
        task,
        asyncio.get_running_loop(),
        client_max_size=_MAX_BODY,
    )


def _json(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


def _error(
    status: int,
    message: str,
    error_type: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return _json(status, error_body(message, error_type, param, code), headers)


def _refuse(refusal: Refusal) -> web.Response:
    return _error(
        refusal.status,
        refusal.message,
        "invalid_request_error",
        param=refusal.param,
        code=refusal.code,
    )


def _retry_headers(wait_ms: int) -> dict[str, str]:
    return {"retry-after": str(-(-wait_ms // 1000)), "retry-after-ms": str(wait_ms)}


def _credential(headers: Mapping[str, str]) -> str:
    """The key a request presented, in whichever auth style ("" without one)."""
    bearer = headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[7:]
    return next((headers[name] for name in _CREDENTIAL_HEADERS if name in headers), "")


def _record(request: web.BaseRequest, body: bytes) -> RecordedRequest:
    headers = {
        name.lower(): "[redacted]" if name.lower() in _CREDENTIAL_HEADERS else value
        for name, value in request.headers.items()
    }
    return RecordedRequest(request.path, headers, body)
