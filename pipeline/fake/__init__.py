"""The built-in fake OpenAI-compatible server, for offline runs, end-to-end tests and benchmarks.

A real loopback HTTP server (aiohttp) answering ``POST <any prefix>/chat/completions``
with deterministic content, OpenAI-style rate limits and injectable faults. What a
client can get back:

    200  a completion; with ``malformed_rate``, a body cut in half. With
         ``response_format``, JSON content: a ``json_object`` answer or a value of the
         schema; ``invalid_json_rate``/``schema_mismatch_rate`` spoil that content
    400  unusable body, or an injected bad request
    401  missing or wrong API key
    404  any other path
    429  a requests/tokens bucket has no room (``retry-after``, ``retry-after-ms``),
         too many in flight (``retry-after: 1``), or an injected limit
    500, 502, 503  injected server errors
    no response  drop (connection closed after the request is read) or hang (``hang_s``)

``GET /stats`` returns the counters as JSON and ``GET /health`` returns ``{"status": "ok"}``.
"""

from pipeline.fake.cli import main
from pipeline.fake.config import FakeConfig, FakeStats, Fault, RecordedRequest
from pipeline.fake.server import FakeServer, serve, serve_in_thread

__all__ = [
    "FakeConfig",
    "FakeServer",
    "FakeStats",
    "Fault",
    "RecordedRequest",
    "main",
    "serve",
    "serve_in_thread",
]
