"""What the fake server counts, and the requests it records; ``GET /stats`` serves both."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received; credential headers are redacted."""

    path: str
    headers: dict[str, str]
    body: bytes

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (body decoded as UTF-8)."""
        return {
            "path": self.path,
            "headers": self.headers,
            "body": self.body.decode("utf-8", "replace"),
        }


@dataclass
class FakeStats:
    """What the server has seen and answered (monitoring GETs excluded).

    ``invalid_json`` and ``schema_mismatch`` count the 200 answers whose content was spoiled.
    ``completions_by_request`` is keyed by the sha256 hex of the raw request body and
    ``completions_by_seed`` by the body's ``seed``; both count well-formed 200 answers only.
    ``overflowed`` counts the requests the capacity model refused (its queue was full);
    ``peak_in_flight`` is the most chat requests ever being answered at once.
    With a quota, ``admitted_by_second`` and ``tokens_by_second`` count the requests (and
    their quota tokens) the quota let through in each whole second since the server started.
    """

    received: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    dropped: int = 0
    hung: int = 0
    invalid_json: int = 0
    schema_mismatch: int = 0
    cut: int = 0
    lost_upstream: int = 0
    """Completions generated, then answered with a gateway's 502 (``upstream_error_rate``)."""
    overflowed: int = 0
    peak_in_flight: int = 0
    completions_by_request: Counter[str] = field(default_factory=Counter)
    completions_by_seed: Counter[int] = field(default_factory=Counter)
    requests: list[RecordedRequest] = field(default_factory=list)
    admitted_by_second: Counter[int] = field(default_factory=Counter)
    tokens_by_second: Counter[int] = field(default_factory=Counter)

    def count_admitted(self, since_start_s: float, tokens: int) -> None:
        """One request the quota let through, ``since_start_s`` after the server started."""
        second = int(since_start_s)
        self.admitted_by_second[second] += 1
        self.tokens_by_second[second] += tokens

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (integer keys become strings)."""
        return {
            "received": self.received,
            "by_status": {str(status): n for status, n in self.by_status.items()},
            "dropped": self.dropped,
            "hung": self.hung,
            "invalid_json": self.invalid_json,
            "schema_mismatch": self.schema_mismatch,
            "cut": self.cut,
            "lost_upstream": self.lost_upstream,
            "overflowed": self.overflowed,
            "peak_in_flight": self.peak_in_flight,
            "completions_by_request": dict(self.completions_by_request),
            "completions_by_seed": {str(seed): n for seed, n in self.completions_by_seed.items()},
            "requests": [request.to_dict() for request in self.requests],
            "admitted_by_second": {str(s): n for s, n in sorted(self.admitted_by_second.items())},
            "tokens_by_second": {str(s): n for s, n in sorted(self.tokens_by_second.items())},
        }
