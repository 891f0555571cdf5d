"""The cache file as a run uses it: ``ResponseCache`` (lookup, buffered store, flush)."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from pipeline.cache.key import cache_key
from pipeline.records import USAGE_COLUMNS, ChatRequest, Reply, ToolCall, Usage

log = structlog.get_logger("pipeline")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
"""How long a write waits for another run's transaction (SQLite's busy timeout)."""
_WAL_RETRY_S = 0.01
"""Pause between tries to switch a new file to WAL mode while another run does."""
MAX_PENDING = 50_000
"""Answers buffered for writing at most; beyond, new ones are not cached (the output has them)."""

# A rowid table, not WITHOUT ROWID: answers (about 700 bytes) append in rowid order and
# only the key index takes random inserts, which writes a quarter of the pages (measured:
# 7 against 25 CPU-us a stored answer, 55,800 against 231,500 blocks written for 20,000).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key BLOB PRIMARY KEY,
    model TEXT,
    created_at REAL NOT NULL,
    cost_usd REAL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
"""


@dataclass(frozen=True, slots=True)
class Hit:
    """A cached answer: the reply as it came, what it cost then, when it was stored;
    ``reask`` > 0 for the answer a row reached at that JSON re-ask (see ``store_reask``)."""

    reply: Reply
    cost_usd: float | None
    created_at: float
    reask: int = 0


def _encode(reply: Reply, reask: int, cost_usd: float | None) -> bytes:
    chain = {"reask": reask, "cost_usd": cost_usd} if reask else {}
    return orjson.dumps(
        {
            **chain,
            "content": reply.content,
            "finish_reason": reply.finish_reason,
            "model": reply.model,
            "http_status": reply.http_status,
            "latency_ms": reply.latency_ms,
            "usage": {name: getattr(reply.usage, name) for name in USAGE_COLUMNS},
            "choices": list(reply.choices),
            "tool_calls": None
            if reply.tool_calls is None
            else [
                {"id": call.id, "name": call.name, "arguments": call.arguments}
                for call in reply.tool_calls
            ],
            "system_fingerprint": reply.system_fingerprint,
            "response_id": reply.response_id,
        }
    )


def _decode(data: dict[str, Any]) -> Reply:
    calls = data.get("tool_calls")
    return Reply(
        content=data.get("content"),
        finish_reason=data.get("finish_reason"),
        model=data.get("model"),
        http_status=int(data.get("http_status") or 200),
        latency_ms=float(data.get("latency_ms") or 0.0),
        usage=Usage(**data.get("usage") or {}),
        choices=tuple(data.get("choices") or ()),
        tool_calls=None if calls is None else tuple(ToolCall(**call) for call in calls),
        system_fingerprint=data.get("system_fingerprint"),
        response_id=data.get("response_id"),
    )


def connect(path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A connection in WAL mode with the schema in place (raises ``sqlite3.Error``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        _write_ahead_log(db, busy_timeout_s)
        db.execute("PRAGMA synchronous = NORMAL")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"written by a newer version (schema {version})")
        db.executescript(_SCHEMA)
        if version < SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.close()
        raise
    return db


def _write_ahead_log(db: sqlite3.Connection, busy_timeout_s: float) -> None:
    """Put the file in WAL mode. Two runs doing so at once on a new file: one is told
    "database is locked" at once (SQLite does not wait its busy timeout there; 18 of 60
    openings in a race), so it tries again within the busy timeout."""
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_WAL_RETRY_S)


