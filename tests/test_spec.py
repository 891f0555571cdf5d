"""Tests of the job file model: every key validated, one-line errors naming the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import JobError, UserError
from pipeline.spec import JobSpec, load_job, parse_job
from tests.helpers import REPO

DESIGN_JOB = """\
name = "summarize-reviews"

[input]
path = "data/reviews.parquet"
id_column = "review_id"
prompt_column = "text"
keep_columns = ["product_id"]

[request]
model = "gpt-4o-mini"
system = "You are a careful summarizer."
template = "Summarize in one sentence:\\n{text}"
temperature = 0.0
max_tokens = 256
seed = 1234
params = { top_p = 1.0, stop = ["END"] }
extra_body = { top_k = 1 }

[endpoint]
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"
auth = "bearer"
headers = { "x-portkey-provider" = "openai" }
timeout_s = 120

[limits]
concurrency = 64
requests_per_minute = 500
tokens_per_minute = 200000

[retry]
max_attempts = 6
initial_backoff_s = 1.0
max_backoff_s = 60.0

[output]
path = "out/{name}/{date}.parquet"
"""

DELETE = object()
"""Marker: remove the key instead of setting it."""


def minimal_job() -> dict[str, Any]:
    """The smallest valid job, as parsed TOML."""
    return {
        "name": "job-1",
        "input": {"path": "in.jsonl", "prompt_column": "text"},
        "request": {"model": "gpt-4o-mini"},
        "endpoint": {"base_url": "fake"},
        "limits": {"concurrency": 4},
    }


def changed(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``data`` with ``dotted`` (``"limits.concurrency"``) set or removed."""
    result = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    target = result
    for key in parents:
        target = target.setdefault(key, {})
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return result


def job_error(data: dict[str, Any]) -> str:
    with pytest.raises(JobError) as info:
        parse_job(data)
    return str(info.value)


def test_design_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(DESIGN_JOB, encoding="utf-8")

    job = load_job(path)

    assert job.name == "summarize-reviews"
    assert job.input.id_column == "review_id"
    assert job.input.prompt_column == "text"
    assert job.input.messages_column is None
    assert job.input.keep_columns == ["product_id"]
    assert job.request.template == "Summarize in one sentence:\n{text}"
    assert job.request.temperature == 0.0
    assert job.request.max_tokens == 256
    assert job.request.seed == 1234
    assert job.request.params == {"top_p": 1.0, "stop": ["END"]}
    assert job.request.extra_body == {"top_k": 1}
    assert job.endpoint.auth == "bearer"
    assert job.endpoint.api_key_env == "OPENAI_API_KEY"
    assert job.endpoint.headers == {"x-portkey-provider": "openai"}
    assert job.endpoint.timeout_s == 120.0
    assert job.endpoint.is_fake is False
    assert job.limits.concurrency == 64
    assert job.limits.requests_per_minute == 500
    assert job.limits.tokens_per_minute == 200_000
    assert job.retry.max_attempts == 6
    assert job.retry.max_backoff_s == 60.0
    assert job.output.path == "out/{name}/{date}.parquet"


def test_concurrency_auto_and_its_bounds() -> None:
    job = parse_job(changed(minimal_job(), "limits.concurrency", "auto"))
    assert job.limits.auto
    assert (job.limits.min_concurrency, job.limits.max_concurrency) == (1, 256)
    assert job.limits.most_in_flight == 256
    bounded = changed(
        changed(job.model_dump(), "limits.min_concurrency", 4), "limits.max_concurrency", 32
    )
    limits = parse_job(bounded).limits
    assert (limits.min_concurrency, limits.most_in_flight) == (4, 32)
    fixed = parse_job(changed(minimal_job(), "limits.concurrency", 12)).limits
    assert not fixed.auto
    assert fixed.most_in_flight == 12


def test_minimal_job_gets_defaults() -> None:
    job = parse_job(minimal_job())

    assert job.endpoint.is_fake is True
    assert job.endpoint.auth == "bearer"
    assert job.request.seed == 0
    assert job.request.params == {}
    assert job.retry.max_attempts == 6
    assert job.limits.requests_per_minute is None
    assert job.input.batch_size == 2048


