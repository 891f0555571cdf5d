"""Batch mode end to end against the fake's files and batches routes."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from pipeline.cli import main
from pipeline.fake import FakeServer
from tests.helpers import REPO, FakeFactory, Reviews, make_job, write_job

FAST = {"batch_time_scale": 0.00005}  # an hour of batch time in 0.18 s
BATCH = {"enabled": True, "poll_interval_s": 0.05, "max_poll_interval_s": 0.2}


def batch_job(
    input_path: Path, server: FakeServer, output: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    job = make_job(input_path, server.base_url, output, **sections)
    job["batch"] = {**BATCH, **job.get("batch", {})}
    return job


def stats(server: FakeServer) -> dict[str, Any]:
    return httpx.get(server.base_url.rsplit("/", 1)[0] + "/stats").json()


def run(tmp_path: Path, job: dict[str, Any], *args: str) -> int:
    return main(["run", str(write_job(tmp_path, job)), *args])


def test_batch_run_writes_every_row_once(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST)
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(30), server, output, batch={"max_requests_per_file": 12})
    assert run(tmp_path, job) == 0
    frame = pl.read_parquet(output)
    assert frame.height == 30
    assert frame["status"].to_list() == ["ok"] * 30
    assert frame["id"].to_list() == [f"r{i:06d}" for i in range(30)]
    assert frame["batch_id"].null_count() == 0
    assert frame["batch_id"].n_unique() == 3
    seen = stats(server)["batches"]
    assert seen["batches_created"] == 3
    assert set(seen["lines_by_custom_id"].values()) == {1}
    assert len(seen["lines_by_request"]) == 30
    # collected batches leave no files behind (providers cap them: Azure at 500)
    assert httpx.get(server.base_url + "/files").json()["data"] == []
    assert seen["files_deleted"] == 6  # 3 inputs, 3 outputs


def lines_completed_once(server: FakeServer) -> dict[str, Any]:
    """The fake's batch counters, after checking no line body was completed twice."""
    seen = stats(server)["batches"]
    assert set(seen["lines_by_request"].values()) <= {1}
    assert set(seen["lines_by_custom_id"].values()) <= {1}
    return seen


def test_expired_batch_lines_finish_in_a_resubmitted_one(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST, batch_expire_share=0.5)
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(16), server, output, batch={"max_resubmits": 5})
    assert run(tmp_path, job) == 0
    frame = pl.read_parquet(output)
    assert frame["status"].to_list() == ["ok"] * 16
    # half of the lines expire each time: 16 -> 8 -> 4 -> 2 -> 1
    assert frame["batch_id"].n_unique() == 5
    seen = lines_completed_once(server)
    assert len(seen["lines_by_request"]) == 16


def test_expired_lines_beyond_max_resubmits_are_error_rows(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST, batch_expire_share=0.5)
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(8), server, output, batch={"max_resubmits": 1})
    assert run(tmp_path, job) == 0
    frame = pl.read_parquet(output)
    assert frame.filter(pl.col("status") == "ok").height == 6  # 4, then 2 of the other 4
    errors = frame.filter(pl.col("status") == "error")
    assert errors["error_type"].to_list() == ["batch_expired", "batch_expired"]
    assert errors["batch_id"].to_list() == [None, None]
    assert "after 1 resubmits" in errors["error_message"][0]


def test_faulty_output_files_are_joined_on_custom_id(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(
        **FAST,
        batch_shuffle=True,
        batch_string_body_rate=0.5,
        batch_drop_line_rate=0.2,
        batch_error_line_rate=0.1,
        batch_timeout_line_rate=0.1,
        fault_seed=3,
    )
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(40), server, output, batch={"max_resubmits": 10})
    assert run(tmp_path, job) == 0
    frame = pl.read_parquet(output)
    assert frame["id"].to_list() == [f"r{i:06d}" for i in range(40)]
    errors = frame.filter(pl.col("status") == "error")
    assert set(errors["error_type"].to_list()) == {"server_error"}
    assert set(errors["http_status"].to_list()) == {500}
    ok = frame.filter(pl.col("status") == "ok")
    assert ok.height + errors.height == 40
    assert ok["content"].null_count() == 0
    assert frame["possibly_billed_attempts"].sum() > 0  # request_timeout lines count
    lines_completed_once(server)
    # the same content as live mode: joined by custom_id, never by position
    live_out = tmp_path / "live.parquet"
    live = make_job(reviews(40), fake_server().base_url, live_out)
    assert main(["run", str(write_job(tmp_path, live, "live.toml"))]) == 0
    by_id = dict(zip(*pl.read_parquet(live_out).select("id", "content"), strict=True))
    assert all(by_id[i] == c for i, c in zip(*ok.select("id", "content"), strict=True))


