"""A completion as server-sent events, the way OpenAI streams it.

    data: {chunk: role}                 one per choice
    data: {chunk: content piece}        a few per choice (or tool-call pieces)
    data: {chunk: finish_reason}        one per choice
    data: {chunk: choices [], usage}    only with stream_options.include_usage
    data: [DONE]

Every chunk is a ``chat.completion.chunk`` with the completion's id, created, model and
system_fingerprint; ``usage`` is null on all but the usage chunk when it is asked for.
``write_events`` sends them, or (``stream_cut``) stops half-way through an event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web

DONE = b"data: [DONE]\n\n"
_PIECES = 4  # content pieces per choice: enough to be a stream, few enough to stay fast


def _split(text: str, pieces: int = _PIECES) -> list[str]:
    """``text`` in up to ``pieces`` consecutive parts that join back to it."""
    if not text:
        return []
    size = -(-len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]


def events(completion: dict[str, Any], include_usage: bool) -> list[bytes]:
    """The SSE events (``data: ...\\n\\n``) that stream ``completion``, ``[DONE]`` last."""
    head = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "system_fingerprint": completion["system_fingerprint"],
    }

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {**head, "choices": choices, **extra}
        if include_usage and "usage" not in extra:
            body["usage"] = None
        return b"data: " + orjson.dumps(body) + b"\n\n"

    out: list[bytes] = []
    for choice in completion["choices"]:
        index, message = choice["index"], choice["message"]

        def delta(part: dict[str, Any], finish: str | None = None, index: int = index) -> bytes:
            return chunk(
                [{"index": index, "delta": part, "logprobs": None, "finish_reason": finish}]
            )

        out.append(
            delta({"role": "assistant", "content": "" if message["content"] is not None else None})
        )
        for piece in _split(message["content"] or ""):
            out.append(delta({"content": piece}))
        for number, call in enumerate(message.get("tool_calls") or []):
            function = call["function"]
            out.append(
                delta(
                    {
                        "tool_calls": [
                            {
                                "index": number,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": function["name"], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for piece in _split(function["arguments"], 2):
                out.append(
                    delta({"tool_calls": [{"index": number, "function": {"arguments": piece}}]})
                )
        out.append(delta({}, choice["finish_reason"]))
    if include_usage:
        out.append(chunk([], usage=completion["usage"]))
    out.append(DONE)
    return out


async def write_events(
    request: web.BaseRequest,
    events: list[bytes],
    headers: Mapping[str, str],
    *,
    cut: bool,
    more: Iterable[tuple[str, str]] = (),
) -> web.StreamResponse | None:
    """Send ``events`` as a ``text/event-stream`` response with ``headers`` and the
    repeatable ``more`` (``set-cookie``). With ``cut``, stop half-way, in the middle of an
    event, and return None (the caller closes the connection)."""
    response = web.StreamResponse(
        status=200,
        headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
    )
    response.headers.extend(more)
    await response.prepare(request)
    if cut:
        half = len(events) // 2
        await response.write(b"".join(events[:half]) + events[half][: len(events[half]) // 2])
        return None
    for event in events:
        await response.write(event)
    return response