def test_messages_column_alone_is_valid() -> None:
    data = changed(minimal_job(), "input.prompt_column", DELETE)
    data["input"]["messages_column"] = "messages"

    job = parse_job(data)

    assert job.input.messages_column == "messages"
    assert job.input.prompt_column is None


@pytest.mark.parametrize(
    ("request_keys", "mode"),
    [
        ({}, None),
        ({"response_format": "json_object"}, "json_object"),
        ({"response_format": "json_object", "json_retries": 2}, "json_object"),
        ({"json_schema": "schemas/review.json"}, "json_schema"),
        ({"json_schema": {"type": "object"}, "strict": True}, "json_schema"),
        (
            {"response_format": "json_schema", "json_schema": "s.json", "strict": False},
            "json_schema",
        ),
        ({"response_format": "json_object", "json_schema": "s.json"}, "json_object"),
    ],
)
def test_json_mode_keys(request_keys: dict[str, Any], mode: str | None) -> None:
    job = minimal_job()
    job["request"].update(request_keys)
    assert parse_job(job).request.json_mode == mode


def test_job_is_immutable() -> None:
    job = parse_job(minimal_job())
    with pytest.raises(ValueError, match="frozen"):
        job.name = "other"  # type: ignore[misc]


def test_job_error_is_a_user_error() -> None:
    assert issubclass(JobError, UserError)


