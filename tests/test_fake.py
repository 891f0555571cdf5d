"""Tests of the fake OpenAI-compatible server, over real loopback sockets."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

import pipeline.fake
from pipeline.fake import FakeConfig, FakeServer, main, serve, serve_in_thread
from pipeline.fake.content import (
    IMAGE_TOKENS,
    ResponseFormat,
    count_tokens,
    generate_content,
    generate_json_content,
)
from pipeline.fake.ratelimit import ServerQuota, format_duration
from pipeline.fake.structured import SchemaValues, break_schema
from tests.helpers import REPO, Start
from tests.schemas import Gen, root_schemas

KEY = "sk-fake-test-secret-0123"


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a fake server with the given config fields; return it with a client."""
    with contextlib.ExitStack() as stack:

        def _start(**config: Any) -> tuple[FakeServer, httpx.Client]:
            server = stack.enter_context(serve_in_thread(FakeConfig(**config)))
            client = stack.enter_context(httpx.Client(base_url=server.base_url, timeout=5))
            return server, client

        yield _start


def chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    """A chat completion request body."""
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


def test_public_surface() -> None:
    assert sorted(pipeline.fake.__all__) == [
        "FakeConfig",
        "FakeServer",
        "FakeStats",
        "Fault",
        "HeaderRule",
        "PROFILES",
        "Profile",
        "RecordedRequest",
        "main",
        "profile",
        "serve",
        "serve_in_thread",
    ]


def test_success_has_openai_shape(start: Start) -> None:
    server, client = start()
    assert server.base_url.startswith("http://127.0.0.1:")
    assert server.base_url.endswith("/v1")
    response = client.post("/chat/completions", json=chat("hi there!", temperature=0.2))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert len(body["id"]) == len("chatcmpl-") + 24
    assert body["object"] == "chat.completion"
    assert body["model"] == "fake-model"
    assert body["system_fingerprint"] == "fp_fake0001"
    assert abs(body["created"] - time.time()) < 60
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert content.endswith(".")
    assert 8 <= len(content.split()) <= 60
    assert body["usage"] == {
        "prompt_tokens": 3 + 4 + 3,  # "hi", "there", "!"
        "completion_tokens": count_tokens(content),
        "total_tokens": 10 + count_tokens(content),
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def test_cached_share_and_reasoning_models_report_usage_details(start: Start) -> None:
    _, client = start(cached_share=0.5)
    usage = client.post("/chat/completions", json=chat("one two three four five")).json()["usage"]
    assert usage["prompt_tokens"] == 5 + 4 + 3
    assert usage["prompt_tokens_details"] == {"cached_tokens": 6}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}

    body = chat("one two three four five", model="openai/o3-mini")
    reasoning = client.post("/chat/completions", json=body).json()
    visible = count_tokens(reasoning["choices"][0]["message"]["content"])
    details = reasoning["usage"]["completion_tokens_details"]
    assert details == {"reasoning_tokens": 2 * visible}
    assert reasoning["usage"]["completion_tokens"] == 3 * visible
    assert reasoning["usage"]["total_tokens"] == 12 + 3 * visible


def test_content_is_pinned_across_processes(start: Start) -> None:
    _, client = start()
    content = client.post("/chat/completions", json=chat()).json()["choices"][0]["message"]
    assert content["content"] == (
        "Value each value garden value large batch here every a table finds under few."
    )


def test_same_messages_and_seed_give_the_same_answer(start: Start) -> None:
    _, client = start()
    first = client.post("/chat/completions", json=chat(seed=1)).json()
    again = client.post("/v3/chat/completions", json=chat(seed=1)).json()
    other_seed = client.post("/chat/completions", json=chat(seed=2)).json()
    assert again["id"] == first["id"]
    assert again["choices"] == first["choices"]
    assert other_seed["id"] != first["id"]
    assert other_seed["choices"][0]["message"] != first["choices"][0]["message"]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates_with_length(start: Start, field: str) -> None:
    _, client = start()
    limit: dict[str, Any] = {field: 3}
    body = client.post("/chat/completions", json=chat(**limit)).json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "length"
    assert len(choice["message"]["content"].split()) == 3
    assert body["usage"]["completion_tokens"] == 3


