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
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import JobError

_RESERVED_BODY_KEYS = {
    **dict.fromkeys(
        (
            "model",
            "messages",
            "seed",
            "temperature",
            "max_tokens",
            "stream",
            "tools",
            "tool_choice",
            "response_format",
        ),
        "use the [request] key of that name",
    ),
    "stream_options": "[request] stream sets it",
}
_TOOL_CHOICES = ("none", "auto", "required")
DEFAULT_MAX_ERROR_RATE = 0.1
"""A run where more rows than this failed exits 3 (set 1.0 to accept any share)."""
MAX_CONCURRENCY = 4096
"""The largest ``limits.concurrency``: each in-flight request holds a connection."""
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


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
    """How a row becomes a chat-completions body (or one per model with ``models``).

    JSON mode: ``response_format = "json_object"`` asks for a JSON object;
    ``json_schema`` (a file path, relative to the current directory, or an inline
    table holding the schema) asks for ``response_format = {"type": "json_schema", ...}``
    unless ``response_format = "json_object"`` is set too, in which case the schema
    is only used to validate and type the answers. ``strict`` is sent with the schema;
    ``json_retries`` re-asks an unusable answer up to that many times.
    """

    model: str | None = Field(default=None, min_length=1)
    models: list[str] | None = Field(default=None, min_length=1)
    model_column: str | None = Field(default=None, min_length=1)
    system: str | None = None
    template: str | None = None
    temperature: NonNegativeFloat | None = None
    max_tokens: PositiveInt | None = None
    seed: int = 0
    seed_column: str | None = Field(default=None, min_length=1)
    stream: bool = False
    tools: list[dict[str, Any]] | None = Field(default=None, min_length=1)
    tool_choice: str | dict[str, Any] | None = None
    image_column: str | None = Field(default=None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    response_format: Literal["json_object", "json_schema"] | None = None
    json_schema: str | dict[str, Any] | None = None
    strict: bool | None = None
    json_retries: NonNegativeInt = 0
    image_dir: str | None = Field(default=None, min_length=1)
    """The folder local image files are read from (opt-in: without it, only URLs)."""

    @model_validator(mode="after")
    def _one_model_source(self) -> RequestSpec:
        if sum(x is not None for x in (self.model, self.models, self.model_column)) != 1:
            raise ValueError("set exactly one of model, models or model_column")
        for name in self.models or []:
            if not name:
                raise ValueError("models: a model name is empty")
            if self.models and self.models.count(name) > 1:
                raise ValueError(f"models: {name!r} is listed twice")
        return self

    @model_validator(mode="after")
    def _params_do_not_shadow(self) -> RequestSpec:
        for table, keys in (("params", self.params.keys()), ("extra_body", self.extra_body.keys())):
            clash = sorted(_RESERVED_BODY_KEYS.keys() & keys)
            if clash:
                raise ValueError(
                    f"{table} may not set {clash[0]!r}: {_RESERVED_BODY_KEYS[clash[0]]}"
                )
        n = self.params.get("n", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"params.n must be a positive integer, got {n!r}")
        return self

    @field_validator("json_schema", mode="before")
    @classmethod
    def _path_or_table(cls, value: Any) -> Any:
        if value is None or isinstance(value, dict) or (isinstance(value, str) and value.strip()):
            return value
        raise ValueError("must be a schema file path or an inline table holding the schema")

    @model_validator(mode="after")
    def _json_mode_is_consistent(self) -> RequestSpec:
        if self.response_format == "json_schema" and self.json_schema is None:
            raise ValueError(
                'response_format = "json_schema" needs json_schema (a file path or an inline table)'
            )
        if self.strict is not None and self.json_mode != "json_schema":
            raise ValueError(
                "strict applies only to json_schema (it is sent inside response_format.json_schema)"
            )
        if self.json_retries and self.json_mode is None:
            raise ValueError("json_retries needs JSON mode: set response_format or json_schema")
        return self

    @property
    def json_mode(self) -> str | None:
        """The ``response_format`` type sent: ``json_object``, ``json_schema`` or None (plain text)."""
        if self.response_format is not None:
            return self.response_format
        return "json_schema" if self.json_schema is not None else None

    @model_validator(mode="after")
    def _tools_are_functions(self) -> RequestSpec:
        names: list[str] = []
        for index, tool in enumerate(self.tools or []):
            function = tool.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if tool.get("type") != "function" or not isinstance(name, str) or not name:
                raise ValueError(f'tools[{index}]: needs type = "function" and a function.name')
            names.append(name)
        choice = self.tool_choice
        if choice is None:
            return self
        if not self.tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(choice, str):
            if choice not in _TOOL_CHOICES:
                raise ValueError(
                    f"tool_choice must be one of {', '.join(_TOOL_CHOICES)} or name a tool"
                )
            return self
        function = choice.get("function")
        wanted = function.get("name") if isinstance(function, dict) else None
        if choice.get("type") != "function" or wanted not in names:
            raise ValueError(
                f'tool_choice: a table must be {{ type = "function", function = {{ name = ... }} }} naming one of {names}'
            )
        return self

    @property
    def choices(self) -> int:
        """How many choices each request asks for (``params.n``, default 1)."""
        n: int = self.params.get("n", 1)
        return n


class EndpointSpec(_Section):
    """Where requests go and how they authenticate."""

    base_url: str
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    auth: Literal["bearer", "x-api-key", "api-key", "x-portkey-api-key", "none"] = "bearer"
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    timeout_s: PositiveFloat = 120.0

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if any(ch in text for ch in "\r\n\0"):
                raise ValueError(f"{name}: a header value may not contain line breaks")
            if not text.isascii():
                raise ValueError(f"{name}: a header value must be plain ASCII")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url_or_fake(cls, value: str) -> str:
        if value != "fake" and not re.fullmatch(r"https?://[^\s/]+\S*", value):
            raise ValueError(
                'must be an http:// or https:// URL, or "fake" for the built-in server'
            )
        return value

    @property
    def is_fake(self) -> bool:
        """True when the built-in offline server should be started."""
        return self.base_url == "fake"

    gateway: bool | None = None
    """A gateway in front of the provider (Portkey, a LiteLLM proxy): its 5xx answers may
    come after the provider billed the completion. Default: on for Portkey endpoints."""

    @property
    def is_gateway(self) -> bool:
        """Whether 5xx answers count as possibly billed (``gateway``, else Portkey's marks)."""
        if self.gateway is not None:
            return self.gateway
        portkey = "portkey" in self.base_url.lower() or self.auth == "x-portkey-api-key"
        return portkey or any(name.lower().startswith("x-portkey-") for name in self.headers)


class LimitsSpec(_Section):
    """Concurrency and rate limits the run stays inside.

    ``concurrency = "auto"`` finds the server's capacity as the run goes, between
    ``min_concurrency`` and ``max_concurrency`` (``pipeline.concurrency``).
    """

    concurrency: int | Literal["auto"] = 16
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    max_error_rate: float | None = Field(default=DEFAULT_MAX_ERROR_RATE, ge=0, le=1)
    max_cost_usd: PositiveFloat | None = None
    min_concurrency: PositiveInt = 1
    max_concurrency: PositiveInt = 256

    @field_validator("concurrency", mode="before")
    @classmethod
    def _count_or_auto(cls, value: Any) -> Any:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if value == "auto" or (is_int and value >= 1):
            return value
        if is_int:
            raise ValueError("Input should be greater than 0")
        raise ValueError(f'must be a positive integer or "auto", got {value!r}')

    @model_validator(mode="after")
    def _bounds_in_order(self) -> LimitsSpec:
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(
                f"min_concurrency ({self.min_concurrency}) is above max_concurrency ({self.max_concurrency})"
            )
        return self

    @property
    def auto(self) -> bool:
        """Whether the in-flight limit is found as the run goes (``concurrency = "auto"``)."""
        return self.concurrency == "auto"

    @property
    def most_in_flight(self) -> int:
        """The most requests ever in flight: ``concurrency``, or ``max_concurrency`` when auto."""
        return self.max_concurrency if isinstance(self.concurrency, str) else self.concurrency

    @field_validator("concurrency")
    @classmethod
    def _bounded_concurrency(cls, value: object) -> object:
        if isinstance(value, int) and value > MAX_CONCURRENCY:
            raise ValueError(
                f"at most {MAX_CONCURRENCY:,} requests in flight (each holds a connection "
                "and two workers); run shards for more"
            )
        return value


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
    invalid_json_rate: float = Field(default=0.0, ge=0, le=1)
    schema_mismatch_rate: float = Field(default=0.0, ge=0, le=1)
    retry_after_s: PositiveFloat = 1.0
    fault_seed: int = 0
    cached_share: float = Field(default=0.0, ge=0, le=1)
    max_body_bytes: PositiveInt | None = None
    upstream_error_rate: float = Field(default=0.0, ge=0, le=1)
    close_after_stream: bool = False
    slots: PositiveInt | None = None
    token_ms: NonNegativeFloat = 10.0
    batch_slowdown: NonNegativeFloat = 0.1
    queue_limit: NonNegativeInt | None = None
    queue_overflow: Literal["503", "hang"] = "503"
    slots_schedule: str | None = Field(
        default=None, pattern=r"^\s*\d+(\.\d+)?:[1-9]\d*\s*(,\s*\d+(\.\d+)?:[1-9]\d*\s*)*$"
    )
    realistic: bool = False

    @model_validator(mode="after")
    def _schedule_needs_slots(self) -> FakeSpec:
        if self.slots_schedule is not None and self.slots is None:
            raise ValueError("slots_schedule needs slots (the capacity model)")
        return self


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
    batch_input: NonNegativeFloat | None = None
    batch_output: NonNegativeFloat | None = None


class BatchSpec(_Section):
    """Batch mode: the job sent through the provider's Batch API (files, batches, polling)."""

    enabled: bool = False
    completion_window: Literal["24h"] = "24h"
    max_requests_per_file: int = Field(default=50_000, ge=1, le=50_000)
    max_bytes_per_file: int = Field(default=190_000_000, ge=1024, le=200_000_000)
    poll_interval_s: PositiveFloat = 30.0
    max_poll_interval_s: PositiveFloat = 300.0
    max_resubmits: NonNegativeInt = 3

    @model_validator(mode="after")
    def _poll_bounds(self) -> BatchSpec:
        if self.max_poll_interval_s < self.poll_interval_s:
            raise ValueError("max_poll_interval_s: must be at least poll_interval_s")
        return self


class CacheSpec(_Section):
    """The response cache across runs (``pipeline.cache``): off unless ``enabled = true``
    or a ``path`` is set; ``enabled = false`` turns it off whatever the path.

    ``nondeterministic = true`` also caches requests whose answers are samples
    (``temperature`` above 0 or unset, with no ``seed`` or ``seed_column`` in the job).
    """

    enabled: bool | None = None
    path: str | None = Field(default=None, min_length=1)
    nondeterministic: bool = False

    @property
    def active(self) -> bool:
        """Whether the job asks for the cache."""
        return self.enabled if self.enabled is not None else self.path is not None


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
    cache: CacheSpec = CacheSpec()
    batch: BatchSpec = BatchSpec()

    @model_validator(mode="after")
    def _images_need_a_prompt(self) -> JobSpec:
        if self.request.image_column is not None and self.input.prompt_column is None:
            raise ValueError(
                "[request] image_column: needs [input] prompt_column "
                "(a messages_column row carries its own content parts)"
            )
        return self

    @model_validator(mode="after")
    def _batch_mode_fits(self) -> JobSpec:
        if self.batch.enabled:
            check_batch_mode(self)
        return self


def check_batch_mode(job: JobSpec) -> None:
    """Raise ``ValueError`` when the job cannot run in batch mode (``[batch] enabled`` or ``--batch``)."""
    if job.request.stream:
        raise ValueError(
            "[request] stream: streaming cannot be used in batch mode (set stream = false)"
        )
    templated = [name for name, value in job.endpoint.headers.items() if "{" in value]
    if templated:
        raise ValueError(
            f"[endpoint] headers: {templated[0]!r} is filled per row, which a batch file cannot do"
        )
    if job.limits.max_cost_usd is not None:
        raise ValueError(
            "[limits] max_cost_usd: a budget cannot stop a provider batch once submitted;"
            " remove it in batch mode (check the cost first with pipeline estimate --batch)"
        )


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
    if where == "job" and message.startswith("["):
        return f"{source}: {message}"
    return f"{source}: {where}: {message}"


def parse_job(data: dict[str, Any], source: str = "job") -> JobSpec:
    """Validate an already-parsed TOML document."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobError(describe_validation_error(source, exc)) from None


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job file (UTF-8, a byte-order mark allowed)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise JobError(f"{path}: cannot read job file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise JobError(f"{path}: not a job file: byte {exc.start} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"{path}: not valid TOML: {exc}") from None
    return parse_job(data, str(path))
