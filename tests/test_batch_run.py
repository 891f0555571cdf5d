"""Batch mode end to end against the fake's files and batches routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import polars as pl

from pipeline.cli import main
from pipeline.fake import FakeServer
from tests.helpers import FakeFactory, Reviews, make_job, write_job

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