def test_n_gives_distinct_choices(start: Start) -> None:
    _, client = start()
    body = client.post("/chat/completions", json=chat(n=2, seed=5)).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    first, second = (c["message"]["content"] for c in body["choices"])
    assert first != second
    assert body["usage"]["completion_tokens"] == count_tokens(first) + count_tokens(second)


def test_text_and_image_parts_count_toward_prompt_tokens(start: Start) -> None:
    _, client = start()
    parts = [
        {"type": "text", "text": "two words"},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
    ]
    body = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": parts},
        ],
    }
    usage = client.post("/chat/completions", json=body).json()["usage"]
    assert usage["prompt_tokens"] == (3 + 4) + (2 + 4 + IMAGE_TOKENS) + 3


@given(
    messages_key=st.binary(max_size=64),
    seed=st.none() | st.integers(),
    index=st.integers(0, 4),
    max_tokens=st.none() | st.integers(1, 80),
)
def test_generated_content_counts_its_own_tokens(
    messages_key: bytes, seed: int | None, index: int, max_tokens: int | None
) -> None:
    content, tokens, finish_reason = generate_content(messages_key, seed, index, max_tokens)
    assert count_tokens(content) == tokens
    assert generate_content(messages_key, seed, index, max_tokens) == (
        content,
        tokens,
        finish_reason,
    )
    if max_tokens is not None:
        assert tokens <= max_tokens
    assert (finish_reason == "length") == (not content.endswith("."))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions/x"),
        ("GET", "/v1/chat/completions"),
    ],
)
def test_other_paths_are_404(start: Start, method: str, path: str) -> None:
    _, client = start()
    response = client.request(method, path, json=chat())
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), "model"),
        (orjson.dumps({"model": "m", "messages": []}), "messages"),
        (orjson.dumps({"model": "m", "messages": "hello"}), "messages"),
        (orjson.dumps({"model": "m", "messages": ["hello"]}), "messages[0]"),
        (
            orjson.dumps({"model": "m", "messages": [{"role": "user", "content": 3}]}),
            "messages[0].content",
        ),
        (orjson.dumps(chat(seed="1")), "seed"),
        (orjson.dumps(chat(max_tokens=0)), "max_tokens"),
        (orjson.dumps(chat(n=True)), "n"),
        (orjson.dumps(chat(stream="yes")), "stream"),
        (orjson.dumps(chat(response_format="json")), "response_format"),
        (orjson.dumps(chat(response_format={"type": "yaml"})), "response_format.type"),
        (
            orjson.dumps(chat(response_format={"type": "json_schema"})),
            "response_format.json_schema",
        ),
        (
            orjson.dumps(
                chat(response_format={"type": "json_schema", "json_schema": {"name": "a b"}})
            ),
            "response_format.json_schema.name",
        ),
        (
            orjson.dumps(
                chat(
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "a", "schema": []},
                    }
                )
            ),
            "response_format.json_schema.schema",
        ),
    ],
)
def test_unusable_bodies_are_400(start: Start, body: bytes, param: str | None) -> None:
    _, client = start()
    response = client.post("/chat/completions", content=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] is None


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}], ids=["bearer", "x-api-key"]
)
def test_auth_accepts_the_key(start: Start, headers: dict[str, str]) -> None:
    _, client = start(api_key=KEY)
    assert client.post("/chat/completions", json=chat(), headers=headers).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-wrong-presented"}, {"x-api-key": "sk-wrong-presented"}],
    ids=["missing", "wrong-bearer", "wrong-x-api-key"],
)
def test_auth_rejects_without_leaking(start: Start, headers: dict[str, str]) -> None:
    server, client = start(api_key=KEY, record_requests=True)
    response = client.post("/chat/completions", json=chat(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == {
        "message": "Incorrect API key provided",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    stats = client.get(server.base_url.removesuffix("/v1") + "/stats").text
    for secret in (KEY, "sk-wrong-presented"):
        assert secret not in response.text
        assert secret not in stats
        assert secret not in repr(server.config)


def test_requests_limit(start: Start) -> None:
    _, client = start(requests_per_minute=60, limit_window_s=1.0)
    first = client.post("/chat/completions", json=chat())
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"] in {"1s", "999ms", "998ms"}
    assert "x-ratelimit-limit-tokens" not in first.headers
    second = client.post("/chat/completions", json=chat())
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert 500 < int(second.headers["retry-after-ms"]) <= 1000
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    error = second.json()["error"]
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith("Rate limit reached for requests")


def test_tokens_limit_admits_an_oversized_request_when_full(start: Start) -> None:
    # Capacity 10 tokens, refilled at 10/s; the request costs 8 prompt + 5 max = 13.
    _, client = start(tokens_per_minute=600, limit_window_s=1.0)
    first = client.post("/chat/completions", json=chat(max_tokens=5))
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "600"
    assert first.headers["x-ratelimit-remaining-tokens"] == "0"
    assert first.headers["x-ratelimit-reset-tokens"] == "1.3s"
    second = client.post("/chat/completions", json=chat(max_tokens=5))
    assert second.status_code == 429
    assert second.headers["retry-after"] == "2"
    assert 1100 < int(second.headers["retry-after-ms"]) <= 1300
    assert second.json()["error"]["type"] == "tokens"


def test_rate_limiter_charges_only_admitted_requests() -> None:
    quota = ServerQuota(120, None, window_s=1.0, now=0.0)  # capacity 2, 2 per second
    assert quota.admit(1, now=0.0).refused is None
    admitted = quota.admit(1, now=0.0)
    assert admitted.headers == {
        "x-ratelimit-limit-requests": "120",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
    }
    refused = quota.admit(1, now=0.25)
    assert (refused.refused, refused.limit, refused.requested, refused.wait_ms) == (
        "requests", 120, 1, 250
    )  # fmt: skip
    assert quota.admit(1, now=0.5).refused is None
    assert quota.admit(1, now=0.5).refused == "requests"


def test_rate_limiter_waits_for_both_buckets() -> None:
    quota = ServerQuota(60, 600, window_s=1.0, now=0.0)  # 1 request, 10 tokens
    assert quota.admit(30, now=0.0).refused is None  # tokens now at -20: 3 s of debt
    refused = quota.admit(1, now=0.0)
    assert refused.refused == "requests"
    assert refused.wait_ms == 2100  # tokens need 2.1 s to reach a cost of 1
    assert refused.headers["x-ratelimit-reset-tokens"] == "3s"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.0004, "1ms"),
        (0.12, "120ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.999, "59.999s"),
        (360.0, "6m0s"),
        (3725.25, "1h2m5.25s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_concurrency_limit(start: Start) -> None:
    server, client = start(max_concurrency=1, latency_s=0.4)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.post, "/chat/completions", json=chat())
        deadline = time.monotonic() + 5
        while server.stats.received < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        began = time.monotonic()
        refused = client.post("/chat/completions", json=chat())
        assert time.monotonic() - began < 0.4  # refused at once, without the latency
        assert slow.result().status_code == 200
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "requests"
    assert client.post("/chat/completions", json=chat()).status_code == 200


@pytest.mark.parametrize(
    ("fault", "status", "error_type"),
    [
        ("error_500_rate", 500, "server_error"),
        ("error_502_rate", 502, "server_error"),
        ("error_503_rate", 503, "server_error"),
        ("bad_request_rate", 400, "invalid_request_error"),
        ("rate_limit_rate", 429, "requests"),
    ],
)
def test_error_faults(start: Start, fault: str, status: int, error_type: str) -> None:
    server, client = start(**{fault: 1.0}, retry_after_s=2.5, latency_s=0.05)
    began = time.monotonic()
    response = client.post("/chat/completions", json=chat())
    assert time.monotonic() - began >= 0.05  # latency is paid before the fault
    assert response.status_code == status
    assert response.json()["error"]["type"] == error_type
    if status == 429:
        assert response.headers["retry-after"] == "3"
        assert response.headers["retry-after-ms"] == "2500"
    assert server.stats.by_status == {status: 1}
    assert not server.stats.completions_by_request


def test_malformed_fault(start: Start) -> None:
    server, client = start(malformed_rate=1.0)
    response = client.post("/chat/completions", json=chat())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)
    assert server.stats.by_status == {200: 1}
    assert not server.stats.completions_by_request


def test_drop_fault(start: Start) -> None:
    server, client = start(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/chat/completions", json=chat())
    assert (server.stats.received, server.stats.dropped) == (1, 1)
    assert not server.stats.by_status


def test_hang_fault_times_out_and_shuts_down_quickly(start: Start) -> None:
    server, client = start(hang_rate=1.0, hang_s=30.0)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/chat/completions", json=chat(), timeout=0.2)
    assert server.stats.hung == 1
    assert not server.stats.by_status


def test_faults_are_reproducible_from_the_seed() -> None:
    def statuses(seed: int) -> list[int]:
        config = FakeConfig(error_500_rate=0.5, fault_seed=seed)
        with serve_in_thread(config) as server, httpx.Client(base_url=server.base_url) as client:
            return [client.post("/chat/completions", json=chat()).status_code for _ in range(16)]

    first = statuses(7)
    assert statuses(7) == first
    assert set(first) == {200, 500}
    assert statuses(8) != first


def test_stats_and_monitoring_endpoints(start: Start) -> None:
    server, client = start(record_requests=True)
    root = server.base_url.removesuffix("/v1")
    client.post("/chat/completions", json=chat(seed=3))
    client.post("/chat/completions", json=chat(seed=3))
    client.post("/chat/completions", json=chat(seed=4))
    client.post("/chat/completions", content=b"{")
    assert client.get(root + "/health").json() == {"status": "ok"}
    stats = server.stats
    assert stats.received == 4
    assert stats.by_status == {200: 3, 400: 1}
    assert sorted(stats.completions_by_request.values()) == [1, 2]
    assert stats.completions_by_seed == {3: 2, 4: 1}
    assert [r.path for r in stats.requests] == ["/v1/chat/completions"] * 4
    assert stats.requests[-1].body == b"{"
    served = client.get(root + "/stats").json()
    assert served.pop("batches")["batches_created"] == 0  # the Batch API's counters
    assert served == orjson.loads(orjson.dumps(stats.to_dict()))
    assert served["by_status"] == {"200": 3, "400": 1}


def test_stats_count_what_the_quota_admits_per_second(start: Start) -> None:
    server, client = start(requests_per_minute=120, limit_window_s=1.0)  # 2 a second
    codes = [client.post("/chat/completions", json=chat()).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    served = client.get(server.base_url.removesuffix("/v1") + "/stats").json()
    assert sum(served["admitted_by_second"].values()) == 2
    assert sum(served["tokens_by_second"].values()) > 0


@pytest.mark.anyio
async def test_serve_runs_on_the_callers_loop() -> None:
    async with (
        serve(FakeConfig()) as server,
        httpx.AsyncClient(base_url=server.base_url) as client,
    ):
        response = await client.post("/chat/completions", json=chat())
    assert response.status_code == 200
    assert server.stats.by_status == {200: 1}


def test_serve_in_thread_reports_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"), serve_in_thread(FakeConfig(), port=port):
            pass


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("latency_s", -1.0, "latency_s must be >= 0"),
        ("requests_per_minute", 0, "requests_per_minute must be >= 1"),
        ("limit_window_s", 0.0, "limit_window_s must be > 0"),
        ("drop_rate", 1.5, "drop_rate must be between 0 and 1"),
        ("cached_share", 1.5, "cached_share must be between 0 and 1"),
    ],
)
def test_config_validation(field: str, value: float, message: str) -> None:
    settings: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=message):
        FakeConfig(**settings)


def test_main_rejects_bad_arguments(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPELINE_FAKE_TEST_UNSET", raising=False)
    with pytest.raises(SystemExit, match="2"):
        main(["--drop-rate", "2"])
    assert "drop_rate must be between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["--api-key-env", "PIPELINE_FAKE_TEST_UNSET"])
    assert "PIPELINE_FAKE_TEST_UNSET is not set" in capsys.readouterr().err


def test_main_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "pipeline.fake", "--port", "0", "--api-key-env", "FAKE_KEY"]
    env = {**os.environ, "FAKE_KEY": KEY}
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            prefix = "fake server listening on "
            assert line.startswith(prefix)
            base_url = line.removeprefix(prefix).strip()
            assert base_url.startswith("http://127.0.0.1:")
            assert base_url.endswith("/v1")
            headers = {"Authorization": f"Bearer {KEY}"}
            response = httpx.post(base_url + "/chat/completions", json=chat(), headers=headers)
            assert response.status_code == 200
            assert httpx.post(base_url + "/chat/completions", json=chat()).status_code == 401
        finally:
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert KEY not in out + err


# ---- JSON mode --------------------------------------------------------------------------

REVIEW = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "pros": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "meta": {
            "type": "object",
            "properties": {
                "when": {"type": "string", "format": "date-time"},
                "price": {"type": ["number", "null"]},
            },
            "required": ["when", "price"],
            "additionalProperties": False,
        },
    },
    "required": ["sentiment", "stars", "pros", "meta"],
    "additionalProperties": False,
}