def test_a_failed_batch_names_the_providers_error_and_leaves_its_lines_for_the_next_run(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST, batch_fail_rate=0.5, fault_seed=1)
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(12), server, output, batch={"max_requests_per_file": 4})
    codes = [run(tmp_path, job) for _ in range(6)]
    assert codes[0] == 4
    assert 0 in codes
    frame = pl.read_parquet(output)
    assert frame["status"].to_list() == ["ok"] * 12
    lines_completed_once(server)


def test_token_limit_exceeded_waits_and_splits(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST, batch_token_limit=700)
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(20), server, output, batch={"max_requests_per_file": 10})
    assert run(tmp_path, job) == 0
    frame = pl.read_parquet(output)
    assert frame["status"].to_list() == ["ok"] * 20
    seen = lines_completed_once(server)
    assert seen["batches_created"] > 2  # one failed with token_limit_exceeded, then smaller files
    assert len(seen["lines_by_request"]) == 20


def test_json_mode_reasks_go_into_follow_up_batches(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST, invalid_json_rate=0.4, fault_seed=5)
    output = tmp_path / "out.parquet"
    request = {"response_format": "json_object", "json_retries": 2, "max_tokens": 400}
    job = batch_job(reviews(20), server, output, request=request)
    assert run(tmp_path, job) == 0
    frame = pl.read_parquet(output)
    assert frame.height == 20
    asked_again = frame.filter(pl.col("json_attempts") > 1)
    assert asked_again.height > 0
    assert frame["attempts"].to_list() == frame["json_attempts"].to_list()
    assert frame.filter(pl.col("status") == "ok")["parsed_json"].null_count() == 0
    # usage adds up every answer of a row; the seed is the last re-ask's
    once = frame.filter(pl.col("json_attempts") == 1)
    assert asked_again["prompt_tokens"].min() > once["prompt_tokens"].max()
    assert not set(asked_again["seed"]) & set(once["seed"])
    lines_completed_once(server)


def test_no_wait_exits_7_until_the_output_is_complete(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(batch_time_scale=0.0002)  # a batch takes 0.72 s
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(10), server, output)
    assert run(tmp_path, job, "--no-wait") == 7
    assert not output.exists()
    assert run(tmp_path, job, "--no-wait") == 7  # still running: nothing submitted again
    deadline = time.monotonic() + 10
    code = 7
    while code == 7 and time.monotonic() < deadline:
        time.sleep(0.3)
        code = run(tmp_path, job, "--no-wait")
    assert code == 0
    assert pl.read_parquet(output).height == 10
    assert lines_completed_once(server)["batches_created"] == 1
    assert run(tmp_path, job, "--no-wait") == 0  # already complete


