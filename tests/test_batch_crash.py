"""Batch mode after a crash: the journal and ``GET /batches`` find every submitted batch
again; nothing is submitted (or paid for) twice; unused uploads are deleted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import polars as pl

from pipeline.runner.batch import BatchJournal, journal_path
from pipeline.runner.batch.journal import Shard
from tests.helpers import REPO, FakeFactory, Reviews, write_job
from tests.test_batch_run import FAST, batch_job, lines_completed_once, run, stats


def test_a_batch_created_but_not_journaled_is_found_again(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(batch_time_scale=0.0005)  # an hour in 1.8 s: still running on re-run
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(20), server, output, batch={"max_requests_per_file": 7})
    assert run(tmp_path, job, "--no-wait") == 7
    journal = journal_path(output)
    kept = [line for line in journal.read_bytes().splitlines() if b'"event":"created"' not in line]
    journal.write_bytes(b"\n".join(kept) + b"\n")  # as if killed between create and journal
    assert run(tmp_path, job) == 0
    assert pl.read_parquet(output).height == 20
    seen = lines_completed_once(server)
    assert seen["batches_created"] == 3
    assert seen["files_deleted"] == 6  # only after collecting: 3 inputs, 3 outputs
    assert len(seen["lines_by_request"]) == 20


def test_a_file_uploaded_but_never_used_is_deleted(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST)
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(5), server, output)
    name = "test-00001-0123456789abcdef.jsonl"
    upload = httpx.post(
        server.base_url + "/files",
        files={"file": (name, b'{"custom_id": "0-0-0123456789abcdef"}\n')},
        data={"purpose": "batch"},
    ).json()
    orphan = Shard(1, "0123456789abcdef" * 2, "gpt-4o-mini", name, ["0-0-0123456789abcdef"], 0.0)
    BatchJournal(output).intent(orphan)  # killed between upload and its journal line
    assert run(tmp_path, job) == 0
    seen = lines_completed_once(server)
    assert seen["files_deleted"] == 3  # the orphan; then the batch's input and output
    assert seen["batches_created"] == 1
    files = httpx.get(server.base_url + "/files").json()["data"]
    assert upload["id"] not in [f["id"] for f in files]
    assert pl.read_parquet(output)["status"].to_list() == ["ok"] * 5


def test_kill_9_during_submission_and_polling_then_rerun(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    """Killed at random moments, re-run until done: every row once, no line completed twice."""
    server = fake_server(batch_time_scale=0.0003, batch_expire_share=0.0)
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(60), server, output, batch={"max_requests_per_file": 4})
    path = write_job(tmp_path, job)
    rng = random.Random(11)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(4):
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(path)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.7, 1.8))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    assert run(tmp_path, job) == 0
    frame = pl.read_parquet(output)
    assert frame["id"].to_list() == [f"r{i:06d}" for i in range(60)]
    assert frame["status"].to_list() == ["ok"] * 60
    seen = lines_completed_once(server)
    assert len(seen["lines_by_request"]) == 60
    created = [orjson.loads(line) for line in journal_path(output).read_bytes().splitlines()]
    batch_ids = [r["batch_id"] for r in created if r.get("event") == "created"]
    assert len(batch_ids) == len(set(batch_ids)) == seen["batches_created"]
    assert stats(server)["batches"]["batches_created"] >= 15


def test_sigint_while_polling_leaves_the_batches_running(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(batch_time_scale=0.0005)  # a batch takes 1.8 s
    output = tmp_path / "out.parquet"
    job = batch_job(reviews(10), server, output)
    path = write_job(tmp_path, job)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(path)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while stats(server)["batches"]["batches_created"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 130
    seen = stats(server)["batches"]
    assert (seen["batches_created"], seen["batches_cancelled"]) == (1, 0)
    assert run(tmp_path, job) == 0  # re-attaches to the running batch
    assert pl.read_parquet(output).height == 10
    assert lines_completed_once(server)["batches_created"] == 1


def test_two_outputs_of_one_job_find_only_their_own_batches(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    """Another {date} of the same job and input submits an identical file: the output's
    digest in the metadata tells them apart when re-attaching."""
    server = fake_server(batch_time_scale=0.0005)
    source = reviews(6)
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    job = batch_job(source, server, first)
    assert run(tmp_path, job, "--no-wait") == 7
    assert run(tmp_path, job, "--no-wait", "--output", str(second)) == 7
    journal = journal_path(second)
    kept = [line for line in journal.read_bytes().splitlines() if b'"created"' not in line]
    journal.write_bytes(b"\n".join(kept) + b"\n")
    assert run(tmp_path, job, "--output", str(second)) == 0
    assert run(tmp_path, job) == 0
    ids = {pl.read_parquet(p)["batch_id"].unique().item() for p in (first, second)}
    assert len(ids) == 2
    # two outputs ask the same lines once each (a new output is new work), in two batches
    seen = stats(server)["batches"]
    assert seen["batches_created"] == 2
    assert set(seen["lines_by_request"].values()) == {2}
