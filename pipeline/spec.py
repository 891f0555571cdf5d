"""The job file's validated model, and ``load_job(path)``.

A job is TOML; every key is checked on load and an unknown key, a wrong type or a
bad value becomes one ``JobError`` line naming the key. API keys never live here:
``endpoint.api_key_env`` is the *name* of an environment variable.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import JobError

_RESERVED_BODY_KEYS = frozenset({"model", "messages", "seed", "temperature", "max_tokens"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class InputSpec(_Section):
    """Where rows come from and which columns matter."""

    path: str = Field(min_length=1)
    id_column: str | None = None
    prompt_column: str | None = None
    messages_column: str | None = None
    keep_columns: list[str] = Field(default_factory=list)
    batch_size: PositiveInt = 2048

    @model_validator(mode="after")
    def _one_prompt_source(self) -> InputSpec:
        if (self.prompt_column is None) == (self.messages_column is None):
            raise ValueError("set exactly one of prompt_column or messages_column")
        return self


class RequestSpec(_Section):
    """How a row becomes a chat-completions body."""

    model: str = Field(min_length=1)
    system: str | None = None
    template: str | None = None
    temperature: NonNegativeFloat | None = None
    max_tokens: PositiveInt | None = None
    seed: int = 0
    params: dict[str, Any] = Field(default_factory=dict)
    extra_body: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _params_do_not_shadow(self) -> RequestSpec:
        for table, keys in (("params", self.params.keys()), ("extra_body", self.extra_body.keys())):
            clash = sorted(_RESERVED_BODY_KEYS & keys)
            if clash:
                raise ValueError(f"{table} may not set {clash[0]!r}: use the [request] key of that name")
        return self


class EndpointSpec(_Section):
    """Where requests go and how they authenticate."""

    base_url: str
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    auth: Literal["bearer", "x-api-key", "api-key", "none"] = "bearer"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    timeout_s: PositiveFloat = 120.0

    @field_validator("base_url")
    @classmethod
    def _http_url_or_fake(cls, value: str) -> str:
        if value != "fake" and not re.fullmatch(r"https?://[^\s/]+\S*", value):
            raise ValueError('must be an http:// or https:// URL, or "fake" for the built-in server')
        return value

    @property
    def is_fake(self) -> bool:
        """True when the built-in offline server should be started."""
        return self.base_url == "fake"


class LimitsSpec(_Section):
    """Concurrency and rate limits the run stays inside."""

    concurrency: PositiveInt = 16
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    max_error_rate: float | None = Field(default=None, ge=0, le=1)
    max_cost_usd: PositiveFloat | None = None


class RetrySpec(_Section):
    """How transient failures are retried."""

    max_attempts: PositiveInt = 6
    initial_backoff_s: PositiveFloat = 1.0
    max_backoff_s: PositiveFloat = 60.0


class OutputSpec(_Section):
    """Where the Parquet file goes: ``{name}`` and ``{date}`` are filled in."""

    path: str = "out/{name}/{date}.parquet"


class FakeSpec(_Section):
    """Behaviour of the built-in server when ``base_url = "fake"``."""

    latency_ms: NonNegativeFloat = 0.0
    jitter_ms: NonNegativeFloat = 0.0
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    error_500_rate: float = Field(default=0.0, ge=0, le=1)
    error_502_rate: float = Field(default=0.0, ge=0, le=1)
    error_503_rate: float = Field(default=0.0, ge=0, le=1)
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    drop_rate: float = Field(default=0.0, ge=0, le=1)
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    bad_request_rate: float = Field(default=0.0, ge=0, le=1)
    malformed_rate: float = Field(default=0.0, ge=0, le=1)
    retry_after_s: PositiveFloat = 1.0
    fault_seed: int = 0
    cached_share: float = Field(default=0.0, ge=0, le=1)


class PriceSpec(_Section):
    """One model's price in USD per million tokens (``cached_input`` defaults to ``input``)."""

    input: NonNegativeFloat
    output: NonNegativeFloat
    cached_input: NonNegativeFloat | None = None
    as_of: str | None = None
    source: str | None = None
    note: str | None = None
    uncertain: bool = False
    aliases: list[str] = Field(default_factory=list)


class JobSpec(_Section):
    """One job file."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    input: InputSpec
    request: RequestSpec
    endpoint: EndpointSpec
    limits: LimitsSpec = LimitsSpec()
    retry: RetrySpec = RetrySpec()
    output: OutputSpec = OutputSpec()
    fake: FakeSpec = FakeSpec()
    prices: dict[str, PriceSpec] = Field(default_factory=dict)


def _location(loc: tuple[int | str, ...]) -> str:
    """``("limits", "concurrency")`` -> ``[limits] concurrency``."""
    parts = [str(p) for p in loc]
    if not parts:
        return "job"
    section, rest = parts[0], parts[1:]
    if section in JobSpec.model_fields and section != "name":
        return f"[{section}] {'.'.join(rest)}".rstrip()
    return ".".join(parts)


def describe_validation_error(source: str, exc: ValidationError) -> str:
    """One line naming the first offending key."""
    first = exc.errors()[0]
    where = _location(tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        return f"{source}: {where}: unknown key"
    if first["type"] == "missing":
        return f"{source}: {where}: required key is missing"
    message = first["msg"].removeprefix("Value error, ")
    return f"{source}: {where}: {message}"


def parse_job(data: dict[str, Any], source: str = "job") -> JobSpec:
    """Validate an already-parsed TOML document."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobError(describe_validation_error(source, exc)) from None


def load_job(path: Path) -> JobSpec:
    """Read and validate a job file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobError(f"{path}: cannot read job file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"{path}: not valid TOML: {exc}") from None
    return parse_job(data, str(path))