def test_no_wait_needs_batch_mode(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server()
    job = make_job(reviews(3), server.base_url, tmp_path / "out.parquet")
    assert run(tmp_path, job, "--no-wait") == 2


def test_live_then_batch_then_live_on_one_output(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST)
    output = tmp_path / "out.parquet"
    live = make_job(reviews(30), server.base_url, output)
    live["batch"] = {**BATCH, "enabled": False}
    assert run(tmp_path, live, "--limit", "10") == 0
    assert run(tmp_path, live, "--limit", "20", "--batch") == 0
    assert run(tmp_path, live) == 0
    frame = pl.read_parquet(output)
    assert frame["id"].to_list() == [f"r{i:06d}" for i in range(30)]
    assert frame["status"].to_list() == ["ok"] * 30
    batched = frame["batch_id"].is_not_null().to_list()
    assert batched == [False] * 10 + [True] * 10 + [False] * 10
    seen = stats(server)
    live_bodies = set(seen["completions_by_request"])
    batch_bodies = set(seen["batches"]["lines_by_request"])
    assert len(live_bodies) == 20
    assert len(batch_bodies) == 10
    assert not live_bodies & batch_bodies  # nothing asked twice across modes
    assert set(frame["request_hash"]) == live_bodies | batch_bodies  # the same hash in both modes


def test_demo_gives_the_same_output_live_and_in_batch_mode(tmp_path: Path) -> None:
    """Apart from batch_id, timestamps, latency, cost and the live retries' attempts."""
    demo = (REPO / "jobs" / "demo.toml").read_text()
    demo = demo.replace(
        'path = "data/reviews.parquet"', f'path = "{REPO / "data/reviews.parquet"}"'
    )
    demo += "\n[batch]\npoll_interval_s = 0.05\nmax_poll_interval_s = 0.2\n"
    path = tmp_path / "demo.toml"
    path.write_text(demo)
    live, batch = tmp_path / "live.parquet", tmp_path / "batch.parquet"
    assert main(["run", str(path), "--limit", "120", "--output", str(live)]) == 0
    assert main(["run", str(path), "--limit", "120", "--output", str(batch), "--batch"]) == 0
    same = [
        "id", "status", "content", "finish_reason", "model", "prompt_tokens",
        "completion_tokens", "total_tokens", "cached_tokens", "seed", "request_hash",
        "error_type", "system_fingerprint", "response_id", "product_id", "stars",
    ]  # fmt: skip
    live_frame, batch_frame = pl.read_parquet(live), pl.read_parquet(batch)
    assert live_frame.select(same).equals(batch_frame.select(same))
    assert batch_frame["batch_id"].null_count() == 0
    assert batch_frame["cost_usd"].sum() == pytest.approx(live_frame["cost_usd"].sum() / 2)


def test_batch_status_and_cancel(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server(batch_time_scale=0.0007)  # an hour in 2.5 s: running while we look
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(10), server, output, batch={"max_requests_per_file": 5})
    path = write_job(tmp_path, job)
    assert main(["batch", "status", str(path)]) == 0
    assert "no batches submitted" in capsys.readouterr().out
    assert main(["run", str(path), "--no-wait"]) == 7
    capsys.readouterr()
    assert main(["batch", "status", str(path)]) == 0
    status = capsys.readouterr().out.splitlines()
    assert len(status) == 2
    assert all(
        re.search(r" (validating|in_progress)  5 lines, \d completed, 0 failed  created ", s)
        for s in status
    )
    time.sleep(0.5)  # some lines done (the fake answers a share by time)
    assert main(["batch", "cancel", str(path)]) == 0
    assert all(" cancelling " in line for line in capsys.readouterr().out.splitlines())
    assert main(["run", str(path)]) == 4  # collects what finished; stops: batches were cancelled
    assert "was cancelled" in capsys.readouterr().err
    assert main(["run", str(path)]) == 0  # the rest goes into new batches
    frame = pl.read_parquet(output)
    assert frame["status"].to_list() == ["ok"] * 10
    assert frame["batch_id"].n_unique() >= 2  # the cancelled batches' finished lines, and new ones
    seen = lines_completed_once(server)
    assert seen["batches_cancelled"] == 2


def test_a_batch_api_refusal_stops_the_run_in_one_line(
    tmp_path: Path,
    fake_server: FakeFactory,
    reviews: Reviews,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = fake_server(**FAST, api_key="sk-right-key-000")
    monkeypatch.setenv("TEST_KEY", "sk-wrong-key-111")
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(4), server, output, endpoint={"api_key_env": "TEST_KEY"})
    assert run(tmp_path, job) == 4
    err = capsys.readouterr().err
    assert "stopped: the Batch API failed: HTTP 401: POST /files: Incorrect API key" in err
    assert "sk-wrong-key-111" not in err
    assert "Traceback" not in err


def test_the_extraction_example_runs_in_batch_mode(tmp_path: Path) -> None:
    """JSON Schema mode: typed ``parsed`` column; invalid or mismatching answers re-asked."""
    text = (REPO / "jobs" / "extract_reviews.toml").read_text()
    text = text.replace('"data/', f'"{REPO}/data/').replace(
        '"jobs/schemas', f'"{REPO}/jobs/schemas'
    )
    path = tmp_path / "extract.toml"
    path.write_text(text + "\n[batch]\npoll_interval_s = 0.05\nmax_poll_interval_s = 0.2\n")
    output = tmp_path / "out.parquet"
    assert main(["run", str(path), "--batch", "--limit", "60", "--output", str(output)]) == 0
    frame = pl.read_parquet(output)
    assert frame.height == 60
    assert isinstance(frame.schema["parsed"], pl.Struct)
    assert frame.filter(pl.col("status") == "ok")["parsed"].null_count() == 0
    assert frame["json_attempts"].max() > 1
    assert frame["batch_id"].n_unique() > 1  # follow-up batches for the re-asks
