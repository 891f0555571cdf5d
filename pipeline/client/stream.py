"""A streamed answer (server-sent events) folded back into one ``chat.completion``.

``EventStream`` cuts the body's bytes into events as they arrive (on aiohttp; through
httpx with an injected transport, ``httpx-sse`` does); each event's data is a
``chat.completion.chunk``, merged here per choice index:
content pieces are joined, tool-call pieces are joined per call index, the last
``finish_reason`` wins, and the ``usage`` chunk (``stream_options.include_usage``)
gives the token counts. ``data: [DONE]`` ends the answer; a stream that stops before
it is an answer that never arrived in full (``ConnectionFailed``, retried).

``ttft_ms`` is the time from sending to the first delta carrying content or a tool call.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.errors import BadResponse, ServerError

DONE = "[DONE]"


class EventStream:
    """The data of each server-sent event in a body fed as it arrives (WHATWG rules).

    Lines end in CRLF, LF or CR (a CR at the end of a chunk waits for the next one, which
    may start with its LF); a blank line ends an event; its ``data:`` lines join with a
    newline (one space after the colon dropped); a line starting with ``:`` is a comment;
    other fields (``event``, ``id``, ``retry``) say nothing an answer needs. An event
    without data (a heartbeat such as ``event: ping``) is not handed over, nor is one the
    body ends inside.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._rest = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The data of every event ``chunk`` completes, in order."""
        text = self._rest + self._decoder.decode(chunk)
        held = ""
        if text.endswith("\r"):
            text, held = text[:-1], "\r"
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, rest = text.split("\n")
        self._rest = rest + held
        return self._events(lines)

    def end(self) -> list[str]:
        """The data of an event the body's last CR completes (the body has ended)."""
        if not self._rest.endswith("\r"):
            return []
        rest, self._rest = self._rest[:-1], ""
        return self._events([rest])

    def _events(self, lines: list[str]) -> list[str]:
        """The data of every event ``lines`` complete."""
        events: list[str] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data"):
                name, _, value = line.partition(":")
                if name == "data":
                    self._data.append(value[1:] if value.startswith(" ") else value)
        return events


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
        if self.done or not data:  # empty: a heartbeat (httpx-sse hands those over too)
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