@pytest.mark.parametrize(
    ("key", "value", "where", "says"),
    [
        # unknown keys, top level and in a section
        ("bogus", 1, "bogus", "unknown key"),
        ("limits.concurency", 8, "[limits] concurency", "unknown key"),
        ("input.prompt", "text", "[input] prompt", "unknown key"),
        ("endpoint.api_key", "sk-secret", "[endpoint] api_key", "unknown key"),
        # wrong types
        ("limits.concurrency", "8", "[limits] concurrency", 'positive integer or "auto"'),
        ("limits.concurrency", 2.5, "[limits] concurrency", 'positive integer or "auto"'),
        ("limits.concurrency", True, "[limits] concurrency", 'positive integer or "auto"'),
        ("limits.concurrency", "Auto", "[limits] concurrency", 'positive integer or "auto"'),
        ("limits.min_concurrency", 0, "[limits] min_concurrency", "greater than 0"),
        ("limits.max_concurrency", "64", "[limits] max_concurrency", "valid integer"),
        (
            "limits.min_concurrency",
            300,
            "[limits]",
            "min_concurrency (300) is above max_concurrency (256)",
        ),
        ("fake.queue_overflow", "drop", "[fake] queue_overflow", "'503' or 'hang'"),
        ("fake.slots_schedule", "soon", "[fake] slots_schedule", "should match pattern"),
        ("fake.slots_schedule", "10:4", "[fake]", "slots_schedule needs slots"),
        ("fake.slots", 0, "[fake] slots", "greater than 0"),
        ("request.temperature", "hot", "[request] temperature", "valid number"),
        ("input.keep_columns", "product_id", "[input] keep_columns", "valid list"),
        ("request.model", 4, "[request] model", "valid string"),
        ("endpoint.headers", {"x-trace": 1}, "[endpoint] headers.x-trace", "valid string"),
        ("limits", 5, "[limits]", "valid dictionary"),
        # non-positive values
        ("limits.concurrency", 0, "[limits] concurrency", "greater than 0"),
        ("limits.concurrency", -3, "[limits] concurrency", "greater than 0"),
        ("limits.requests_per_minute", 0, "[limits] requests_per_minute", "greater than 0"),
        ("limits.tokens_per_minute", -1, "[limits] tokens_per_minute", "greater than 0"),
        ("retry.max_attempts", 0, "[retry] max_attempts", "greater than 0"),
        ("retry.max_backoff_s", 0.0, "[retry] max_backoff_s", "greater than 0"),
        ("endpoint.timeout_s", -1.0, "[endpoint] timeout_s", "greater than 0"),
        ("request.max_tokens", 0, "[request] max_tokens", "greater than 0"),
        ("request.temperature", -0.5, "[request] temperature", "greater than or equal to 0"),
        # missing required keys
        ("name", DELETE, "name", "required key is missing"),
        ("input.path", DELETE, "[input] path", "required key is missing"),
        ("request.model", DELETE, "[request]", "exactly one of model, models or model_column"),
        ("endpoint.base_url", DELETE, "[endpoint] base_url", "required key is missing"),
        ("endpoint", DELETE, "[endpoint]", "required key is missing"),
        # both or neither prompt source
        (
            "input.messages_column",
            "messages",
            "[input]",
            "exactly one of prompt_column or messages_column",
        ),
        (
            "input.prompt_column",
            DELETE,
            "[input]",
            "exactly one of prompt_column or messages_column",
        ),
        # params may not shadow the [request] keys
        ("request.params", {"model": "other"}, "[request]", "params may not set 'model'"),
        ("request.params", {"seed": 7}, "[request]", "params may not set 'seed'"),
        ("request.params", {"messages": []}, "[request]", "params may not set 'messages'"),
        (
            "request.params",
            {"top_p": 1, "max_tokens": 9},
            "[request]",
            "params may not set 'max_tokens'",
        ),
        (
            "request.extra_body",
            {"response_format": {}},
            "[request]",
            "extra_body may not set 'response_format'",
        ),
        # JSON mode
        (
            "request.response_format",
            "text",
            "[request] response_format",
            "'json_object' or 'json_schema'",
        ),
        ("request.response_format", "json_schema", "[request]", "needs json_schema"),
        (
            "request.json_schema",
            5,
            "[request] json_schema",
            "a schema file path or an inline table",
        ),
        (
            "request.json_schema",
            "  ",
            "[request] json_schema",
            "a schema file path or an inline table",
        ),
        ("request.strict", True, "[request]", "strict applies only to json_schema"),
        ("request.json_retries", 2, "[request]", "json_retries needs JSON mode"),
        ("request.json_retries", -1, "[request] json_retries", "greater than or equal to 0"),
        ("fake.invalid_json_rate", 1.5, "[fake] invalid_json_rate", "less than or equal to 1"),
        # bad values
        (
            "endpoint.auth",
            "basic",
            "[endpoint] auth",
            "'bearer', 'x-api-key', 'api-key', 'x-portkey-api-key' or 'none'",
        ),
        # models, per-row columns, streaming, tools, images
        ("request.models", ["a", "b"], "[request]", "exactly one of model, models or model_column"),
        ("request.model_column", "m", "[request]", "exactly one of model, models or model_column"),
        ("request.models", [], "[request] models", "at least 1 item"),
        ("request.seed_column", "", "[request] seed_column", "at least 1 character"),
        ("request.stream", "yes", "[request] stream", "valid boolean"),
        (
            "request.params",
            {"stream": True},
            "[request]",
            "params may not set 'stream': use the [request] key",
        ),
        (
            "request.params",
            {"stream_options": {}},
            "[request]",
            "'stream_options': [request] stream sets it",
        ),
        ("request.extra_body", {"tools": []}, "[request]", "extra_body may not set 'tools'"),
        ("request.params", {"n": 0}, "[request]", "params.n must be a positive integer, got 0"),
        ("request.params", {"n": "2"}, "[request]", "params.n must be a positive integer, got '2'"),
        (
            "request.tools",
            [{"type": "function"}],
            "[request]",
            'tools[0]: needs type = "function" and a function.name',
        ),
        ("request.tools", [], "[request] tools", "at least 1 item"),
        ("request.tool_choice", "auto", "[request]", "tool_choice needs tools"),
        (
            "endpoint.headers",
            {"bad name": "x"},
            "[endpoint] headers",
            "'bad name' is not a valid header name",
        ),
        (
            "endpoint.headers",
            {"x-a": "1\r\nx-b: 2"},
            "[endpoint] headers",
            "x-a: a header value may not contain line breaks",
        ),
        (
            "endpoint.headers",
            {"x-a": "caf\u00e9"},
            "[endpoint] headers",
            "x-a: a header value must be plain ASCII",
        ),
        ("endpoint.api_key_env", "sk-live-123", "[endpoint] api_key_env", "should match pattern"),
        ("name", "two words", "name", "should match pattern"),
        ("name", "", "name", "at least 1 character"),
    ],
)
def test_validation_message_is_one_line_naming_the_key(
    key: str, value: Any, where: str, says: str
) -> None:
    message = job_error(changed(minimal_job(), key, value))

    assert "\n" not in message
    assert message.startswith(f"job: {where}: "), message
    assert says in message


