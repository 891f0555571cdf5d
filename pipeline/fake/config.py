"""The fake server's settings, each declared once.

A setting is a ``FakeConfig`` field; its metadata (built by ``_about``) holds its help text,
its allowed range, and how a user gives it. ``OPTIONS`` is derived from the fields: the
names a job's ``[fake]`` table and the ``pipeline fake-server`` flags use
(``FakeConfig.from_options``), and each flag's type, default, metavar and help.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any, get_args, get_type_hints

from pipeline.fake.capacity import parse_schedule
from pipeline.fake.profiles import Profile

OVERFLOWS = ("503", "hang")
"""What the capacity model does past ``queue_limit``."""


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


@dataclass(frozen=True, slots=True)
class _Bounds:
    """The values a numeric setting takes (None, "no limit", always passes)."""

    low: int
    high: int | None = None
    above: bool = False  # ``low`` itself is out

    def check(self, name: str, value: float | None) -> None:
        """Raise ``ValueError`` naming the setting when ``value`` is out of range."""
        if value is None:
            return
        if self.high is not None:
            if not self.low <= value <= self.high:
                raise ValueError(f"{name} must be between {self.low} and {self.high}, got {value}")
        elif value < self.low or (self.above and value == self.low):
            raise ValueError(
                f"{name} must be {'>' if self.above else '>='} {self.low}, got {value}"
            )


_AT_LEAST_0 = _Bounds(0)
_AT_LEAST_1 = _Bounds(1)
_ABOVE_0 = _Bounds(0, above=True)
_SHARE = _Bounds(0, 1)


def _about(
    help: str,
    *,
    bounds: _Bounds | None = None,
    option: str | None = None,
    scale: float = 1,
    flag: str | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> dict[str, Any]:
    """A setting's metadata: its ``--help`` text and allowed ``bounds``; the ``option`` name a
    user gives it by (default: the field's), in units ``scale`` times the field's; its
    ``flag`` (default: ``--`` and the option name, dashed) unless ``cli`` is False."""
    return {
        "help": help,
        "bounds": bounds,
        "option": option,
        "scale": scale,
        "flag": flag,
        "metavar": metavar,
        "cli": cli,
    }


def _rate(what: str) -> dict[str, Any]:
    """A fault's probability per request."""
    return _about(f"probability of {what}", bounds=_SHARE, metavar="P")


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

    ``realistic`` dresses chat completions as OpenAI's (``pipeline.fake.realistic``).

    ``slots`` turns on the capacity model of a continuous-batching server
    (``pipeline.fake.capacity``): after ``latency_s``, an answer waits for a slot and takes
    ``token_s`` per completion token, times ``1 + batch_slowdown * (batch - 1)``.
    """

    latency_s: float = field(
        default=0.0,
        metadata=_about(
            "delay before every answer, in ms", bounds=_AT_LEAST_0, option="latency_ms", scale=1000
        ),
    )
    latency_jitter_s: float = field(
        default=0.0,
        metadata=_about(
            "extra uniform(0, jitter) delay, in ms",
            bounds=_AT_LEAST_0,
            option="jitter_ms",
            scale=1000,
        ),
    )
    requests_per_minute: int | None = field(
        default=None, metadata=_about("requests per minute", bounds=_AT_LEAST_1, flag="--rpm")
    )
    tokens_per_minute: int | None = field(
        default=None,
        metadata=_about(
            "tokens per minute (prompt plus max_tokens)", bounds=_AT_LEAST_1, flag="--tpm"
        ),
    )
    limit_window_s: float = field(
        default=1.0,
        metadata=_about("bucket window in s: a bucket holds limit * window / 60", bounds=_ABOVE_0),
    )
    max_concurrency: int | None = field(
        default=None, metadata=_about("429 beyond this many in flight", bounds=_AT_LEAST_1)
    )
    max_body_bytes: int | None = field(
        default=None,
        metadata=_about("413 for a request body larger than this, in bytes", bounds=_AT_LEAST_1),
    )
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata=_about("require this key, in one of the profile's auth styles", cli=False),
    )
    error_500_rate: float = field(default=0.0, metadata=_rate("a 500 answer"))
    error_502_rate: float = field(default=0.0, metadata=_rate("a 502 answer"))
    error_503_rate: float = field(default=0.0, metadata=_rate("a 503 answer"))
    rate_limit_rate: float = field(
        default=0.0, metadata=_rate("a 429 answer, with retry-after retry_after_s")
    )
    retry_after_s: float = field(
        default=1.0, metadata=_about("retry-after of an injected 429, in s", bounds=_AT_LEAST_0)
    )
    drop_rate: float = field(default=0.0, metadata=_rate("closing the connection unanswered"))
    hang_rate: float = field(default=0.0, metadata=_rate("hanging unanswered for hang_s"))
    hang_s: float = field(
        default=3600.0,
        metadata=_about("how long a hanging request hangs, in s", bounds=_AT_LEAST_0, cli=False),
    )
    bad_request_rate: float = field(default=0.0, metadata=_rate("a 400 answer"))
    malformed_rate: float = field(default=0.0, metadata=_rate("a body or stream that is not JSON"))
    invalid_json_rate: float = field(
        default=0.0, metadata=_rate("JSON-mode content that is not JSON")
    )
    schema_mismatch_rate: float = field(
        default=0.0, metadata=_rate("JSON-schema content that breaks the schema")
    )
    stream_cut_rate: float = field(default=0.0, metadata=_rate("a stream cut mid-event"))
    close_after_stream: bool = field(
        default=False,
        metadata=_about(
            "close the connection after each streamed answer while announcing keep-alive "
            "(as llama.cpp's llama-server does)"
        ),
    )
    upstream_error_rate: float = field(
        default=0.0,
        metadata=_rate("a gateway's 502 after the completion was generated (and billed) upstream"),
    )
    fault_seed: int = field(default=0, metadata=_about("seed of the fault draws"))
    profile: Profile = field(
        default_factory=Profile,
        metadata=_about(
            "behave like this server: its path, query, auth styles, headers and models",
            cli=False,
        ),
    )
    record_requests: bool = field(
        default=False,
        metadata=_about("keep every request in the stats, keys redacted", cli=False),
    )
    cached_share: float = field(
        default=0.0,
        metadata=_about("report S of prompt tokens as cached", bounds=_SHARE, metavar="S"),
    )
    leak_key: bool = field(
        default=False,
        metadata=_about(
            "a hostile endpoint: echo the request's credential, whole and OpenAI-masked, into"
            " every string of an answer (id, model, system_fingerprint, content, tool calls)"
            " and into error messages",
            cli=False,
        ),
    )

    slots: int | None = field(
        default=None,
        metadata=_about(
            "capacity model: N requests decode together, the rest queue (default: no model)",
            bounds=_AT_LEAST_1,
            metavar="N",
        ),
    )
    token_s: float = field(
        default=0.01,
        metadata=_about(
            "capacity model: ms per completion token with a batch of one",
            bounds=_AT_LEAST_0,
            option="token_ms",
            scale=1000,
        ),
    )
    batch_slowdown: float = field(
        default=0.1,
        metadata=_about(
            "capacity model: per-token time grows by this share per extra request in the batch",
            bounds=_AT_LEAST_0,
            metavar="F",
        ),
    )
    queue_limit: int | None = field(
        default=None,
        metadata=_about(
            "capacity model: with this many waiting, refuse newcomers (default: no bound)",
            bounds=_AT_LEAST_0,
            metavar="N",
        ),
    )
    queue_overflow: str = field(
        default="503",
        metadata=_about(
            "capacity model: refuse past queue_limit with a 503, or hang for hang_s",
            metavar="503|hang",
        ),
    )
    slots_schedule: str | None = field(
        default=None,
        metadata=_about(
            "capacity model: slots from so many s after the first request, e.g. 10:4,30:8",
            metavar="S:N,...",
        ),
    )

    batch_time_scale: float = field(
        default=0.0002,
        metadata=_about(
            "real seconds per simulated second of a batch (0.0002: an hour in 0.72 s)",
            bounds=_AT_LEAST_0,
        ),
    )
    batch_duration_s: float = field(
        default=3600.0,
        metadata=_about("simulated seconds a batch takes to complete", bounds=_AT_LEAST_0),
    )
    batch_fail_rate: float = field(
        default=0.0, metadata=_rate("a batch failing validation (status failed)")
    )
    batch_expire_share: float = field(
        default=0.0,
        metadata=_about(
            "batches expire after this share of their lines (0: never)",
            bounds=_SHARE,
            metavar="S",
        ),
    )
    batch_token_limit: int | None = field(
        default=None,
        metadata=_about(
            "enqueued-token limit: a batch beyond it fails with token_limit_exceeded",
            bounds=_AT_LEAST_1,
        ),
    )
    batch_error_line_rate: float = field(default=0.0, metadata=_rate("a batch line answered 500"))
    batch_timeout_line_rate: float = field(
        default=0.0, metadata=_rate("a batch line failing with request_timeout")
    )
    batch_drop_line_rate: float = field(
        default=0.0, metadata=_rate("a batch line missing from the output")
    )
    batch_string_body_rate: float = field(
        default=0.0, metadata=_rate("a batch output line whose response.body is a JSON string")
    )
    batch_shuffle: bool = field(
        default=False,
        metadata=_about("write batch output lines in shuffled order", cli=False),
    )

    realistic: bool = field(
        default=False,
        metadata=_about(
            "answer chat completions as api.openai.com does: its full header set (plausible"
            " x-ratelimit-* unless the rate limits are on), every usage detail and message"
            " field, contents of 100-300 tokens"
        ),
    )

    def __post_init__(self) -> None:
        """Reject settings the server cannot honour."""
        for setting in fields(self):
            if setting.metadata["bounds"] is not None:
                setting.metadata["bounds"].check(setting.name, getattr(self, setting.name))
        if self.queue_overflow not in OVERFLOWS:
            raise ValueError(
                f"queue_overflow must be one of {', '.join(OVERFLOWS)}, got {self.queue_overflow!r}"
            )
        parse_schedule(self.slots_schedule)
        if self.slots_schedule and self.slots is None:
            raise ValueError("slots_schedule needs slots (the capacity model)")

    @classmethod
    def from_options(cls, **options: Any) -> FakeConfig:
        """A config from user-facing options (``OPTIONS``: what ``pipeline fake-server`` flags
        and a job's ``[fake]`` table hold): latencies in milliseconds, the rest by field name."""
        settings = {}
        for name, value in options.items():
            if name not in OPTIONS:
                raise TypeError(f"unknown fake server option {name!r}")
            option = OPTIONS[name]
            settings[option.setting] = option.to_setting(value)
        return cls(**settings)

    def fault_rates(self) -> dict[Fault, float]:
        """Each fault's probability, in the order faults are drawn (``Fault``'s order).

        ``stream_cut`` comes last and only when set, so adding it changed no existing draw.
        """
        rates = {fault: getattr(self, f"{fault}_rate") for fault in Fault}
        if not self.stream_cut_rate:
            del rates[Fault.STREAM_CUT]
        return rates

    def content_fault_rates(self) -> dict[ContentFault, float]:
        """Each content fault's probability, in the order they are drawn."""
        return {fault: getattr(self, f"{fault}_rate") for fault in ContentFault}


@dataclass(frozen=True, slots=True)
class Option:
    """A setting as a user gives it: in a job's ``[fake]`` table, and as ``flag`` unless that
    is None. ``scale`` option units make one unit of the setting (1000 ms per s)."""

    name: str
    setting: str
    kind: type[Any]
    default: Any
    help: str
    flag: str | None
    metavar: str | None
    scale: float

    @classmethod
    def of(cls, setting: Field[Any], hint: Any) -> Option:
        """The option for one ``FakeConfig`` field, annotated ``hint``."""
        about = setting.metadata
        name = about["option"] or setting.name
        default = (
            setting.default if setting.default_factory is MISSING else setting.default_factory()
        )
        return cls(
            name=name,
            setting=setting.name,
            kind=next((t for t in get_args(hint) if t is not type(None)), hint),
            default=default if about["scale"] == 1 else default * about["scale"],
            help=about["help"],
            flag=(about["flag"] or f"--{name.replace('_', '-')}") if about["cli"] else None,
            metavar=about["metavar"],
            scale=about["scale"],
        )

    def to_setting(self, value: Any) -> Any:
        """An option value in the setting's units."""
        return value if self.scale == 1 or value is None else value / self.scale


_HINTS = get_type_hints(FakeConfig)
OPTIONS: Mapping[str, Option] = MappingProxyType(
    {option.name: option for option in (Option.of(f, _HINTS[f.name]) for f in fields(FakeConfig))}
)
"""Every setting by its user-facing name (``latency_ms`` for ``latency_s``), in field order."""