def schema_format(schema: dict[str, Any] = REVIEW, strict: bool = True) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "review", "schema": schema, "strict": strict},
    }


def answer(client: httpx.Client, **extra: Any) -> dict[str, Any]:
    response = client.post("/chat/completions", json=chat(**extra))
    assert response.status_code == 200, response.text
    choice: dict[str, Any] = response.json()["choices"][0]
    return choice


def test_json_object_answers_are_json_objects(start: Start) -> None:
    _, client = start()
    first = answer(client, seed=1, response_format={"type": "json_object"})
    value = orjson.loads(first["message"]["content"])
    assert set(value) == {"summary", "sentiment", "keywords"}
    assert value["sentiment"] in ("positive", "neutral", "negative")
    assert answer(client, seed=1, response_format={"type": "json_object"}) == first
    assert answer(client, seed=2, response_format={"type": "json_object"}) != first
    plain = answer(client, seed=1, response_format={"type": "text"})
    assert plain == answer(client, seed=1)


def test_json_schema_answers_satisfy_the_schema_and_follow_the_seed(start: Start) -> None:
    _, client = start()
    validator = Draft202012Validator(REVIEW)
    values = [
        orjson.loads(
            answer(client, seed=seed, response_format=schema_format())["message"]["content"]
        )
        for seed in range(20)
    ]
    for value in values:
        validator.validate(value)
    assert len({orjson.dumps(v) for v in values}) == 20
    assert {v["sentiment"] for v in values} == {"positive", "neutral", "negative"}
    again = orjson.loads(
        answer(client, seed=3, response_format=schema_format())["message"]["content"]
    )
    assert again == values[3]


