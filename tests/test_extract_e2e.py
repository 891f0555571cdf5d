"""End to end: structured extraction (JSON mode) against the fake server over loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pyarrow.parquet as pq
import pytest
from jsonschema import Draft202012Validator

from pipeline.cli import main
from pipeline.errors import InputError, JobError
from pipeline.requests import derive_seed, reask_seed
from pipeline.results import OUTPUT_COLUMNS
from pipeline.runner import plan_run
from pipeline.spec import parse_job
from tests.helpers import REPO, FakeFactory, make_job, run_job, write_job

ANSWER_ERRORS = {"invalid_json", "schema_mismatch", "truncated"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "confidence": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "verified": {"type": "boolean"},
        "product": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "price": {"type": ["number", "null"]},
                "features": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"label": {"type": "string"}, "good": {"type": "boolean"}},
                        "required": ["label", "good"],
                    },
                },
            },
            "required": ["name", "price", "features"],
        },
        "note": {"type": "string"},
        "extra": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    },
    "required": ["sentiment", "score", "confidence", "tags", "verified", "product"],
}


def schema_file(tmp_path: Path, schema: dict[str, Any] = SCHEMA, name: str = "review.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(schema), encoding="utf-8")
    return path


def test_ten_percent_invalid_json_with_two_retries_ends_almost_all_ok(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(invalid_json_rate=0.10, error_503_rate=0.03, fault_seed=11)
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(1000), server.base_url, out,
        request={"json_schema": str(schema_file(tmp_path)), "json_retries": 2, "max_tokens": 400},
        limits={"concurrency": 64},
    )  # fmt: skip
    df = run_job(tmp_path, job)

    assert df.height == 1000
    ok = df.filter(pl.col("status") == "ok")
    errors = df.filter(pl.col("status") == "error")
    assert ok.height >= 990, df.group_by("status", "error_type").len()
    # every failure is classified and keeps its raw content
    assert set(errors["error_type"].to_list()) <= ANSWER_ERRORS
    assert errors["content"].null_count() == 0
    assert errors["parsed"].null_count() == errors.height
    # every ok row's content satisfies the schema and its parsed value is there
    validator = Draft202012Validator(SCHEMA)
    assert all(validator.is_valid(orjson.loads(content)) for content in ok["content"])
    assert ok["parsed"].null_count() == 0
    # re-asks are counted apart from transport retries, and both reach the output
    assert df["json_attempts"].dtype == pl.Int32
    assert set(df["json_attempts"].unique()) <= {1, 2, 3}
    assert (df["attempts"] >= df["json_attempts"]).all()
    assert df.filter(pl.col("attempts") > pl.col("json_attempts")).height > 0  # 503s retried
    reasked = df.filter(pl.col("json_attempts") > 1)
    assert 60 <= reasked.height <= 150
    assert int(df["attempts"].sum()) == server.stats.received
    assert server.stats.invalid_json == int((df["json_attempts"] - 1).sum()) + errors.height
    # the seed recorded is the one of the final answer
    for row in df.iter_rows(named=True):
        assert row["seed"] == reask_seed(7, row["id"], row["json_attempts"] - 1)
    assert reasked["seed"][0] != derive_seed(7, reasked["id"][0])


def test_nested_schema_reads_back_typed_in_polars(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(30),
        server.base_url,
        out,
        request={"json_schema": str(schema_file(tmp_path)), "max_tokens": 400},
    )
    df = run_job(tmp_path, job)

    assert df["status"].unique().to_list() == ["ok"]
    assert df["json_attempts"].unique().to_list() == [1]
    assert df.columns == [*OUTPUT_COLUMNS, "parsed", "json_attempts", "product_id"]
    flat = df.unnest("parsed")
    assert dict(
        flat.select("sentiment", "score", "confidence", "tags", "verified", "note", "extra").schema
    ) == {
        "sentiment": pl.String,
        "score": pl.Int64,
        "confidence": pl.Float64,
        "tags": pl.List(pl.String),
        "verified": pl.Boolean,
        "note": pl.String,
        "extra": pl.String,
    }
    assert flat.schema["product"] == pl.Struct(
        {
            "name": pl.String,
            "price": pl.Float64,
            "features": pl.List(pl.Struct({"label": pl.String, "good": pl.Boolean})),
        }
    )
    features = flat.unnest("product").explode("features").unnest("features")
    assert features["good"].dtype == pl.Boolean
    assert flat["score"].is_between(1, 5).all()
    assert set(flat["sentiment"]) <= {"positive", "neutral", "negative"}
    assert flat["note"].null_count() > 0  # optional and left out by some answers
    # required and non-null in the schema: non-nullable in the Parquet schema
    parsed = pq.read_schema(out).field("parsed").type
    assert not parsed.field("score").nullable
    assert parsed.field("note").nullable
    assert parsed.field("product").type.field("price").nullable
    # the typed values are the answer's values
    for content, value in zip(df["content"], df["parsed"], strict=True):
        answer = orjson.loads(content)
        assert value["score"] == answer["score"]
        assert value["tags"] == answer["tags"]
        assert value["product"]["features"] == answer["product"]["features"]
        assert value["note"] == answer.get("note")
        assert value["extra"] == (None if "extra" not in answer else json.dumps(answer["extra"]))


def test_json_object_without_schema_keeps_normalised_json_text(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(record_requests=True)
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(10),
        server.base_url,
        out,
        request={"response_format": "json_object", "max_tokens": 200},
    )
    df = run_job(tmp_path, job)

    assert df.columns == [*OUTPUT_COLUMNS, "parsed_json", "json_attempts", "product_id"]
    assert df["status"].unique().to_list() == ["ok"]
    for content, text in zip(df["content"], df["parsed_json"], strict=True):
        assert json.loads(text) == json.loads(content)
        assert text == orjson.dumps(json.loads(content), option=orjson.OPT_SORT_KEYS).decode()
    assert json.loads(server.stats.requests[0].body)["response_format"] == {"type": "json_object"}


def test_truncated_answers_are_re_asked_then_classified(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(record_requests=True)
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(5), server.base_url, out,
        request={"json_schema": str(schema_file(tmp_path)), "strict": False, "json_retries": 1, "max_tokens": 8},
    )  # fmt: skip
    log_file = tmp_path / "events.jsonl"
    assert main(["run", str(write_job(tmp_path, job)), "--log-file", str(log_file)]) == 0
    df = pl.read_parquet(out)

    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    reasks = [e for e in events if e["event"] == "request.json_retry"]
    assert len(reasks) == 5
    assert {"id", "json_attempt", "error_type", "error", "seed"} <= reasks[0].keys()
    assert {(e["json_attempt"], e["error_type"]) for e in reasks} == {(1, "truncated")}
    assert {e["seed"] for e in reasks} == {derive_seed(7, f"r{i:06d}") for i in range(5)}
    assert [e["json_reasks"] for e in events if e["event"] == "job.finished"] == [5]
    assert df["error_type"].unique().to_list() == ["truncated"]
    assert df["finish_reason"].unique().to_list() == ["length"]
    assert df["json_attempts"].unique().to_list() == [2]
    assert df["attempts"].unique().to_list() == [2]
    assert df["content"].null_count() == 0
    assert df["completion_tokens"].unique().to_list() == [16]  # both answers are counted
    body = json.loads(server.stats.requests[0].body)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "review", "schema": SCHEMA, "strict": False},
    }
    seeds = sorted(json.loads(r.body)["seed"] for r in server.stats.requests)
    expected = sorted(reask_seed(7, f"r{i:06d}", k) for i in range(5) for k in (0, 1))
    assert seeds == expected


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read"),
        ("{oops", "is not valid JSON"),
        ('{"type": "objekt"}', "is not a valid JSON Schema"),
        ('{"$ref": "other.json#/x"}', "is not local"),
    ],
)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_schema_file_errors_are_one_line_exit_2_and_send_nothing(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Callable[[int], Path],
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    says: str,
    command: str,
) -> None:
    server = fake_server()
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    out = tmp_path / "out.parquet"
    job = write_job(
        tmp_path, make_job(reviews(5), server.base_url, out, request={"json_schema": str(path)})
    )

    assert main([command, str(job)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: [request] json_schema: ")
    assert says in err
    assert server.stats.received == 0
    assert not out.exists()


def test_json_mode_columns_cannot_be_kept_input_columns(
    reviews: Callable[[int], Path], tmp_path: Path
) -> None:
    job = make_job(
        reviews(3), "fake", tmp_path / "o.parquet", request={"response_format": "json_object"}
    )
    job["input"]["keep_columns"] = ["json_attempts"]
    with pytest.raises(JobError, match="'json_attempts' is already an output column"):
        plan_run(parse_job(job))
    job["request"] = {"model": "m"}
    with pytest.raises(
        InputError, match="column 'json_attempts' not found"
    ):  # no clash without JSON mode
        plan_run(parse_job(job))


def test_a_job_without_json_mode_keeps_todays_columns(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(record_requests=True, invalid_json_rate=1.0)
    out = tmp_path / "out.parquet"
    df = run_job(tmp_path, make_job(reviews(5), server.base_url, out))
    assert df.columns == [*OUTPUT_COLUMNS, "product_id"]
    assert df["status"].unique().to_list() == ["ok"]
    assert all(b"response_format" not in r.body for r in server.stats.requests)


def test_extract_reviews_example_runs_as_a_subprocess(tmp_path: Path) -> None:
    out = tmp_path / "reviews.parquet"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "run",
            "jobs/extract_reviews.toml",
            "--output",
            str(out),
            "--limit",
            "60",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    df = pl.read_parquet(out)
    assert df.height == 60
    assert df.filter(pl.col("status") == "ok").height >= 58
    flat = df.filter(pl.col("status") == "ok").unnest("parsed")
    assert flat.schema["rating"] == pl.Int64
    assert flat.schema["pros"] == pl.List(pl.String)
    assert flat.schema["product"] == pl.Struct(
        {"category": pl.String, "price_mentioned": pl.Boolean, "price_usd": pl.Float64}
    )
    assert flat.schema["would_buy_again"] == pl.Boolean


def test_rerun_reuses_re_asked_rows_by_their_first_request(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server(invalid_json_rate=0.3, fault_seed=4)
    out = tmp_path / "out.parquet"
    job = make_job(
        reviews(60), server.base_url, out,
        request={"json_schema": str(schema_file(tmp_path)), "json_retries": 3, "max_tokens": 400},
    )  # fmt: skip
    first = run_job(tmp_path, job)
    assert first.filter(pl.col("json_attempts") > 1).height > 0
    received = server.stats.received

    assert main(["run", str(write_job(tmp_path, job)), "--force"]) == 0

    assert server.stats.received == received
    assert pl.read_parquet(out).equals(first)


def test_a_changed_local_schema_is_not_reused(
    tmp_path: Path, fake_server: FakeFactory, reviews: Callable[[int], Path]
) -> None:
    server = fake_server()
    source = reviews(8)
    out = tmp_path / "out.parquet"
    first = {
        "type": "object",
        "properties": {"summary": {"type": "string"}},
        "required": ["summary"],
    }
    job = make_job(
        source, server.base_url, out,
        request={"response_format": "json_object", "json_schema": str(schema_file(tmp_path, first, "a.json")), "max_tokens": 400},
    )  # fmt: skip
    run_job(tmp_path, job)
    received = server.stats.received

    second = {
        "type": "object",
        "properties": {"keywords": {"type": "array", "items": {"type": "string"}}},
    }
    job["request"]["json_schema"] = str(schema_file(tmp_path, second, "b.json"))
    df = run_job(tmp_path, job)

    assert server.stats.received - received == 8  # the schema is not in the body, yet it changed
    assert df["parsed"].struct.fields == ["keywords"]
