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

    key.py     the file's default place, which jobs are cached, the endpoint identity, the key
    store.py   ResponseCache: lookup, store (buffered), flush (one transaction)
    admin.py   what ``pipeline cache stats`` and ``pipeline cache prune`` do
"""

from pipeline.cache.admin import CacheStats, ModelEntries, cache_stats, parse_age, prune
from pipeline.cache.key import (
    cache_key,
    cache_path,
    default_path,
    endpoint_identity,
    uncached_reason,
)
from pipeline.cache.store import BUSY_TIMEOUT_S, MAX_PENDING, SCHEMA_VERSION, Hit, ResponseCache

__all__ = [
    "BUSY_TIMEOUT_S",
    "MAX_PENDING",
    "SCHEMA_VERSION",
    "CacheStats",
    "Hit",
    "ModelEntries",
    "ResponseCache",
    "cache_key",
    "cache_path",
    "cache_stats",
    "default_path",
    "endpoint_identity",
    "parse_age",
    "prune",
    "uncached_reason",
]
