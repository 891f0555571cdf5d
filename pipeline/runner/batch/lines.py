"""Batch lines: custom ids, input files split to fit, output and error lines read back.

A line's ``custom_id`` is ``<seq>-<reask>-<sha256 of the body, 16 hex>``: the output
position, which JSON re-ask it is, and what was asked; a line is joined back to its row on
``custom_id`` alone, never by position, and one whose body hash no longer matches the row's
request (the input changed) is ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from pipeline.client import error_for_status
from pipeline.client.parse import reply_from, server_message
from pipeline.errors import AttemptError, BadRequest, BadResponse
from pipeline.records import ChatRequest, Reply

UNFINISHED = frozenset({"batch_expired", "batch_cancelled", "request_timeout"})
"""Error codes of lines the batch never answered: they go into a new batch."""


def custom_id(seq: int, reask: int, request: ChatRequest) -> str:
    """The id of the line asking ``request`` for output position ``seq``."""
    return f"{seq}-{reask}-{hashlib.sha256(request.body).hexdigest()[:16]}"


def seq_of(line_id: str) -> int | None:
    """The output position a custom id names (None: not one of ours)."""
    head = line_id.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def encode_line(line_id: str, url: str, body: bytes) -> bytes:
    """One input line; ``body`` goes in as the exact bytes live mode sends."""
    return (
        b'{"custom_id":'
        + orjson.dumps(line_id)
        + b',"method":"POST","url":'
        + orjson.dumps(url)
        + b',"body":'
        + body
        + b"}\n"
    )


def split_lines(
    lines: list[tuple[str, bytes]], max_lines: int, max_bytes: int
) -> Iterator[list[tuple[str, bytes]]]:
    """Files of at most ``max_lines`` lines and ``max_bytes`` bytes (a bigger line goes alone)."""
    chunk: list[tuple[str, bytes]] = []
    size = 0
    for line in lines:
        if chunk and (len(chunk) >= max_lines or size + len(line[1]) > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line[1])
    if chunk:
        yield chunk


@dataclass(frozen=True, slots=True)
class Unfinished:
    """A line the batch did not answer: expired, cancelled, timed out or missing."""

    code: str
    message: str


LineResult = Reply | AttemptError | Unfinished


def read_results(content: bytes, results: dict[str, LineResult]) -> None:
    """Output or error file lines into ``results`` by custom id (in whatever order they come)."""
    for raw in content.splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(line, dict) and isinstance(line.get("custom_id"), str):
            results[line["custom_id"]] = line_result(line)


def line_result(line: dict[str, Any]) -> LineResult:
    """One output or error line: a reply, an HTTP error like live ones, or unfinished."""
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status: int = response["status_code"]
        body = response.get("body")
        if isinstance(body, str):  # some servers send the body as a JSON string
            try:
                body = orjson.loads(body)
            except orjson.JSONDecodeError:
                return BadResponse("batch line body is not JSON", http_status=status)
        if status == 200:
            try:
                return reply_from(body, 200, 0.0, None)
            except BadResponse as exc:
                return exc
        return error_for_status(status, server_message(orjson.dumps(body)), None)
    code, message = _error_fields(error)
    if code in UNFINISHED:
        return Unfinished(code, message)
    return BadRequest(f"batch line error {code}: {message}")


def _error_fields(error: Any) -> tuple[str, str]:
    """``error.code`` (or ``error.type``, which some servers send instead) and its message."""
    if not isinstance(error, dict):
        return "unknown", "batch line has neither a response nor an error"
    code = error.get("code") or error.get("type") or "unknown"
    return str(code), str(error.get("message") or code)