def test_json_answers_are_cut_at_max_tokens(start: Start) -> None:
    _, client = start()
    choice = answer(client, seed=1, max_tokens=5, response_format=schema_format())
    assert choice["finish_reason"] == "length"
    assert count_tokens(choice["message"]["content"]) == 5
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(choice["message"]["content"])


@pytest.mark.parametrize(
    ("schema", "says"),
    [
        ({"type": "array"}, "must be a JSON Schema of 'type: \"object\"'"),
        (
            {**REVIEW, "additionalProperties": True},
            "In context=(), 'additionalProperties' is required",
        ),
        ({**REVIEW, "required": ["sentiment"]}, "Missing 'stars'"),
        (
            {
                **REVIEW,
                "properties": {
                    **REVIEW["properties"],
                    "meta": {**REVIEW["properties"]["meta"], "required": []},
                },
            },
            "In context=('properties', 'meta')",
        ),
    ],
)
def test_strict_schemas_are_checked_like_openai(
    start: Start, schema: dict[str, Any], says: str
) -> None:
    _, client = start()
    response = client.post("/chat/completions", json=chat(response_format=schema_format(schema)))
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]
    loose = client.post(
        "/chat/completions", json=chat(response_format=schema_format(schema, strict=False))
    )
    assert loose.status_code == 200


