"""The response cache across runs: never pay twice for the same request.

One SQLite file (WAL mode, safe for concurrent runs of different jobs), one row per
answered request, values stored as JSON (never pickle)::

    responses(key BLOB PRIMARY KEY, model TEXT, created_at REAL, cost_usd REAL, value TEXT)

The key is SHA-256 of the endpoint's identity (scheme, host, port, path, query: never
the API key or headers) and the request hash (the exact body bytes, seed included), so
two rows sending the same request share one entry across rows, jobs, outputs and days.
The identity is kept only inside the hash. ``cost_usd`` is what the answer cost when it
was bought (None: it could not be priced).

Any sender (live, batch) uses the same small API: ``lookup`` (synchronous: a hit costs
about 16 us and a miss 10 us on the calling thread, against about 120 us through a worker
thread, measured), ``store`` (into a bounded buffer: no I/O) and ``flush`` (blocking: one
transaction for everything buffered; run it in a thread). A cache file that cannot be
read or written is reported once (``cache.unusable``) and the run goes on without it.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import structlog

from pipeline.errors import InputError
from pipeline.records import ChatRequest, Reply, ToolCall, Usage
from pipeline.spec import CacheSpec, EndpointSpec, RequestSpec

log = structlog.get_logger("pipeline")

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0
"""How long a write waits for another run's transaction (SQLite's busy timeout)."""
MAX_PENDING = 50_000
"""Answers buffered for writing at most; beyond, new ones are not cached (the output has them)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key BLOB PRIMARY KEY,
    model TEXT,
    created_at REAL NOT NULL,
    cost_usd REAL,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
"""
_DEFAULT_PORTS = {"http": 80, "https": 443}
_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def default_path() -> Path:
    """``$XDG_CACHE_HOME/llm-batch-pipeline/responses.sqlite`` (``~/.cache`` without the variable)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "llm-batch-pipeline" / "responses.sqlite"


def cache_path(spec: CacheSpec, *, path: Path | None = None, off: bool = False) -> Path | None:
    """The cache file a run uses: ``--no-cache`` (``off``) > ``--cache PATH`` > ``[cache]``."""
    if off:
        return None
    if path is not None:
        return path.expanduser()
    if not spec.active:
        return None
    return Path(spec.path).expanduser() if spec.path is not None else default_path()


def uncached_reason(request: RequestSpec, spec: CacheSpec) -> str | None:
    """Why a job's answers are not cached (None: they are).

    Answers sampled at ``temperature`` > 0 (or unset: servers default to 1) with no seed
    the job chose are meant to differ from run to run; caching them needs
    ``[cache] nondeterministic = true``.
    """
    if spec.nondeterministic or request.temperature == 0:
        return None
    if "seed" in request.model_fields_set or request.seed_column is not None:
        return None
    return (
        "temperature above 0 (or unset) and no seed in the job: answers are samples;"
        " set [cache] nondeterministic = true to cache them"
    )


def endpoint_identity(endpoint: EndpointSpec) -> str:
    """Scheme, host, port, path and sorted query of the chat-completions URL (no key, no headers)."""
    if endpoint.is_fake:
        return "fake"
    url = urlsplit(endpoint.base_url)
    scheme = url.scheme.lower()
    port = url.port or _DEFAULT_PORTS.get(scheme)
    path = url.path.rstrip("/") + "/chat/completions"
    query = sorted([*parse_qsl(url.query, keep_blank_values=True), *endpoint.query.items()])
    return f"{scheme}://{(url.hostname or '').lower()}:{port}{path}?{urlencode(query)}"


def cache_key(identity: str, request_hash: str) -> bytes:
    """The entry's key: SHA-256 of the endpoint identity and the request hash."""
    return hashlib.sha256(f"{identity}\n{request_hash}".encode()).digest()


@dataclass(frozen=True, slots=True)
class Hit:
    """A cached answer: the reply as it came, what it cost then, when it was stored."""

    reply: Reply
    cost_usd: float | None
    created_at: float


def _encode(reply: Reply) -> bytes:
    return orjson.dumps(
        {
            "content": reply.content,
            "finish_reason": reply.finish_reason,
            "model": reply.model,
            "http_status": reply.http_status,
            "latency_ms": reply.latency_ms,
            "usage": asdict(reply.usage),
            "choices": list(reply.choices),
            "tool_calls": None
            if reply.tool_calls is None
            else [asdict(call) for call in reply.tool_calls],
            "system_fingerprint": reply.system_fingerprint,
            "response_id": reply.response_id,
        }
    )


