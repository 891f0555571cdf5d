"""The built-in fake OpenAI-compatible server, for offline runs, end-to-end tests and benchmarks.

A real loopback HTTP server (aiohttp) answering ``POST <any prefix>/chat/completions``
(or exactly the path its profile names) with deterministic content, OpenAI-style rate
limits and injectable faults; it streams server-sent events when asked, answers tools
with a tool call, and accepts image parts. What a client can get back:

    200  a completion, or its event stream; with ``malformed_rate``, a body cut in half
         (an event that is not JSON); with ``stream_cut_rate``, a stream that stops mid-event.
         With ``response_format``, JSON content: a ``json_object`` answer or a value of the
         schema; ``invalid_json_rate``/``schema_mismatch_rate`` spoil that content
    400  unusable body, a missing required header or body field, or an injected bad request
    401  missing or wrong API key (in none of the profile's auth styles)
    404  any other path or query; a model the profile does not serve (``model_not_found``)
    413  a body larger than ``max_body_bytes``
    429  a requests/tokens bucket has no room (``retry-after``, ``retry-after-ms``),
         too many in flight (``retry-after: 1``), or an injected limit
    500, 502, 503  injected server errors; with ``upstream_error_rate``, a gateway's 502
         after the completion was generated (counted in ``lost_upstream``)
    no response  drop (connection closed after the request is read) or hang (``hang_s``)

``GET /stats`` returns the counters as JSON and ``GET /health`` returns ``{"status": "ok"}``.
"""

from pipeline.fake.cli import main
from pipeline.fake.config import FakeConfig, Fault
from pipeline.fake.profiles import PROFILES, HeaderRule, Profile, profile
from pipeline.fake.server import FakeServer, serve, serve_in_thread
from pipeline.fake.stats import FakeStats, RecordedRequest

__all__ = [
    "PROFILES",
    "FakeConfig",
    "FakeServer",
    "FakeStats",
    "Fault",
    "HeaderRule",
    "Profile",
    "RecordedRequest",
    "main",
    "profile",
    "serve",
    "serve_in_thread",
]
