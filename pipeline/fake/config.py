"""The fake server's settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.fake.profiles import Profile


class Fault(StrEnum):
    """An injectable fault; ``FakeConfig`` has a ``<value>_rate`` for each."""

    DROP = "drop"
    HANG = "hang"
    RATE_LIMIT = "rate_limit"
    ERROR_500 = "error_500"
    ERROR_502 = "error_502"
    ERROR_503 = "error_503"
    BAD_REQUEST = "bad_request"
    MALFORMED = "malformed"
    STREAM_CUT = "stream_cut"


class ContentFault(StrEnum):
    """A fault in the content of a JSON-mode answer (HTTP 200); ``FakeConfig`` has a ``<value>_rate`` for each."""

    INVALID_JSON = "invalid_json"
    SCHEMA_MISMATCH = "schema_mismatch"


@dataclass(frozen=True)
class FakeConfig:
    """How the fake server behaves: latency, OpenAI-style limits, auth, the server it
    imitates (``profile``) and injected faults.

    Rate limits are token buckets of capacity ``limit * limit_window_s / 60`` refilled
    continuously at ``limit / 60`` per second; a request bigger than the whole capacity is
    admitted when the bucket is full. Each fault rate is an independent probability per
    request, drawn from ``random.Random(fault_seed)`` so runs are reproducible;
    ``stream_cut_rate`` is drawn only when it is set, and hits streamed answers only
    (the stream stops mid-event, without ``[DONE]``).

    ``invalid_json_rate`` and ``schema_mismatch_rate`` spoil the content of JSON-mode
    answers (requests with ``response_format``); they are drawn from their own
    ``random.Random(f"{fault_seed}:content")``, and only when one is set, so turning them
    on leaves every other fault's draws unchanged. A schema mismatch needs a schema:
    ``json_object`` answers are left whole.
    ``cached_share`` of every prompt's tokens is reported as cached.
    """

    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    limit_window_s: float = 1.0
    max_concurrency: int | None = None
    api_key: str | None = field(default=None, repr=False)
    error_500_rate: float = 0.0
    error_502_rate: float = 0.0
    error_503_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    hang_s: float = 3600.0
    bad_request_rate: float = 0.0
    malformed_rate: float = 0.0
    invalid_json_rate: float = 0.0
    schema_mismatch_rate: float = 0.0
    stream_cut_rate: float = 0.0
    fault_seed: int = 0
    profile: Profile = field(default_factory=Profile)
    record_requests: bool = False
    cached_share: float = 0.0

    def __post_init__(self) -> None:
        """Reject settings the server cannot honour."""
        for name in ("latency_s", "latency_jitter_s", "retry_after_s", "hang_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= self.cached_share <= 1.0:
            raise ValueError(f"cached_share must be between 0 and 1, got {self.cached_share}")
        if self.limit_window_s <= 0:
            raise ValueError(f"limit_window_s must be > 0, got {self.limit_window_s}")
        for fault, rate in (self.fault_rates() | self.content_fault_rates()).items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{fault}_rate must be between 0 and 1, got {rate}")

    @classmethod
    def from_options(
        cls, *, latency_ms: float = 0.0, jitter_ms: float = 0.0, **fields: Any
    ) -> FakeConfig:
        """A config from user-facing options: latencies in milliseconds, the rest by field name
        (what ``pipeline fake-server`` flags and a job's ``[fake]`` table hold)."""
        return cls(latency_s=latency_ms / 1000.0, latency_jitter_s=jitter_ms / 1000.0, **fields)

    def fault_rates(self) -> dict[Fault, float]:
        """Each fault's probability, in the order faults are drawn.

        ``stream_cut`` comes last and only when set, so adding it changed no existing draw.
        """
        rates = {
            Fault.DROP: self.drop_rate,
            Fault.HANG: self.hang_rate,
            Fault.RATE_LIMIT: self.rate_limit_rate,
            Fault.ERROR_500: self.error_500_rate,
            Fault.ERROR_502: self.error_502_rate,
            Fault.ERROR_503: self.error_503_rate,
            Fault.BAD_REQUEST: self.bad_request_rate,
            Fault.MALFORMED: self.malformed_rate,
        }
        if self.stream_cut_rate:
            rates[Fault.STREAM_CUT] = self.stream_cut_rate
        return rates

    def content_fault_rates(self) -> dict[ContentFault, float]:
        """Each content fault's probability, in the order they are drawn."""
        return {
            ContentFault.INVALID_JSON: self.invalid_json_rate,
            ContentFault.SCHEMA_MISMATCH: self.schema_mismatch_rate,
        }
