"""The fake server's streaming, tool calls and image parts, over real loopback sockets."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from pipeline.fake import FakeConfig, FakeServer, serve_in_thread
from pipeline.fake.content import IMAGE_TOKENS
from tests.helpers import Start

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
            },
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture
def start() -> Iterator[Start]:
    with contextlib.ExitStack() as stack:

        def _start(**config: Any) -> tuple[FakeServer, httpx.Client]:
            server = stack.enter_context(serve_in_thread(FakeConfig(**config)))
            client = stack.enter_context(httpx.Client(base_url=server.base_url, timeout=5))
            return server, client

        yield _start


def chat(content: Any = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "model": "fake-model",
        "messages": [{"role": "user", "content": content}],
        "seed": 3,
        **extra,
    }


def events(text: str) -> list[str]:
    """The data of each event of an SSE body."""
    return [block.removeprefix("data: ") for block in text.split("\n\n") if block]


def test_stream_joins_to_the_plain_answer_and_ends_with_usage_and_done(start: Start) -> None:
    _, client = start()
    plain = client.post("/chat/completions", json=chat(n=2)).json()
    response = client.post(
        "/chat/completions", json=chat(n=2, stream=True, stream_options={"include_usage": True})
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    data = events(response.text)
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == plain["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    for choice in plain["choices"]:
        deltas = [
            c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == choice["index"]
        ]
        text = "".join(d["delta"].get("content") or "" for d in deltas)
        assert text == choice["message"]["content"]
        assert deltas[-1]["finish_reason"] == choice["finish_reason"]


def test_stream_without_include_usage_has_no_usage(start: Start) -> None:
    _, client = start()
    chunks = [
        orjson.loads(d)
        for d in events(client.post("/chat/completions", json=chat(stream=True)).text)[:-1]
    ]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


def test_stream_cut_stops_mid_event_without_done(start: Start) -> None:
    server, client = start(stream_cut_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("/chat/completions", json=chat(stream=True))
    assert server.stats.cut == 1
    plain = client.post("/chat/completions", json=chat())
    assert plain.status_code == 200  # a cut only hits streams


def test_malformed_stream_carries_an_event_that_is_not_json(start: Start) -> None:
    _, client = start(malformed_rate=1.0)
    data = events(client.post("/chat/completions", json=chat(stream=True)).text)
    assert "{not json" in data
    assert data[-1] == "[DONE]"


def test_tools_answer_with_a_call_of_the_first_tool(start: Start) -> None:
    _, client = start()
    body = client.post("/chat/completions", json=chat(tools=[WEATHER, CLOCK])).json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    arguments = orjson.loads(call["function"]["arguments"])
    assert set(arguments) == {"city", "days", "metric"}
    assert isinstance(arguments["city"], str)
    assert isinstance(arguments["days"], int)
    assert isinstance(arguments["metric"], bool)
    assert client.post("/chat/completions", json=chat(tools=[WEATHER, CLOCK])).json() == body


def test_tool_choice_names_the_tool_or_turns_tools_off(start: Start) -> None:
    _, client = start()
    named = {"type": "function", "function": {"name": "get_time"}}
    body = client.post(
        "/chat/completions", json=chat(tools=[WEATHER, CLOCK], tool_choice=named)
    ).json()
    assert body["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": "get_time",
        "arguments": "{}",
    }
    off = client.post("/chat/completions", json=chat(tools=[WEATHER], tool_choice="none")).json()
    assert off["choices"][0]["finish_reason"] in {"stop", "length"}
    assert "tool_calls" not in off["choices"][0]["message"]


def test_streamed_tool_call_arguments_join_up(start: Start) -> None:
    _, client = start()
    plain = client.post("/chat/completions", json=chat(tools=[WEATHER])).json()
    chunks = [
        orjson.loads(d)
        for d in events(
            client.post("/chat/completions", json=chat(tools=[WEATHER], stream=True)).text
        )[:-1]
    ]
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    expected = plain["choices"][0]["message"]["tool_calls"][0]
    assert calls[0]["id"] == expected["id"]
    assert calls[0]["function"]["name"] == "get_weather"
    assert "".join(tc["function"]["arguments"] for tc in calls) == expected["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        ([], "auto", "tools"),
        ([{"type": "function", "function": {}}], "auto", "tools[0]"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    ],
)
def test_bad_tools_are_400(start: Start, tools: list[Any], choice: Any, param: str) -> None:
    _, client = start()
    response = client.post("/chat/completions", json=chat(tools=tools, tool_choice=choice))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def test_image_parts_from_urls_and_data_urls_count_tokens(start: Start) -> None:
    _, client = start()
    data_url = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    text_only = client.post("/chat/completions", json=chat([{"type": "text", "text": "hi"}])).json()
    both = client.post(
        "/chat/completions",
        json=chat(
            [
                {"type": "text", "text": "hi"},
                image_part("https://example.com/a.jpg"),
                image_part(data_url),
            ]
        ),
    ).json()
    assert both["usage"]["prompt_tokens"] == text_only["usage"]["prompt_tokens"] + 2 * IMAGE_TOKENS


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,@@@",
        "data:image/png;base64,abc",
        "data:text/plain;base64,aGk=",
        "ftp://x/y.png",
        "a.png",
    ],
)
def test_malformed_image_urls_are_400(start: Start, url: str) -> None:
    _, client = start()
    response = client.post(
        "/chat/completions", json=chat([{"type": "text", "text": "hi"}, image_part(url)])
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[1].image_url"
