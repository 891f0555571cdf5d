"""Batch mode's pure parts: lines, files, results, the journal, routes, prices, job keys."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.client.batches import BatchRoutes
from pipeline.cost import Price
from pipeline.errors import BadRequest, JobError, RateLimited, ServerError
from pipeline.records import Reply
from pipeline.runner.batch.journal import BatchJournal, Shard
from pipeline.runner.batch.lines import Unfinished, encode_line, line_result, split_lines
from pipeline.spec import parse_job
from tests.test_batch_run import main, write_job

COMPLETION = {
    "id": "c1",
    "model": "m",
    "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@pytest.mark.parametrize("body", [COMPLETION, orjson.dumps(COMPLETION).decode()])
def test_an_output_line_body_may_be_an_object_or_a_json_string(body: object) -> None:
    result = line_result({"custom_id": "1-0-x", "response": {"status_code": 200, "body": body}})
    assert isinstance(result, Reply)
    assert (result.content, result.usage.prompt_tokens) == ("hi", 3)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"response": {"status_code": 429, "body": {"error": {"message": "slow"}}}}, RateLimited),
        ({"response": {"status_code": 500, "body": {}}}, ServerError),
        ({"response": None, "error": {"code": "invalid_prompt", "message": "no"}}, BadRequest),
        ({"error": {"type": "server_error", "message": "no status_code"}}, BadRequest),
    ],
)
def test_error_lines_are_classified_like_live_errors(
    line: dict[str, object], expected: type
) -> None:
    assert isinstance(line_result(line), expected)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ({"code": "batch_expired", "message": "late"}, "batch_expired"),
        ({"type": "batch_cancelled", "message": "stopped"}, "batch_cancelled"),
        ({"code": "request_timeout"}, "request_timeout"),
    ],
)
def test_unfinished_lines_are_told_apart(error: dict[str, str], code: str) -> None:
    result = line_result({"custom_id": "1-0-x", "response": None, "error": error})
    assert isinstance(result, Unfinished)
    assert result.code == code


def test_a_line_carries_the_live_body_bytes_unchanged() -> None:
    body = b'{"messages":[{"content":"x","role":"user"}],"model":"m","seed":1}'
    line = encode_line("0-0-abc", "/v1/chat/completions", body)
    assert body in line
    assert orjson.loads(line)["body"] == orjson.loads(body)


@given(
    sizes=st.lists(st.integers(1, 50), max_size=60),
    max_lines=st.integers(1, 10),
    max_bytes=st.integers(20, 200),
)
def test_files_respect_both_limits_and_keep_every_line(
    sizes: list[int], max_lines: int, max_bytes: int
) -> None:
    lines = [(str(i), b"x" * size) for i, size in enumerate(sizes)]
    files = list(split_lines(lines, max_lines, max_bytes))
    assert [line for chunk in files for line in chunk] == lines
    for chunk in files:
        assert 1 <= len(chunk) <= max_lines
        assert len(chunk) == 1 or sum(len(b) for _, b in chunk) <= max_bytes


def test_the_journal_survives_a_torn_last_line(tmp_path: Path) -> None:
    journal = BatchJournal(tmp_path / "out.parquet")
    journal.intent(Shard(1, "d", "m", "f.jsonl", ["0-0-a", "1-0-b"], 5.0))
    journal.event("uploaded", 1, file_id="file-1")
    journal.event("created", 1, batch_id="batch-1")
    with journal.path.open("ab") as handle:
        handle.write(b'{"event": "collec')
    (shard,) = journal.load()
    assert (shard.file_id, shard.batch_id, shard.collected) == ("file-1", "batch-1", False)
    assert shard.custom_ids == ["0-0-a", "1-0-b"]
    journal.event("collected", 1)  # appended after the torn line was cut off
    (shard,) = journal.load()
    assert shard.collected


def test_azure_routes_and_deployment() -> None:
    azure = BatchRoutes.of("https://res.openai.azure.com/openai/deployments/gpt-4o-mini")
    assert azure == BatchRoutes(
        "https://res.openai.azure.com/openai/v1", "/chat/completions", "gpt-4o-mini"
    )
    assert BatchRoutes.of("https://api.openai.com/v1/") == BatchRoutes(
        "https://api.openai.com/v1", "/v1/chat/completions"
    )


def test_batch_prices_default_to_half_and_may_be_given() -> None:
    live = Price(input=0.2, cached_input=0.1, output=0.8)
    assert live.for_batch() == Price(input=0.1, cached_input=0.05, output=0.4)
    given_prices = Price(
        input=0.2, cached_input=0.1, output=0.8, batch_input=0.12, batch_output=0.3
    )
    assert (given_prices.for_batch().input, given_prices.for_batch().output) == (0.12, 0.3)


BASE = {
    "name": "t",
    "input": {"path": "x.parquet", "prompt_column": "text"},
    "request": {"model": "m"},
    "endpoint": {"base_url": "fake"},
}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"request": {"model": "m", "stream": True}}, "[request] stream: streaming cannot"),
        ({"batch": {"enabled": True, "completion_window": "1h"}}, "[batch] completion_window:"),
        ({"batch": {"max_requests_per_file": 50001}}, "[batch] max_requests_per_file:"),
        ({"batch": {"max_bytes_per_file": 200_000_001}}, "[batch] max_bytes_per_file:"),
        ({"batch": {"poll_interval_s": 0}}, "[batch] poll_interval_s:"),
        ({"batch": {"poll_interval_s": 60, "max_poll_interval_s": 30}}, "max_poll_interval_s"),
        ({"batch": {"max_resubmits": -1}}, "[batch] max_resubmits:"),
        ({"batch": {"wait": True}}, "[batch] wait: unknown key"),
        ({"limits": {"max_cost_usd": 5.0}}, "[limits] max_cost_usd: a budget cannot"),
        ({"endpoint": {"base_url": "fake", "headers": {"x-t": "{id}"}}}, "[endpoint] headers:"),
    ],
)
def test_batch_keys_are_validated(section: dict[str, dict[str, object]], message: str) -> None:
    job = {**BASE, **section}
    job.setdefault("batch", {}).setdefault("enabled", True)
    with pytest.raises(JobError) as error:
        parse_job(job, "job.toml")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_streaming_with_the_batch_flag_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    job = {
        **BASE,
        "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "text"},
        "request": {"model": "m", "stream": True},
    }
    assert main(["run", str(write_job(tmp_path, job)), "--batch"]) == 2
    err = capsys.readouterr().err
    assert "streaming cannot be used in batch mode" in err
    assert len(err.strip().splitlines()) == 1


def test_estimate_batch_shows_live_and_batch_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "a review"}\n' * 10)
    job = {
        **BASE,
        "input": {"path": str(tmp_path / "in.jsonl"), "prompt_column": "text"},
        "request": {"model": "my-model", "max_tokens": 100},
        "prices": {"my-model": {"input": 2.0, "output": 8.0, "batch_output": 3.0}},
    }
    assert main(["estimate", str(write_job(tmp_path, job)), "--batch"]) == 0
    out = capsys.readouterr().out
    assert "cost            ~$" in out
    assert "batch cost      ~$" in out
    assert "$1 in, $1 cached, $3 out per million tokens" in out


def test_the_progress_line_shows_batches_by_status() -> None:
    from pipeline.progress import render
    from pipeline.records import RunStats

    line = render(RunStats(total=10), note="batches 1 completed, 2 in_progress")
    assert line.endswith(" | batches 1 completed, 2 in_progress")
    assert "0/10" in line
