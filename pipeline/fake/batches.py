"""The fake's Batch API: files and batches, lines answered by the fake's own chat engine.

Routes live under the profile's ``batch_root`` (``/v1``; Azure ``/openai/v1``)::

    POST   /files (multipart, purpose=batch)     GET /files?purpose=     DELETE /files/{id}
    GET    /files/{id}/content
    POST   /batches   GET /batches/{id}   POST /batches/{id}/cancel   GET /batches?after=&limit=

Time is scaled: a batch takes ``batch_duration_s`` simulated seconds, that is
``batch_duration_s * batch_time_scale`` real ones; it is ``validating`` for its first 5%,
``in_progress`` until 100%, ``finalizing`` briefly, then ``completed``. State advances when
a batch is read (no background task). Faults (``FakeConfig``): a batch that fails
validation, one that expires after a share of its lines, the enqueued-token limit
(``token_limit_exceeded``), error lines, lines that time out, lines dropped from the
output, output in shuffled order, ``response.body`` as a JSON string.
"""

from __future__ import annotations

import email.policy
import math
import random
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from typing import Any

import orjson
from aiohttp import web

from pipeline.fake.batch_lines import BatchStats, LineEngine, line_tokens, unfinished
from pipeline.fake.config import FakeConfig
from pipeline.fake.content import error_body
from pipeline.fake.profiles import Profile

_ACTIVE = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_VALIDATING_SHARE = 0.05
_WINDOW_S = 24 * 3600


@dataclass
class StoredFile:
    """One file the server holds."""

    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def view(self) -> dict[str, Any]:
        """The file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
        }


@dataclass
class FakeBatch:
    """One batch: its lines, when it started (real time), what it became."""

    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str]
    lines: list[dict[str, Any]]
    started: float
    created_at: int
    tokens: int
    status: str = "validating"
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    cancel_asked: float | None = None
    completed: int = 0
    failed: int = 0

    def view(self) -> dict[str, Any]:
        """The batch object as OpenAI shows it."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + _WINDOW_S,
            "request_counts": {
                "total": len(self.lines),
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
        }