@pytest.mark.parametrize("url", ["api.openai.com/v1", "ftp://example.test/v1"])
def test_base_url_without_http_scheme_is_rejected(url: str) -> None:
    message = job_error(changed(minimal_job(), "endpoint.base_url", url))
    assert message.startswith("job: [endpoint] base_url: ")


def test_fake_and_http_base_urls_are_accepted() -> None:
    for url in ("fake", "http://127.0.0.1:8000/v1", "https://example.openai.azure.com/openai/v1"):
        assert parse_job(changed(minimal_job(), "endpoint.base_url", url)).endpoint.base_url == url


def test_validation_message_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(DESIGN_JOB.replace("concurrency = 64", "concurrency = 0"), encoding="utf-8")

    with pytest.raises(JobError) as info:
        load_job(path)

    assert str(info.value) == f"{path}: [limits] concurrency: Input should be greater than 0"


def test_api_key_value_is_not_echoed() -> None:
    message = job_error(changed(minimal_job(), "endpoint.api_key_env", "sk-live-123"))
    assert "[endpoint] api_key_env" in message
    # pydantic's message names the pattern, not the rejected value
    assert "sk-live-123" not in message


def test_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text('name = "x"\n[limits\nconcurrency = 4\n', encoding="utf-8")

    with pytest.raises(JobError) as info:
        load_job(path)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid TOML: ")
    assert "line 2" in message


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "job.toml"
    if kind == "directory":
        path.mkdir()

    with pytest.raises(JobError) as info:
        load_job(path)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: cannot read job file: ")
    expected = "No such file or directory" if kind == "missing" else "Is a directory"
    assert message.endswith(expected)


# ---- round trip -------------------------------------------------------------------------

_names = st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True)
_text = st.text(max_size=20)
_nonempty = st.text(min_size=1, max_size=20)
_positive = st.integers(min_value=1, max_value=10**9)
_positive_float = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_reserved = {
    "model", "messages", "seed", "temperature", "max_tokens", "stream", "stream_options", "tools", "tool_choice", "n",
    "response_format",
}  # fmt: skip


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


