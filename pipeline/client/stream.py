"""A streamed answer (server-sent events) folded back into one ``chat.completion``.

Events are decoded by ``httpx-sse`` (a maintained SSE parser over httpx's response
stream); each ``data:`` is a ``chat.completion.chunk``, merged here per choice index:
content pieces are joined, tool-call pieces are joined per call index, the last
``finish_reason`` wins, and the ``usage`` chunk (``stream_options.include_usage``)
gives the token counts. ``data: [DONE]`` ends the answer; a stream that stops before
it is an answer that never arrived in full (``ConnectionFailed``, retried).

``ttft_ms`` is the time from sending to the first delta carrying content or a tool call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.errors import BadResponse, ServerError

DONE = "[DONE]"


@dataclass
class _Choice:
    parts: list[str] = field(default_factory=list)
    has_content: bool = False
    finish_reason: str | None = None
    calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(self.parts) if self.has_content else None,
        }
        if self.calls:
            message["tool_calls"] = [
                {"id": call["id"] or None, "type": "function",
                 "function": {"name": call["name"], "arguments": call["arguments"]}}
                for _, call in sorted(self.calls.items())
            ]  # fmt: skip
        return message


class StreamAssembler:
    """Feeds on event data, one ``data:`` payload at a time; ``completion()`` at the end."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.events = 0
        self.done = False
        self.first_delta_at: float | None = None
        self._meta: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._choices: dict[int, _Choice] = {}

    @property
    def ttft_ms(self) -> float | None:
        """Milliseconds from sending to the first content or tool-call delta."""
        if self.first_delta_at is None:
            return None
        return (self.first_delta_at - self.started) * 1000.0

    def feed(self, data: str) -> None:
        """Merge one event's data; raises ``BadResponse`` (not JSON) or ``ServerError`` (an
        error event)."""
        if self.done:
            return
        if data == DONE:
            self.done = True
            return
        self.events += 1
        try:
            chunk: Any = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadResponse(
                f"stream event {self.events} is not valid JSON ({exc.msg})", http_status=200
            ) from None
        if not isinstance(chunk, dict):
            raise BadResponse(f"stream event {self.events} is not a JSON object", http_status=200)
        error = chunk.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            raise ServerError(f"error event in stream: {message}"[:300], http_status=200)
        for key in ("id", "model", "system_fingerprint"):
            if chunk.get(key) is not None:
                self._meta[key] = chunk[key]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                self._merge(choice)

    def _merge(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        slot = self._choices.setdefault(index if isinstance(index, int) else 0, _Choice())
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str):
                slot.has_content = True
                if content:
                    slot.parts.append(content)
                    self._mark()
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                number = call.get("index", 0)
                merged = slot.calls.setdefault(
                    number if isinstance(number, int) else 0,
                    {"id": "", "name": "", "arguments": ""},
                )
                if isinstance(call.get("id"), str):
                    merged["id"] = call["id"]
                function = call.get("function")
                if isinstance(function, dict):
                    for key in ("name", "arguments"):
                        if isinstance(function.get(key), str):
                            merged[key] += function[key]
                self._mark()
        if choice.get("finish_reason") is not None:
            slot.finish_reason = choice["finish_reason"]

    def _mark(self) -> None:
        if self.first_delta_at is None:
            self.first_delta_at = time.perf_counter()

    def completion(self) -> dict[str, Any]:
        """What was streamed, in the shape of a non-streamed ``chat.completion``."""
        return {
            **self._meta,
            "choices": [
                {"index": index, "message": slot.message(), "finish_reason": slot.finish_reason}
                for index, slot in sorted(self._choices.items())
            ],
            "usage": self._usage,
        }
