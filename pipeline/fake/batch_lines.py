"""The fake's batch lines: each answered by the fake's own chat engine (usage, seeds,
JSON answers and content faults as on the live route), or spoiled by a line fault
(dropped, timed out, a 500); and what ``/stats`` counts of them."""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.fake.config import ContentFault, FakeConfig
from pipeline.fake.content import InvalidRequestError, completion, error_body, parse_request
from pipeline.fake.profiles import Profile


@dataclass
class BatchStats:
    """What ``/stats`` shows of the Batch API (``batches`` key)."""

    files_uploaded: int = 0
    files_deleted: int = 0
    batches_created: int = 0
    batches_cancelled: int = 0
    lines_by_custom_id: Counter[str] = field(default_factory=Counter)
    lines_by_request: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view; ``lines_*`` count lines answered 200, keyed by custom_id and by
        the sha256 hex of the line's body as JSON."""
        return {
            "files_uploaded": self.files_uploaded,
            "files_deleted": self.files_deleted,
            "batches_created": self.batches_created,
            "batches_cancelled": self.batches_cancelled,
            "lines_by_custom_id": dict(self.lines_by_custom_id),
            "lines_by_request": dict(self.lines_by_request),
        }


class LineEngine:
    """Answers batch lines like the live route answers requests."""

    def __init__(self, config: FakeConfig, stats: BatchStats, rng: random.Random) -> None:
        self.config = config
        self._profile: Profile = config.profile
        self._stats = stats
        self._rng = rng

    def answer(self, line: dict[str, Any]) -> tuple[bytes | None, bool]:
        """One line through the chat engine: its output (or error) line, and whether it is a 200."""
        config, rng = self.config, self._rng
        custom_id = line["custom_id"]
        drop, timeout, error = rng.random(), rng.random(), rng.random()
        if drop < config.batch_drop_line_rate:
            return None, False
        if timeout < config.batch_timeout_line_rate:
            message = "The request timed out."
            return _line(custom_id, None, {"code": "request_timeout", "message": message}), False
        if error < config.batch_error_line_rate:
            failure = orjson.loads(
                error_body("The server had an error (injected).", "server_error")
            )
            return _line(custom_id, _response(500, failure)), False
        status, answer = self._chat(line.get("body"))
        if status != 200:
            return _line(custom_id, _response(status, answer)), False
        digest = hashlib.sha256(orjson.dumps(line["body"])).hexdigest()
        self._stats.lines_by_custom_id[custom_id] += 1
        self._stats.lines_by_request[digest] += 1
        as_string = rng.random() < config.batch_string_body_rate
        body: Any = orjson.dumps(answer).decode() if as_string else answer
        return _line(custom_id, _response(200, body)), True

    def _chat(self, body: Any) -> tuple[int, dict[str, Any]]:
        """A chat body -> (status, answer or error body), as the live route answers it."""
        try:
            chat = parse_request(orjson.dumps(body))
        except InvalidRequestError as exc:
            return 400, orjson.loads(error_body(exc.message, "invalid_request_error", exc.param))
        refusal = self._profile.check_body(chat.fields, chat.model)
        if refusal is not None:
            error = error_body(
                refusal.message, "invalid_request_error", refusal.param, refusal.code
            )
            return refusal.status, orjson.loads(error)
        fault = None
        wanted = chat.response_format
        if wanted is not None:  # the content faults, as on the live route
            invalid, mismatch = self._rng.random(), self._rng.random()
            if invalid < self.config.invalid_json_rate:
                fault = ContentFault.INVALID_JSON
            elif wanted.schema is not None and mismatch < self.config.schema_mismatch_rate:
                fault = ContentFault.SCHEMA_MISMATCH
        digest = hashlib.sha256(orjson.dumps(body)).hexdigest()
        answer = completion(chat, f"chatcmpl-{digest[:24]}", int(time.time()), fault,
                            self.config.cached_share)  # fmt: skip
        return 200, answer


def line_tokens(line: dict[str, Any]) -> int:
    """Enqueued tokens of a line, roughly as providers count them (prompt chars / 4 + max_tokens)."""
    body = line.get("body")
    if not isinstance(body, dict):
        return 0
    prompt = len(orjson.dumps(body.get("messages"))) // 4
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or 16
    return prompt + (limit if isinstance(limit, int) else 16)


def _response(status: int, body: Any) -> dict[str, Any]:
    request_id = hashlib.sha256(orjson.dumps(body)).hexdigest()[:16]
    return {"status_code": status, "request_id": f"req_{request_id}", "body": body}


def _line(custom_id: str, response: dict[str, Any] | None, error: Any = None) -> bytes:
    digest = hashlib.sha256(custom_id.encode()).hexdigest()[:12]
    return orjson.dumps(
        {"id": f"batch_req_{digest}", "custom_id": custom_id, "response": response, "error": error}
    )


def unfinished(line: dict[str, Any], status: str) -> bytes:
    """The error line of a line the batch never ran (expired: ``code``; cancelled: ``type``)."""
    if status == "expired":
        error = {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}  # fmt: skip
    else:
        error = {"type": "batch_cancelled", "message": "This request was cancelled."}
    return _line(line["custom_id"], None, error)