def _decode(value: str | bytes) -> Reply:
    data: dict[str, Any] = orjson.loads(value)
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


def _connect(path: Path, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A connection in WAL mode with the schema in place (raises ``sqlite3.Error``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        db.execute("PRAGMA journal_mode = WAL")
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


class ResponseCache:
    """One cache file seen from one endpoint. ``lookup`` and ``store`` are for the event
    loop's thread; ``flush`` for one worker thread at a time."""

    def __init__(
        self, path: Path, identity: str, *, busy_timeout_s: float = BUSY_TIMEOUT_S
    ) -> None:
        """Open (or create) the file; raises ``sqlite3.Error`` or ``OSError`` when it cannot."""
        self.path = path
        self._identity = identity
        self._reader = _connect(path, busy_timeout_s)
        self._writer = _connect(path, busy_timeout_s)
        self._pending: list[tuple[bytes, str | None, float, Reply, float | None]] = []
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

    def lookup(self, request: ChatRequest) -> Hit | None:
        """The stored answer to exactly this request, if any (a broken file: never)."""
        if self._broken:
            return None
        try:
            row = self._reader.execute(
                "SELECT value, cost_usd, created_at FROM responses WHERE key = ?",
                (self.key(request),),
            ).fetchone()
            if row is None:
                return None
            return Hit(_decode(row[0]), row[1], row[2])
        except (sqlite3.Error, ValueError, TypeError) as exc:
            self._give_up(exc)
            return None

    def store(self, request: ChatRequest, reply: Reply, cost_usd: float | None) -> None:
        """Remember an answer (written by the next ``flush``; the first stored answer stays)."""
        if self._broken:
            return
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                if not self._full:
                    self._full = True
                    log.warning("cache.behind", path=str(self.path), pending=len(self._pending))
                return
            entry = (self.key(request), request.model, time.time(), reply, cost_usd)
            self._pending.append(entry)

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
        rows = [
            (key, model, created, cost, _encode(reply))
            for key, model, created, reply, cost in batch
        ]
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


@dataclass(frozen=True, slots=True)
class ModelEntries:
    """A model's entries in a cache file and what their answers cost."""

    model: str
    entries: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What ``pipeline cache stats`` shows: entries, bytes on disk, per model, oldest/newest."""

    path: str
    entries: int
    size_bytes: int
    by_model: list[ModelEntries]
    oldest: float | None
    newest: float | None


def _open_existing(path: Path) -> sqlite3.Connection:
    """An existing cache file for the ``cache`` commands; ``InputError`` when it is not one."""
    if not path.is_file():
        raise InputError(f"{path}: no cache file there")
    try:
        return _connect(path)
    except (sqlite3.Error, OSError) as exc:
        raise InputError(f"{path}: not a usable cache file: {exc}") from None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def cache_stats(path: Path) -> CacheStats:
    """Entries, size, per-model counts and cost, oldest and newest entry of a cache file."""
    db = _open_existing(path)
    try:
        rows = db.execute(
            "SELECT coalesce(model, '(none)'), count(*), coalesce(sum(cost_usd), 0)"
            " FROM responses GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
        oldest, newest = db.execute(
            "SELECT min(created_at), max(created_at) FROM responses"
        ).fetchone()
    except sqlite3.Error as exc:
        raise InputError(f"{path}: not a usable cache file: {exc}") from None
    finally:
        db.close()
    by_model = [ModelEntries(str(m), int(n), float(c)) for m, n, c in rows]
    return CacheStats(
        str(path), sum(m.entries for m in by_model), _size(path), by_model, oldest, newest
    )


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` -> seconds; ``ValueError`` otherwise."""
    match = _AGE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an age like 30d, 12h, 90m: {text!r}")
    return float(match[1]) * _AGE_UNITS[match[2]]


def prune(path: Path, older_than_s: float, *, now: float | None = None) -> int:
    """Delete the entries stored more than ``older_than_s`` ago; returns how many."""
    cutoff = (time.time() if now is None else now) - older_than_s
    db = _open_existing(path)
    try:
        with db:
            db.execute("BEGIN IMMEDIATE")
            removed = db.execute("DELETE FROM responses WHERE created_at < ?", (cutoff,)).rowcount
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise InputError(f"{path}: cannot prune: {exc}") from None
    finally:
        db.close()
    return int(removed)