def test_content_faults_spoil_json_answers_only(start: Start) -> None:
    server, client = start(invalid_json_rate=1.0)
    for seed in range(6):
        content = answer(client, seed=seed, response_format=schema_format())["message"]["content"]
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(content)
    assert answer(client, seed=1)["message"]["content"].endswith(".")
    assert server.stats.invalid_json == 6

    server, client = start(schema_mismatch_rate=1.0)
    validator = Draft202012Validator(REVIEW)
    for seed in range(6):
        value = orjson.loads(
            answer(client, seed=seed, response_format=schema_format())["message"]["content"]
        )
        assert not validator.is_valid(value)
    orjson.loads(answer(client, response_format={"type": "json_object"})["message"]["content"])
    assert server.stats.schema_mismatch == 6
    assert server.stats.to_dict()["schema_mismatch"] == 6


def test_content_faults_leave_the_other_faults_draws_unchanged() -> None:
    def statuses(**rates: float) -> list[int]:
        config = FakeConfig(error_500_rate=0.5, fault_seed=7, **rates)
        with serve_in_thread(config) as server, httpx.Client(base_url=server.base_url) as client:
            body = chat(response_format={"type": "json_object"})
            return [client.post("/chat/completions", json=body).status_code for _ in range(16)]

    assert statuses(invalid_json_rate=0.5, schema_mismatch_rate=0.5) == statuses()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(root_schemas(), st.integers(0, 2**31 - 1))