class BatchService:
    """Files and batches of one fake server, on its profile's routes."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.stats = BatchStats()
        self._profile: Profile = config.profile
        self.root = self._profile.batch_root
        self._files: dict[str, StoredFile] = {}
        self._batches: dict[str, FakeBatch] = {}
        self._rng = random.Random(f"{config.fault_seed}:batch")
        self._lines = LineEngine(config, self.stats, self._rng)
        self._ids = 0

    def owns(self, path: str) -> bool:
        """Whether ``path`` is one of the Batch API's routes."""
        return path.startswith((f"{self.root}/files", f"{self.root}/batches"))

    async def handle(self, request: web.BaseRequest, body: bytes) -> web.Response:
        """Answer one Batch API request (already authorized)."""
        parts = request.path.removeprefix(self.root).strip("/").split("/")
        method = request.method
        if parts[0] == "files":
            if method == "POST" and len(parts) == 1:
                return self._upload(request.headers.get("content-type", ""), body)
            if method == "GET" and len(parts) == 1:
                return self._list_files(request.query.get("purpose"))
            if len(parts) >= 2 and parts[1] in self._files:
                return self._file_route(method, parts)
            return _not_found(f"No such File object: {parts[1] if len(parts) > 1 else ''}")
        if method == "POST" and len(parts) == 1:
            return self._create(body)
        if method == "GET" and len(parts) == 1:
            return self._list_batches(request.query)
        batch = self._batches.get(parts[1]) if len(parts) >= 2 else None
        if batch is None:
            return _not_found("No such Batch object")
        if method == "POST" and parts[2:] == ["cancel"]:
            return self._cancel(batch)
        if method == "GET" and len(parts) == 2:
            self._advance(batch)
            return _json(batch.view())
        return _not_found(f"Invalid URL ({method} {request.path})")

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids:06d}"

    def _upload(self, content_type: str, body: bytes) -> web.Response:
        form = _multipart(content_type, body)
        upload, purpose = form.get("file"), form.get("purpose")
        if upload is None or purpose is None:
            return _bad("a multipart file and purpose are required", "file")
        stored = StoredFile(
            self._next_id("file"), upload[0], purpose[1].decode(), upload[1], int(time.time())
        )
        self._files[stored.id] = stored
        self.stats.files_uploaded += 1
        return _json(stored.view())

    def _list_files(self, purpose: str | None) -> web.Response:
        found = [f.view() for f in self._files.values() if purpose in (None, f.purpose)]
        return _json({"object": "list", "data": found})

    def _file_route(self, method: str, parts: list[str]) -> web.Response:
        stored = self._files[parts[1]]
        if method == "DELETE" and len(parts) == 2:
            del self._files[stored.id]
            self.stats.files_deleted += 1
            return _json({"id": stored.id, "object": "file", "deleted": True})
        if method == "GET" and parts[2:] == ["content"]:
            return web.Response(body=stored.content, content_type="application/octet-stream")
        if method == "GET" and len(parts) == 2:
            return _json(stored.view())
        return _not_found(f"Invalid URL ({method} /files/{'/'.join(parts[1:])})")

    def _create(self, body: bytes) -> web.Response:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _bad("We could not parse the JSON body of your request.", None)
        if not isinstance(payload, dict):
            return _bad("The request body must be a JSON object.", None)
        stored = self._files.get(str(payload.get("input_file_id")))
        if stored is None:
            return _bad("input_file_id: no such file", "input_file_id")
        if payload.get("endpoint") != self._profile.batch_endpoint:
            return _bad(f"endpoint must be {self._profile.batch_endpoint}", "endpoint")
        if payload.get("completion_window") != "24h":
            return _bad("completion_window must be 24h", "completion_window")
        metadata = payload.get("metadata") or {}
        lines, problem = self._read_lines(stored.content)
        batch = FakeBatch(
            id=self._next_id("batch"),
            input_file_id=stored.id,
            endpoint=self._profile.batch_endpoint,
            metadata={str(k): str(v) for k, v in metadata.items()},
            lines=lines,
            started=time.monotonic(),
            created_at=int(time.time()),
            tokens=sum(line_tokens(line) for line in lines),
        )
        self._batches[batch.id] = batch
        self.stats.batches_created += 1
        self._validate(batch, problem)
        return _json(batch.view())

    def _read_lines(self, content: bytes) -> tuple[list[dict[str, Any]], str | None]:
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(content.splitlines(), 1):
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return lines, f"line {number}: not JSON"
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(custom_id, str) or custom_id in seen:
                return lines, f"line {number}: custom_id missing or not unique"
            if line.get("method") != "POST" or line.get("url") != self._profile.batch_endpoint:
                return (
                    lines,
                    f"line {number}: method must be POST and url {self._profile.batch_endpoint}",
                )
            body = line.get("body")
            deployment = self._profile.deployment
            if deployment is not None and (
                not isinstance(body, dict) or body.get("model") != deployment
            ):
                return lines, f"line {number}: body.model must name the deployment {deployment}"
            seen.add(custom_id)
            lines.append(line)
        return lines, None if lines else "the file has no lines"

    def _validate(self, batch: FakeBatch, problem: str | None) -> None:
        """Fail the batch now when its file is invalid, a fault says so, or it does not fit
        the enqueued-token limit."""
        limit = self.config.batch_token_limit
        enqueued = sum(b.tokens for b in self._batches.values() if b.status in _ACTIVE)
        if problem is None and self._rng.random() < self.config.batch_fail_rate:
            problem = "invalid batch (injected fault)"
        if problem is not None:
            batch.errors = [{"code": "invalid_request", "message": problem, "line": None}]
        elif limit is not None and enqueued > limit:
            message = (
                f"Enqueued token limit reached for {batch.lines[0]['body'].get('model')}: "
                f"Limit {limit}, enqueued {enqueued - batch.tokens}, this batch {batch.tokens}."
            )
            batch.errors = [{"code": "token_limit_exceeded", "message": message, "line": None}]
        if batch.errors:
            batch.status = "failed"

    def _cancel(self, batch: FakeBatch) -> web.Response:
        self._advance(batch)
        if batch.status in ("validating", "in_progress", "finalizing"):
            batch.status = "cancelling"
            batch.cancel_asked = time.monotonic()
            self.stats.batches_cancelled += 1
        return _json(batch.view())

    def _list_batches(self, query: Any) -> web.Response:
        newest = sorted(self._batches.values(), key=lambda b: b.id, reverse=True)
        after = query.get("after")
        if after is not None:
            newest = [b for b in newest if b.id < after]
        limit = int(query.get("limit", 20))
        page = newest[:limit]
        for batch in page:
            self._advance(batch)
        return _json(
            {
                "object": "list",
                "data": [b.view() for b in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(newest) > limit,
            }
        )

    def _share(self, batch: FakeBatch) -> float:
        duration = self.config.batch_duration_s * self.config.batch_time_scale
        if duration <= 0:
            return 1.0
        return (time.monotonic() - batch.started) / duration

    def _advance(self, batch: FakeBatch) -> None:
        """Move the batch along its statuses by the (scaled) time passed."""
        if batch.status not in _ACTIVE:
            return
        share = self._share(batch)
        expire = self.config.batch_expire_share
        if batch.status == "cancelling":
            self._finish(batch, "cancelled", min(share, 1.0))
        elif expire and share >= expire:
            self._finish(batch, "expired", expire)
        elif share >= 1.0 + _VALIDATING_SHARE:
            self._finish(batch, "completed", 1.0)
        elif share >= 1.0:
            batch.status = "finalizing"
        elif share >= _VALIDATING_SHARE:
            batch.status = "in_progress"
            batch.completed = int(len(batch.lines) * share)

    def _finish(self, batch: FakeBatch, status: str, share: float) -> None:
        """Answer the first ``share`` of the lines (rounded up); the rest are expired or cancelled."""
        done = math.ceil(len(batch.lines) * share)
        outputs: list[bytes] = []
        errors: list[bytes] = []
        batch.completed = batch.failed = 0
        for index, line in enumerate(batch.lines):
            if index >= done:
                errors.append(unfinished(line, status))
                batch.failed += 1
                continue
            record, ok = self._lines.answer(line)
            if record is None:
                continue  # dropped from the output
            (outputs if ok else errors).append(record)
            batch.completed += ok
            batch.failed += not ok
        if self.config.batch_shuffle:
            self._rng.shuffle(outputs)
            self._rng.shuffle(errors)
        batch.output_file_id = self._store_output(batch, "output", outputs)
        batch.error_file_id = self._store_output(batch, "error", errors)
        batch.status = status

    def _store_output(self, batch: FakeBatch, kind: str, lines: list[bytes]) -> str | None:
        if not lines:
            return None
        stored = StoredFile(
            self._next_id("file"),
            f"{batch.id}_{kind}.jsonl",
            "batch_output",
            b"\n".join(lines) + b"\n",
            int(time.time()),
        )
        self._files[stored.id] = stored
        return stored.id


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """A multipart/form-data body -> field name -> (file name, bytes)."""
    if not content_type.startswith("multipart/form-data"):
        return {}
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename() or "", payload)
    return fields


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _bad(message: str, param: str | None) -> web.Response:
    return web.Response(
        status=400,
        body=error_body(message, "invalid_request_error", param),
        content_type="application/json",
    )


def _not_found(message: str) -> web.Response:
    return web.Response(
        status=404,
        body=error_body(message, "invalid_request_error"),
        content_type="application/json",
    )
