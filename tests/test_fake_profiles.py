"""The fake server imitating particular servers: path, query, auth styles, headers, models."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pipeline.fake import (
    PROFILES,
    FakeConfig,
    FakeServer,
    HeaderRule,
    Profile,
    main,
    profile,
    serve_in_thread,
)
from tests.helpers import Start

KEY = "sk-profile-test-0123"


@pytest.fixture
def start() -> Iterator[Start]:
    """Start a fake server with the given profile (and config); return it with a client."""
    with contextlib.ExitStack() as stack:

        def _start(server_profile: Profile, **config: Any) -> tuple[FakeServer, httpx.Client]:
            server = stack.enter_context(
                serve_in_thread(FakeConfig(profile=server_profile, **config))
            )
            root = server.base_url.split("/", 3)
            client = stack.enter_context(httpx.Client(base_url="/".join(root[:3]), timeout=5))
            return server, client

        yield _start


def chat(model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_base_url_follows_the_profile(start: Start) -> None:
    server, _ = start(profile("azure"))
    assert server.base_url.endswith("/openai/deployments/gpt-4o-mini")
    server, _ = start(Profile())
    assert server.base_url.endswith("/v1")


def test_azure_wants_its_path_query_and_api_key_header(start: Start) -> None:
    _, client = start(profile("azure"), api_key=KEY)
    path = "/openai/deployments/gpt-4o-mini/chat/completions"
    right = {"api-key": KEY}
    query = {"api-version": "2024-10-21"}

    assert client.post(path, params=query, headers=right, json=chat()).status_code == 200
    assert client.post(path, headers=right, json=chat()).status_code == 404
    assert (
        client.post(
            path, params={"api-version": "2023-05-15"}, headers=right, json=chat()
        ).status_code
        == 404
    )
    assert (
        client.post("/v1/chat/completions", params=query, headers=right, json=chat()).status_code
        == 404
    )
    assert (
        client.post(
            path, params=query, headers={"Authorization": f"Bearer {KEY}"}, json=chat()
        ).status_code
        == 401
    )
    assert (
        client.post(path, params=query, headers={"x-api-key": KEY}, json=chat()).status_code == 401
    )


@pytest.mark.parametrize("headers", [{"x-api-key": KEY}, {"Authorization": f"Bearer {KEY}"}])
def test_vectara_takes_x_api_key_or_bearer(start: Start, headers: dict[str, str]) -> None:
    _, client = start(profile("vectara"), api_key=KEY)
    assert client.post("/v2/llms/chat/completions", headers=headers, json=chat()).status_code == 200
    assert client.post("/v1/chat/completions", headers=headers, json=chat()).status_code == 404
    assert (
        client.post("/v2/llms/chat/completions", headers={"api-key": KEY}, json=chat()).status_code
        == 401
    )


def test_ovms_needs_the_body_field_and_a_served_model(start: Start) -> None:
    _, client = start(profile("ovms"))
    [model] = PROFILES["ovms"].models or ()
    assert client.post("/v3/chat/completions", json=chat(model, top_k=1)).status_code == 200
    missing = client.post("/v3/chat/completions", json=chat(model))
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "top_k"
    unknown = client.post("/v3/chat/completions", json=chat("gpt-4o", top_k=1))
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


def test_portkey_needs_its_key_a_route_and_a_trace_id(start: Start) -> None:
    _, client = start(profile("portkey"), api_key=KEY)
    path = "/v1/chat/completions"
    good = {"x-portkey-api-key": KEY, "x-portkey-virtual-key": "vk-1", "x-portkey-trace-id": "r1"}
    assert client.post(path, headers=good, json=chat()).status_code == 200
    for route in ("x-portkey-provider", "x-portkey-config"):
        headers = {**good, route: "x"}
        del headers["x-portkey-virtual-key"]
        assert client.post(path, headers=headers, json=chat()).status_code == 200

    no_route = {k: v for k, v in good.items() if k != "x-portkey-virtual-key"}
    response = client.post(path, headers=no_route, json=chat())
    assert response.status_code == 400
    assert (
        "x-portkey-provider, x-portkey-virtual-key, x-portkey-config"
        in response.json()["error"]["message"]
    )
    no_trace = {k: v for k, v in good.items() if k != "x-portkey-trace-id"}
    assert client.post(path, headers=no_trace, json=chat()).status_code == 400
    no_key = {k: v for k, v in good.items() if k != "x-portkey-api-key"}
    assert client.post(path, headers=no_key, json=chat()).status_code == 401


def test_router_echoes_provider_prefixed_models(start: Start) -> None:
    _, client = start(profile("router"), api_key=KEY)
    headers = {"Authorization": f"Bearer {KEY}"}
    answer = client.post(
        "/api/v1/chat/completions", headers=headers, json=chat("anthropic/claude-3-opus")
    )
    assert answer.status_code == 200
    assert answer.json()["model"] == "anthropic/claude-3-opus"
    assert (
        client.post(
            "/api/v1/chat/completions", headers=headers, json=chat("claude-3-opus")
        ).status_code
        == 404
    )


def test_keyless_servers_accept_any_key_or_none(start: Start) -> None:
    _, client = start(profile("ollama"))
    for headers in ({}, {"Authorization": "Bearer anything"}):
        assert (
            client.post("/v1/chat/completions", headers=headers, json=chat("llama3.2")).status_code
            == 200
        )


def test_header_rules_with_allowed_values() -> None:
    rule = HeaderRule(("X-Portkey-Provider",), ("openai", "anthropic"))
    assert rule.names == ("x-portkey-provider",)
    assert rule.missing({"x-portkey-provider": "openai"}) is None
    assert rule.missing({"x-portkey-provider": "azure"}) == (
        "the x-portkey-provider header must be one of openai, anthropic"
    )
    assert HeaderRule(("a", "b")).missing({"b": ""}) == "one of the a, b headers is required"
    with pytest.raises(ValueError, match="at least one header name"):
        HeaderRule(())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"auth_styles": ("basic",)}, "unknown auth style 'basic'"),
        (
            {"chat_path": "/v1/completions"},
            "chat_path must start with / and end with /chat/completions",
        ),
    ],
)
def test_profile_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Profile(**fields)


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: openai-compatible, openai, azure"):
        profile("bedrock")
    assert dataclasses.replace(profile("vllm"), models=("x",)).models == ("x",)


def test_cli_takes_a_profile_and_a_stream_cut_rate(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="2"):
        main(["--profile", "bedrock"])
    assert "invalid choice: 'bedrock'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main(["--stream-cut-rate", "2"])
    assert "stream_cut_rate must be between 0 and 1" in capsys.readouterr().err
