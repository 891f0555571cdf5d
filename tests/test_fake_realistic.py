"""The fake server's realistic mode (answers as api.openai.com sends them), over loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.fake import FakeConfig, FakeServer, serve_in_thread
from pipeline.fake.cli import _parser
from pipeline.fake.content import PROSE_TOKENS, count_tokens, generate_prose
from pipeline.fake.realistic import PLAUSIBLE_REQUESTS_PER_MINUTE, PLAUSIBLE_TOKENS_PER_MINUTE
from pipeline.spec import FakeSpec
from tests.helpers import FakeFactory, Reviews, Start, make_job, run_job

OPENAI_HEADERS = (
    "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
    "x-request-id", "openai-processing-ms", "openai-version", "openai-organization",
    "openai-project", "access-control-expose-headers", "strict-transport-security",
    "cf-cache-status", "x-content-type-options", "cf-ray", "alt-svc", "date",
)  # fmt: skip


@pytest.fixture
def start() -> Iterator[Start]:
    with contextlib.ExitStack() as stack:

        def _start(**config: Any) -> tuple[FakeServer, httpx.Client]:
            server = stack.enter_context(serve_in_thread(FakeConfig(realistic=True, **config)))
            client = stack.enter_context(httpx.Client(base_url=server.base_url, timeout=5))
            return server, client

        yield _start


def chat(content: str = "Is this blender any good?", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": content}],
        "seed": 5,
        **extra,
    }


def test_answers_carry_openais_headers(start: Start) -> None:
    _, client = start(latency_s=0.02)
    response = client.post("/chat/completions", json=chat(max_tokens=300))
    assert response.status_code == 200
    headers = response.headers
    missing = [name for name in OPENAI_HEADERS if not headers.get(name)]
    assert missing == []
    assert headers["content-type"] == "application/json"
    assert headers["server"] == "cloudflare"
    assert headers["x-ratelimit-limit-requests"] == str(PLAUSIBLE_REQUESTS_PER_MINUTE)
    assert headers["x-ratelimit-limit-tokens"] == str(PLAUSIBLE_TOKENS_PER_MINUTE)
    charged = response.json()["usage"]["prompt_tokens"] + 300
    assert int(headers["x-ratelimit-remaining-tokens"]) == PLAUSIBLE_TOKENS_PER_MINUTE - charged
    assert headers["x-request-id"].startswith("req_")
    assert len(headers["x-request-id"]) == 4 + 32
    assert int(headers["openai-processing-ms"]) >= 20
    cookies = headers.get_list("set-cookie")
    assert [cookie.split("=", 1)[0] for cookie in cookies] == ["__cf_bm", "_cfuvid"]
    assert all("domain=.api.openai.com" in cookie for cookie in cookies)
    again = client.post("/chat/completions", json=chat(max_tokens=300)).headers
    assert again["x-request-id"] != headers["x-request-id"]
    assert again["cf-ray"] != headers["cf-ray"]


def test_rate_limit_features_headers_win(start: Start) -> None:
    _, client = start(requests_per_minute=60)
    first = client.post("/chat/completions", json=chat())
    assert first.headers["x-ratelimit-limit-requests"] == "60"
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-limit-tokens"] == str(PLAUSIBLE_TOKENS_PER_MINUTE)
    refused = client.post("/chat/completions", json=chat())
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit-requests"] == "60"
    assert refused.headers["x-request-id"].startswith("req_")
    assert len(refused.headers.get_list("set-cookie")) == 2


def test_body_has_every_field_openai_sends(start: Start) -> None:
    _, client = start(cached_share=0.5)
    body = client.post("/chat/completions", json=chat()).json()
    assert list(body) == [
        "id", "object", "created", "model", "choices", "usage", "service_tier",
        "system_fingerprint",
    ]  # fmt: skip
    assert body["service_tier"] == "default"
    assert body["system_fingerprint"].startswith("fp_")
    [choice] = body["choices"]
    assert choice["logprobs"] is None
    message = choice["message"]
    assert message["refusal"] is None
    assert message["annotations"] == []
    usage = body["usage"]
    assert usage["prompt_tokens_details"] == {
        "cached_tokens": usage["prompt_tokens"] // 2,
        "audio_tokens": 0,
    }
    assert usage["completion_tokens_details"] == {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    content = message["content"]
    assert usage["completion_tokens"] == count_tokens(content)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_contents_are_100_to_300_tokens_and_respect_max_tokens(start: Start) -> None:
    _, client = start()
    lengths = set()
    for number in range(12):
        body = client.post("/chat/completions", json=chat(f"Review {number}", max_tokens=400))
        answer = body.json()
        content = answer["choices"][0]["message"]["content"]
        tokens = answer["usage"]["completion_tokens"]
        assert PROSE_TOKENS[0] <= tokens <= PROSE_TOKENS[1]
        assert count_tokens(content) == tokens
        assert content[0].isupper()
        assert content.endswith(".")
        assert answer["choices"][0]["finish_reason"] == "stop"
        lengths.add(tokens)
    assert len(lengths) > 6
    cut = client.post("/chat/completions", json=chat(max_tokens=40)).json()
    assert cut["usage"]["completion_tokens"] == 40
    assert count_tokens(cut["choices"][0]["message"]["content"]) == 40
    assert cut["choices"][0]["finish_reason"] == "length"
    twice = client.post("/chat/completions", json=chat(max_tokens=40)).json()
    assert twice["choices"] == cut["choices"]  # deterministic per request


@pytest.mark.parametrize("seed", range(40))
def test_prose_counts_its_own_tokens(seed: int) -> None:
    content, tokens, finish = generate_prose(b"[]", seed, 0, None)
    assert count_tokens(content) == tokens
    assert PROSE_TOKENS[0] <= tokens <= PROSE_TOKENS[1]
    assert ".." not in content
    assert finish == "stop"


def test_streamed_answers_carry_the_headers(start: Start) -> None:
    _, client = start()
    response = client.post("/chat/completions", json=chat(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["openai-version"] == "2020-10-01"
    assert len(response.headers.get_list("set-cookie")) == 2
    assert response.text.endswith("data: [DONE]\n\n")


def test_off_by_default_and_on_by_flag_or_job_key(fake_server: FakeFactory) -> None:
    assert not FakeConfig().realistic
    assert _parser().parse_args(["--realistic"]).realistic is True
    assert _parser().parse_args([]).realistic is False
    assert FakeConfig.from_options(**FakeSpec.model_validate({"realistic": True}).model_dump())
    plain = fake_server()
    response = httpx.post(f"{plain.base_url}/chat/completions", json=chat(), timeout=5)
    assert "x-request-id" not in response.headers
    assert "refusal" not in response.json()["choices"][0]["message"]


def test_the_pipeline_reads_a_realistic_answer_into_its_row(
    tmp_path: Path, reviews: Reviews, fake_server: FakeFactory
) -> None:
    server = fake_server(realistic=True, cached_share=0.25, record_requests=True)
    output = tmp_path / "out.parquet"
    job = make_job(reviews(3), server.base_url, output, request={"max_tokens": 300})
    rows = run_job(tmp_path, job).sort("id")
    assert rows["status"].to_list() == ["ok"] * 3
    sent = list(server.stats.requests)
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        replayed = [client.post("/chat/completions", content=r.body).json() for r in sent]
    answers = {answer["id"]: answer for answer in replayed}  # the id is the body's digest
    for row in rows.iter_rows(named=True):
        answer = answers[row["response_id"]]
        assert row["content"] == answer["choices"][0]["message"]["content"]
        assert row["finish_reason"] == "stop"
        usage = answer["usage"]
        assert row["prompt_tokens"] == usage["prompt_tokens"]
        assert row["completion_tokens"] == usage["completion_tokens"]
        assert row["total_tokens"] == usage["total_tokens"]
        assert row["cached_tokens"] == usage["prompt_tokens_details"]["cached_tokens"] > 0
        assert row["reasoning_tokens"] == 0
        assert row["system_fingerprint"] == answer["system_fingerprint"]
        assert PROSE_TOKENS[0] <= row["completion_tokens"] <= PROSE_TOKENS[1]
