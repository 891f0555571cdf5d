"""OpenAI-style per-minute limits as token buckets, with their ``x-ratelimit-*`` headers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_EPSILON = 1e-9


def format_duration(seconds: float) -> str:
    """Format a duration the way OpenAI's reset headers do: "120ms", "1.5s", "6m0s", "0s"."""
    ms = max(0, math.ceil(seconds * 1000 - _EPSILON))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


class TokenBucket:
    """A per-minute limit enforced over a short window.

    Capacity is ``per_minute * window_s / 60``, refilled continuously at ``per_minute / 60``
    per second and full at start. A cost above the capacity is admitted when the bucket is
    full and leaves it in debt, so the long-run rate still holds.
    """

    __slots__ = ("capacity", "level", "per_minute", "rate", "updated")

    def __init__(self, per_minute: int, window_s: float, now: float) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60
        self.capacity = self.rate * window_s
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        """Add what has trickled in since the last call."""
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_s(self, cost: float) -> float:
        """Seconds until there is room for ``cost`` (0 if there is room now)."""
        missing = min(cost, self.capacity) - self.level
        return missing / self.rate if missing > _EPSILON else 0.0

    def headers(self, kind: str) -> dict[str, str]:
        """The ``x-ratelimit-*-<kind>`` headers for the current level."""
        return {
            f"x-ratelimit-limit-{kind}": str(self.per_minute),
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(self.level + _EPSILON))),
            f"x-ratelimit-reset-{kind}": format_duration((self.capacity - self.level) / self.rate),
        }


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one request: headers to send, and why and how long if refused."""

    headers: dict[str, str] = field(default_factory=dict)
    refused: str | None = None  # "requests" or "tokens"
    limit: int = 0
    requested: int = 0
    wait_ms: int = 0


class ServerQuota:
    """The server's per-minute quota: a requests bucket and a tokens bucket; a request must fit
    both and is charged to both. (The server side of a limit; the client paces itself with
    ``pipeline.limits.RateLimiter``.)"""

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        window_s: float,
        now: float,
    ) -> None:
        self._buckets = {
            kind: TokenBucket(limit, window_s, now)
            for kind, limit in (("requests", requests_per_minute), ("tokens", tokens_per_minute))
            if limit is not None
        }

    def admit(self, cost_tokens: int, now: float) -> Admission:
        """Charge one request of ``cost_tokens`` if both buckets have room; nothing otherwise."""
        costs = {"requests": 1, "tokens": cost_tokens}
        waits: dict[str, float] = {}
        for kind, bucket in self._buckets.items():
            bucket.refill(now)
            waits[kind] = bucket.wait_s(costs[kind])
        refused = next((kind for kind, wait in waits.items() if wait > 0), None)
        if refused is None:
            for kind, bucket in self._buckets.items():
                bucket.level -= costs[kind]
        headers: dict[str, str] = {}
        for kind, bucket in self._buckets.items():
            headers |= bucket.headers(kind)
        if refused is None:
            return Admission(headers)
        return Admission(
            headers,
            refused=refused,
            limit=self._buckets[refused].per_minute,
            requested=costs[refused],
            wait_ms=max(1, math.ceil(max(waits.values()) * 1000 - _EPSILON)),
        )