@st.composite
def job_dicts(draw: st.DrawFn) -> dict[str, Any]:
    source = draw(st.sampled_from(["prompt_column", "messages_column"]))
    input_section = {
        "path": draw(_nonempty),
        source: draw(_nonempty),
        **draw(
            _optional(
                id_column=_nonempty | st.none(),
                keep_columns=st.lists(_nonempty, max_size=3),
                batch_size=_positive,
            )
        ),
    }
    request = {
        "model": draw(_nonempty),
        **draw(
            _optional(
                system=_text | st.none(),
                template=_text | st.none(),
                temperature=st.floats(min_value=0, max_value=2, allow_nan=False) | st.none(),
                max_tokens=_positive | st.none(),
                seed=st.integers(min_value=-(2**63), max_value=2**63 - 1),
                params=st.dictionaries(
                    _text.filter(lambda k: k not in _reserved), _json, max_size=3
                ),
                extra_body=st.dictionaries(
                    _text.filter(lambda k: k not in _reserved), _json, max_size=3
                ),
            )
        ),
    }
    json_mode = draw(st.sampled_from(["none", "json_object", "file", "inline"]))
    if json_mode == "json_object":
        request["response_format"] = "json_object"
    elif json_mode == "file":
        request["json_schema"] = draw(_nonempty.filter(str.strip))
    elif json_mode == "inline":
        request["json_schema"] = draw(st.dictionaries(_text, _json, max_size=3))
    if json_mode in ("file", "inline"):
        request.update(draw(_optional(strict=st.booleans())))
    if json_mode != "none":
        request.update(draw(_optional(json_retries=st.integers(min_value=0, max_value=10))))
    endpoint = {
        "base_url": draw(
            st.just("fake")
            | st.from_regex(
                r"https?://[a-z0-9.-]{1,20}(:[0-9]{2,5})?(/[a-z0-9]{1,8}){0,3}", fullmatch=True
            )
        ),
        **draw(
            _optional(
                api_key_env=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
                | st.none(),
                auth=st.sampled_from(["bearer", "x-api-key", "api-key", "none"]),
                headers=st.dictionaries(
                    st.from_regex(r"[A-Za-z0-9-]{1,12}", fullmatch=True),
                    _text.filter(lambda v: v.isascii() and not {"\r", "\n", "\0"} & set(v)),
                    max_size=3,
                ),
                query=st.dictionaries(_nonempty, _text, max_size=3),
                timeout_s=_positive_float,
            )
        ),
    }
    job: dict[str, Any] = {
        "name": draw(_names),
        "input": input_section,
        "request": request,
        "endpoint": endpoint,
    }
    job.update(
        draw(
            _optional(
                limits=_optional(
                    concurrency=st.integers(min_value=1, max_value=4096),
                    requests_per_minute=_positive | st.none(),
                    tokens_per_minute=_positive | st.none(),
                ),
                retry=_optional(
                    max_attempts=_positive,
                    initial_backoff_s=_positive_float,
                    max_backoff_s=_positive_float,
                ),
                output=_optional(path=_text),
                fake=_optional(
                    latency_ms=st.floats(min_value=0, max_value=1e4),
                    error_500_rate=st.floats(min_value=0, max_value=1),
                    rate_limit_rate=st.floats(min_value=0, max_value=1),
                    invalid_json_rate=st.floats(min_value=0, max_value=1),
                    schema_mismatch_rate=st.floats(min_value=0, max_value=1),
                    fault_seed=st.integers(),
                ),
            )
        )
    )
    return job


@settings(max_examples=75, deadline=None)
@given(job_dicts())
def test_valid_job_round_trips(data: dict[str, Any]) -> None:
    spec = parse_job(data)

    assert isinstance(spec, JobSpec)
    assert parse_job(spec.model_dump()) == spec
    assert spec.name == data["name"]
    assert spec.request.model == data["request"]["model"]


WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


def test_request_features_parse() -> None:
    data = changed(minimal_job(), "request", {
        "models": ["openai/gpt-4o-mini", "anthropic/claude-3-opus"],
        "seed_column": "seed",
        "stream": True,
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "image_column": "image",
        "params": {"n": 3, "top_p": 0.5, "logprobs": True},
    })  # fmt: skip
    data["endpoint"]["headers"] = {"x-portkey-trace-id": "{id}"}
    request = parse_job(data).request
    assert request.models == ["openai/gpt-4o-mini", "anthropic/claude-3-opus"]
    assert request.model is None
    assert request.stream is True
    assert request.choices == 3
    assert minimal_job()["request"]["model"] == parse_job(minimal_job()).request.model
    assert parse_job(minimal_job()).request.choices == 1


@pytest.mark.parametrize(
    ("request_keys", "says"),
    [
        ({"models": ["a", "a"]}, "models: 'a' is listed twice"),
        ({"models": ["a", ""]}, "models: a model name is empty"),
        (
            {"model": "m", "tools": [WEATHER], "tool_choice": "sometimes"},
            "tool_choice must be one of none, auto, required",
        ),
        (
            {
                "model": "m",
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "other"}},
            },
            "naming one of ['get_weather']",
        ),
    ],
)
def test_request_feature_mistakes(request_keys: dict[str, Any], says: str) -> None:
    message = job_error(changed(minimal_job(), "request", request_keys))
    assert message.startswith("job: [request]: ")
    assert says in message


def test_image_column_needs_a_prompt_column() -> None:
    data = changed(minimal_job(), "request.image_column", "image")
    data["input"] = {"path": "in.jsonl", "messages_column": "messages"}
    assert job_error(data) == (
        "job: [request] image_column: needs [input] prompt_column "
        "(a messages_column row carries its own content parts)"
    )


def test_a_job_file_may_start_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + Path(REPO / "jobs" / "demo.toml").read_bytes())
    assert load_job(str(path)).name == "demo"