def test_generated_values_satisfy_generated_schemas(gen: Gen, seed: int) -> None:
    value = SchemaValues(gen.schema, random.Random(seed), ("alpha", "beta", "gamma")).value(
        gen.schema
    )
    validator = Draft202012Validator(gen.schema)
    validator.validate(value)
    broken = break_schema(gen.schema, value)
    if gen.schema["required"] or any("type" in p for p in gen.schema["properties"].values()):
        assert not validator.is_valid(broken)


@given(st.binary(max_size=32), st.none() | st.integers(0, 2**31), st.none() | st.integers(1, 40))
def test_generated_json_counts_its_own_tokens(
    messages_key: bytes, seed: int | None, max_tokens: int | None
) -> None:
    content, tokens, finish_reason = generate_json_content(
        messages_key, seed, 0, max_tokens, ResponseFormat("json_schema", REVIEW, "review")
    )
    assert count_tokens(content) == tokens
    if finish_reason == "length":
        assert tokens == max_tokens
    else:
        assert finish_reason == "stop"
        Draft202012Validator(REVIEW).validate(orjson.loads(content))


def test_main_takes_the_content_fault_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        main(["--invalid-json-rate", "1.5"])
    assert "invalid_json_rate must be between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["--schema-mismatch-rate", "-0.1"])
    assert "schema_mismatch_rate must be between 0 and 1" in capsys.readouterr().err
