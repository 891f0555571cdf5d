"""End to end: streaming, n > 1, tools, images, several models, per-row values, over loopback."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from pipeline.fake import FakeServer
from pipeline.results import OPTIONAL_COLUMNS, OUTPUT_COLUMNS
from tests.helpers import FakeFactory, Reviews, make_job, run_job, write_jsonl

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def bodies(server: FakeServer) -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in server.stats.requests]


def test_plain_output_keeps_fingerprint_and_id_and_no_optional_columns(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server()
    df = run_job(tmp_path, make_job(reviews(5), server.base_url, tmp_path / "out.parquet"))
    assert df.columns == [*OUTPUT_COLUMNS, "product_id"]
    assert set(df["system_fingerprint"]) == {"fp_fake0001"}
    assert df["response_id"].str.starts_with("chatcmpl-").all()
    assert df["response_id"].n_unique() == 5


def test_streaming_gives_the_same_answers_with_usage_and_ttft(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(record_requests=True, latency_s=0.01)
    source = reviews(20)
    plain = run_job(
        tmp_path, make_job(source, server.base_url, tmp_path / "plain.parquet"), name="plain.toml"
    )
    streamed = run_job(
        tmp_path,
        make_job(source, server.base_url, tmp_path / "stream.parquet", request={"stream": True}),
        name="s.toml",
    )

    assert streamed["status"].unique().to_list() == ["ok"]
    assert streamed.columns == [*OUTPUT_COLUMNS, "ttft_ms", "product_id"]
    for column in (
        "content",
        "finish_reason",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "seed",
    ):
        assert streamed[column].to_list() == plain[column].to_list(), column
    assert streamed["ttft_ms"].null_count() == 0
    assert (streamed["ttft_ms"] >= 10).all()  # the fake waits 10 ms before the first event
    assert (streamed["ttft_ms"] <= streamed["latency_ms"]).all()
    assert set(streamed["system_fingerprint"]) == {"fp_fake0001"}
    sent = bodies(server)[20:]
    assert all(b["stream"] is True and b["stream_options"] == {"include_usage": True} for b in sent)


def test_streams_cut_in_the_middle_are_retried(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(stream_cut_rate=0.3, fault_seed=4)
    df = run_job(
        tmp_path,
        make_job(reviews(40), server.base_url, tmp_path / "out.parquet", request={"stream": True}),
    )

    assert df["status"].unique().to_list() == ["ok"]
    assert server.stats.cut > 0
    assert df["attempts"].sum() == server.stats.received == 40 + server.stats.cut
    assert df["prompt_tokens"].null_count() == 0


def test_a_stream_that_always_ends_early_is_a_connection_error(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(stream_cut_rate=1.0)
    job = make_job(
        reviews(3),
        server.base_url,
        tmp_path / "out.parquet",
        request={"stream": True},
        retry={"max_attempts": 2},
    )
    df = run_job(tmp_path, job)

    assert df["error_type"].unique().to_list() == ["connection"]
    assert df["attempts"].unique().to_list() == [2]
    assert df["error_message"].str.contains("stream ended early").all()
    assert df["model"].unique().to_list() == ["gpt-4o-mini"]  # the model asked for, on error rows


def test_n_keeps_every_choice(tmp_path: Path, fake_server: FakeFactory, reviews: Reviews) -> None:
    server = fake_server()
    df = run_job(
        tmp_path,
        make_job(
            reviews(6), server.base_url, tmp_path / "out.parquet", request={"params": {"n": 3}}
        ),
    )

    assert df.columns == [*OUTPUT_COLUMNS, "choices", "product_id"]
    assert df["choices"].list.len().to_list() == [3] * 6
    for row in df.iter_rows(named=True):
        assert row["content"] == row["choices"][0]
        assert len(set(row["choices"])) == 3


def test_tools_are_sent_and_tool_calls_kept(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(record_requests=True)
    job = make_job(
        reviews(4),
        server.base_url,
        tmp_path / "out.parquet",
        request={"tools": [WEATHER], "tool_choice": "required"},
    )
    df = run_job(tmp_path, job)

    assert df.columns == [*OUTPUT_COLUMNS, "tool_calls", "product_id"]
    assert df["status"].unique().to_list() == ["ok"]
    assert df["finish_reason"].unique().to_list() == ["tool_calls"]
    assert df["content"].null_count() == 4
    for calls in df["tool_calls"].to_list():
        [call] = calls
        assert call["name"] == "get_weather"
        assert call["id"].startswith("call_")
        assert set(json.loads(call["arguments"])) == {"city"}
    assert all(b["tools"] == [WEATHER] and b["tool_choice"] == "required" for b in bodies(server))


def test_streamed_tool_calls(tmp_path: Path, fake_server: FakeFactory, reviews: Reviews) -> None:
    server = fake_server()
    job = make_job(
        reviews(3),
        server.base_url,
        tmp_path / "out.parquet",
        request={"tools": [WEATHER], "stream": True},
    )
    df = run_job(tmp_path, job)

    assert df.columns == [*OUTPUT_COLUMNS, "tool_calls", "ttft_ms", "product_id"]
    assert [calls[0]["name"] for calls in df["tool_calls"].to_list()] == ["get_weather"] * 3
    assert df["ttft_ms"].null_count() == 0


def test_images_from_urls_and_files(tmp_path: Path, fake_server: FakeFactory) -> None:
    server = fake_server(record_requests=True)
    picture = tmp_path / "cat.jpg"
    picture.write_bytes(b"\xff\xd8\xff fake jpeg")
    source = tmp_path / "images.jsonl"
    rows = [
        {"id": "url", "text": "What is this?", "image": "https://example.com/dog.png"},
        {"id": "file", "text": "And this?", "image": str(picture)},
        {"id": "gone", "text": "And this?", "image": str(tmp_path / "missing.png")},
    ]
    write_jsonl(source, rows)
    job = make_job(
        source,
        server.base_url,
        tmp_path / "out.parquet",
        input={"id_column": "id", "keep_columns": []},
    )
    job["request"].update(image_column="image", image_dir=str(tmp_path))
    df = run_job(tmp_path, job)

    assert df["status"].to_list() == ["ok", "ok", "error"]
    assert df["error_type"][2] == "bad_input"
    assert (
        df["error_message"][2]
        == f"{source}: line 3: image file not found: {tmp_path / 'missing.png'}"
    )
    sent = {
        b["messages"][0]["content"][0]["text"]: b["messages"][0]["content"][1]
        for b in bodies(server)
    }
    assert sent["What is this?"] == {
        "type": "image_url",
        "image_url": {"url": "https://example.com/dog.png"},
    }
    data_url = "data:image/jpeg;base64," + base64.b64encode(picture.read_bytes()).decode()
    assert sent["And this?"]["image_url"]["url"] == data_url
    assert df["prompt_tokens"][0] > 85  # the fake charges for the image


def test_two_models_give_one_row_each_in_input_then_model_order(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(record_requests=True)
    job = make_job(reviews(5), server.base_url, tmp_path / "out.parquet")
    del job["request"]["model"]
    job["request"]["models"] = ["openai/gpt-4o-mini", "anthropic/claude-3-opus"]
    df = run_job(tmp_path, job)

    assert df.height == 10
    assert df["id"].to_list() == [f"r{i:06d}" for i in range(5) for _ in range(2)]
    assert df["model"].to_list() == ["openai/gpt-4o-mini", "anthropic/claude-3-opus"] * 5
    by_row = df.group_by("id").agg(
        pl.col("seed").n_unique(), pl.col("request_hash").n_unique(), pl.col("content").n_unique()
    )
    assert by_row["seed"].to_list() == [1] * 5
    assert by_row["request_hash"].to_list() == [2] * 5
    assert df["product_id"].to_list()[:4] == ["P-0", "P-0", "P-1", "P-1"]
    assert server.stats.received == 10


def test_model_and_seed_from_columns(tmp_path: Path, fake_server: FakeFactory) -> None:
    server = fake_server(record_requests=True)
    source = tmp_path / "rows.jsonl"
    rows = [
        {"id": "a", "text": "one", "model": "m-small", "seed": 11},
        {"id": "b", "text": "two", "model": "m-large", "seed": 22},
        {"id": "c", "text": "three", "model": None, "seed": 33},
    ]
    write_jsonl(source, rows)
    job = make_job(
        source,
        server.base_url,
        tmp_path / "out.parquet",
        input={"id_column": "id", "keep_columns": []},
    )
    del job["request"]["model"]
    job["request"].update(model_column="model", seed_column="seed")
    df = run_job(tmp_path, job)

    assert df["model"].to_list() == ["m-small", "m-large", None]
    assert df["seed"].to_list()[:2] == [11, 22]
    assert df["error_message"][2] == f"{source}: line 3: model column 'model' is null"
    assert sorted((b["model"], b["seed"]) for b in bodies(server)) == [
        ("m-large", 22),
        ("m-small", 11),
    ]


def test_header_values_from_the_row(tmp_path: Path, fake_server: FakeFactory) -> None:
    server = fake_server(record_requests=True)
    source = tmp_path / "rows.jsonl"
    rows = [{"id": "a", "text": "one", "team": "red"}, {"id": "b", "text": "two", "team": None}]
    write_jsonl(source, rows)
    job = make_job(
        source,
        server.base_url,
        tmp_path / "out.parquet",
        input={"id_column": "id", "keep_columns": []},
        endpoint={
            "headers": {
                "x-trace-id": "{id}",
                "x-meta": '{{"team": "{team}"}}',
                "x-portkey-config": '{"retry": {"attempts": 3}}',
            }
        },
    )
    df = run_job(tmp_path, job)

    assert df["status"].to_list() == ["ok", "error"]
    assert (
        "[endpoint] headers.x-meta: template placeholder {team} has no value in this row"
        in df["error_message"][1]
    )
    [sent] = server.stats.requests
    assert sent.headers["x-trace-id"] == "a"
    assert sent.headers["x-meta"] == '{"team": "red"}'
    assert (
        sent.headers["x-portkey-config"] == '{"retry": {"attempts": 3}}'
    )  # no placeholder: as written


def test_optional_column_names_are_reserved() -> None:
    assert set(OPTIONAL_COLUMNS) == {"choices", "tool_calls", "ttft_ms", "batch_id"}
