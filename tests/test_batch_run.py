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