class ResponseCache:
    """One cache file seen from one endpoint. ``lookup`` and ``store`` are for the event
    loop's thread; ``flush`` for one worker thread at a time."""

    def __init__(
        self, path: Path, identity: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> None:
        """Open (or create) the file; raises ``sqlite3.Error`` or ``OSError`` when it cannot."""
        self.path = path
        self._identity = identity
        self._reader = connect(path, busy_timeout_s)
        try:
            self._writer = connect(path, busy_timeout_s)
        except BaseException:
            self._reader.close()
            raise
        self._pending: list[tuple[bytes, str | None, float, Reply, float | None, int]] = []
        self._lock = threading.Lock()
        self._broken = False
        self._full = False

    @classmethod
    def open(cls, path: Path, identity: str) -> ResponseCache | None:
        """The cache at ``path``, or None (reported once) when the file is unusable."""
        try:
            return cls(path, identity)
        except (sqlite3.Error, OSError) as exc:
            log.warning("cache.unusable", path=str(path), error=str(exc), action="running without")
            return None

    def key(self, request: ChatRequest) -> bytes:
        """The entry key of ``request`` at this cache's endpoint."""
        return cache_key(self._identity, request.request_hash)

    def _reask_key(self, first: ChatRequest) -> bytes:
        return cache_key(self._identity, f"reask:{first.request_hash}")

    def lookup(self, request: ChatRequest) -> Hit | None:
        """The stored answer to exactly this request, if any (a broken file: never)."""
        return self._find(self.key(request))

    def lookup_reask(self, first: ChatRequest, max_reask: int) -> Hit | None:
        """The answer a row whose first request is ``first`` reached at a JSON re-ask (at
        most ``max_reask``), with the usage and cost of all its answers, if one is stored."""
        hit = self._find(self._reask_key(first))
        return hit if hit is not None and 0 < hit.reask <= max_reask else None

    def _find(self, key: bytes) -> Hit | None:
        if self._broken:
            return None
        try:
            row = self._reader.execute(
                "SELECT value, cost_usd, created_at FROM responses WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            data: dict[str, Any] = orjson.loads(row[0])
            reask = int(data.get("reask") or 0)
            cost = data.get("cost_usd") if reask else row[1]
            return Hit(_decode(data), cost, row[2], reask)
        except (sqlite3.Error, ValueError, TypeError) as exc:
            self._give_up(exc)
            return None

    def store(self, request: ChatRequest, reply: Reply, cost_usd: float | None) -> None:
        """Remember an answer (written by the next ``flush``; the first stored answer stays)."""
        self._buffer(self.key(request), request.model, reply, cost_usd, 0)

    def store_reask(
        self, first: ChatRequest, reask: int, reply: Reply, cost_usd: float | None
    ) -> None:
        """Remember the valid answer a row reached at JSON re-ask ``reask`` > 0 after its
        first request ``first`` got an unusable one (``reply.usage`` and ``cost_usd``: of
        all the row's answers), so the next run pays for neither. Kept apart from the
        answers to exact requests: its cost is left out of ``cache_stats``."""
        self._buffer(self._reask_key(first), first.model, reply, cost_usd, reask)

    def _buffer(
        self, key: bytes, model: str | None, reply: Reply, cost_usd: float | None, reask: int
    ) -> None:
        if self._broken:
            return
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                if not self._full:
                    self._full = True
                    log.warning("cache.behind", path=str(self.path), pending=len(self._pending))
                return
            self._pending.append((key, model, time.time(), reply, cost_usd, reask))

    @property
    def pending(self) -> int:
        """Answers stored but not yet written."""
        return len(self._pending)

    def flush(self) -> int:
        """Write every buffered answer in one transaction (blocking); returns how many.

        When another run holds the file longer than the busy timeout, the answers stay
        buffered for the next flush; any other failure turns the cache off (reported once).
        """
        with self._lock:
            batch, self._pending = self._pending, []
            self._full = False
        if not batch or self._broken:
            return 0
        rows = []
        for key, model, created, reply, cost, reask in batch:
            try:
                value = _encode(reply, reask, cost)
                rows.append((key, model, created, None if reask else cost, value))
            except TypeError:  # text JSON cannot hold (a lone surrogate): not cached
                continue
        try:
            with self._writer:
                self._writer.execute("BEGIN IMMEDIATE")
                self._writer.executemany(
                    "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?)", rows
                )
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                log.info("cache.busy", path=str(self.path), pending=len(batch))
                with self._lock:
                    self._pending = batch + self._pending
                return 0
            self._give_up(exc)
            return 0
        except sqlite3.Error as exc:
            self._give_up(exc)
            return 0
        return len(rows)

    def close(self) -> None:
        """Close both connections (``flush`` first to keep what is buffered)."""
        self._reader.close()
        self._writer.close()

    def _give_up(self, exc: Exception) -> None:
        if not self._broken:
            self._broken = True
            log.warning(
                "cache.unusable", path=str(self.path), error=str(exc), action="running without"
            )
