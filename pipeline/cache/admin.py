"""What ``pipeline cache stats`` and ``pipeline cache prune`` do to a cache file."""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.cache.store import connect
from pipeline.errors import InputError

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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
        return connect(path)
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
