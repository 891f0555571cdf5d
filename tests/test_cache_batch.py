"""Batch mode and sharded runs read and write the same response cache as live runs
(real SQLite, the fake's Batch API routes with its time scale)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline.cache import ResponseCache, cache_stats, endpoint_identity
from pipeline.cli import main
from pipeline.fake import FakeServer, profile
from pipeline.manifest import read_manifest
from pipeline.records import ChatRequest, Reply
from pipeline.spec import EndpointSpec
from tests.helpers import FakeFactory, Reviews, make_job, run_job, write_job, write_parquet
from tests.test_batch_servers import batch_ready
from tests.test_servers import KEY, example_job, in_repo, pointed_at

FAST = {"batch_time_scale": 0.00005}  # an hour of batch time in 0.18 s
BATCH = {"poll_interval_s": 0.05, "max_poll_interval_s": 0.2}
JSON = {"response_format": "json_object", "max_tokens": 200, "json_retries": 4}
__all__ = ["in_repo"]  # the fixture, shared with the servers' tests
SAME = ["id", "content", "prompt_tokens", "completion_tokens", "request_hash", "seed"]


def _job(
    source: Path, server: FakeServer, out: Path, cache: Path, **sections: Any
) -> dict[str, Any]:
    job = make_job(source, server.base_url, out, **sections)
    job["request"].setdefault("temperature", 0.0)
    job["batch"] = {**BATCH, **job.get("batch", {})}
    job.setdefault("cache", {})["path"] = str(cache)
    return job


def _live(tmp_path: Path, job: dict[str, Any], out: Path) -> pl.DataFrame:
    job["output"]["path"] = str(out)
    return run_job(tmp_path, job)


def _batch(tmp_path: Path, job: dict[str, Any], out: Path) -> pl.DataFrame:
    job["output"]["path"] = str(out)
    return run_job(tmp_path, job, "--batch")


def _batches(server: FakeServer) -> dict[str, Any]:
    """The fake's Batch API counters (what its ``/stats`` shows under ``batches``)."""
    return server.batches.stats.to_dict()


def _lines(server: FakeServer) -> int:
    return sum(_batches(server)["lines_by_custom_id"].values())


def test_a_batch_run_after_a_live_one_submits_only_what_the_cache_lacks(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST)
    cache, source = tmp_path / "cache.sqlite", reviews(30)
    job = _job(source, server, tmp_path / "a.parquet", cache)
    live = _live(tmp_path, job, tmp_path / "a.parquet")
    assert server.stats.received == 30

    batch = _batch(tmp_path, job, tmp_path / "b.parquet")

    assert _batches(server)["batches_created"] == 0
    assert _lines(server) == 0
    assert server.stats.received == 30
    assert batch["cache_hit"].all()
    assert batch["status"].to_list() == ["ok"] * 30
    assert batch["cost_usd"].to_list() == [0.0] * 30
    assert batch["cached_cost_usd"].to_list() == live["cost_usd"].to_list()
    assert batch["batch_id"].null_count() == 30
    assert batch["attempts"].to_list() == [0] * 30
    for column in SAME:
        assert batch[column].to_list() == live[column].to_list(), column

    # two edited rows: one batch of exactly those two lines
    pl.read_parquet(source).with_columns(
        pl.when(pl.col("review_id").is_in(["r000003", "r000021"]))
        .then(pl.col("text") + " Edited.")
        .otherwise(pl.col("text"))
        .alias("text")
    ).write_parquet(source)
    edited = _batch(tmp_path, job, tmp_path / "c.parquet")
    assert _batches(server)["batches_created"] == 1
    assert _lines(server) == 2
    sent = edited.filter(~pl.col("cache_hit"))
    assert sent["id"].to_list() == ["r000003", "r000021"]
    assert sent["batch_id"].null_count() == 0
    assert edited["status"].to_list() == ["ok"] * 30

    # and those two answers are cached now: a third batch run submits nothing
    again = _batch(tmp_path, job, tmp_path / "d.parquet")
    assert again["cache_hit"].all()
    assert _batches(server)["batches_created"] == 1


def test_a_live_run_after_a_batch_one_sends_nothing_and_shows_the_batch_price(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server(**FAST)
    cache, source = tmp_path / "cache.sqlite", reviews(20)
    job = _job(source, server, tmp_path / "a.parquet", cache)
    batch = _batch(tmp_path, job, tmp_path / "a.parquet")
    assert _lines(server) == 20
    assert cache_stats(cache).entries == 20
    capsys.readouterr()
    received = server.stats.received  # the Batch API calls

    live = _live(tmp_path, job, tmp_path / "b.parquet")

    assert server.stats.received == received
    assert live["cache_hit"].all()
    assert live["cost_usd"].to_list() == [0.0] * 20
    # the original cost is what the batch paid (the batch price), not the live price
    assert live["cached_cost_usd"].to_list() == batch["cost_usd"].to_list()
    for column in SAME:
        assert live[column].to_list() == batch[column].to_list(), column
    assert "20 answers from the cache saved" in capsys.readouterr().out
    fresh = _live(tmp_path, {**job, "cache": {}}, tmp_path / "c.parquet")
    assert sum(live["cached_cost_usd"]) == pytest.approx(sum(fresh["cost_usd"]) / 2)


def test_batch_hits_count_in_the_summary_and_manifest(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews, capsys: pytest.CaptureFixture[str]
) -> None:
    server = fake_server(**FAST)
    cache, source = tmp_path / "cache.sqlite", reviews(12)
    job = _job(source, server, tmp_path / "a.parquet", cache)
    first = _batch(tmp_path, job, tmp_path / "a.parquet")
    capsys.readouterr()
    second = _batch(tmp_path, job, tmp_path / "b.parquet")
    assert second["cache_hit"].all()
    assert "12 answers from the cache saved" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "b.parquet")
    assert manifest is not None
    assert (manifest.cache_hits, manifest.requests_sent) == (12, 0)
    assert manifest.cache_saved_usd == pytest.approx(sum(first["cost_usd"]), abs=1e-6)


def test_json_mode_batch_and_live_share_answers_reached_by_reasks(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST, invalid_json_rate=0.4, fault_seed=3)
    cache, source = tmp_path / "cache.sqlite", reviews(30)
    job = _job(source, server, tmp_path / "a.parquet", cache, request=JSON)
    batch = _batch(tmp_path, job, tmp_path / "a.parquet")
    ok = batch["status"] == "ok"
    assert batch.filter(ok & (pl.col("json_attempts") > 1)).height >= 5
    failed = batch.filter(~ok).height
    assert failed < 3
    received = server.stats.received

    live = _live(tmp_path, job, tmp_path / "b.parquet")

    # only the rows that failed for good are sent again (each up to 5 times)
    assert server.stats.received - received <= failed * 5
    hits = live.filter(ok)
    assert hits["cache_hit"].all()
    for column in ("parsed_json", "json_attempts", "seed", "request_hash", "prompt_tokens"):
        assert hits[column].to_list() == batch.filter(ok)[column].to_list(), column
    assert hits["cached_cost_usd"].to_list() == pytest.approx(
        batch.filter(ok)["cost_usd"].to_list()
    )

    # and back: a batch run after the live one submits only what neither could answer
    lines = _lines(server)
    again = _batch(tmp_path, job, tmp_path / "c.parquet")
    assert again.filter(pl.col("cache_hit")).height >= hits.height
    assert _lines(server) - lines <= failed * 5


def test_json_invalid_batch_answers_are_not_cached(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST, invalid_json_rate=1.0)
    cache, source = tmp_path / "cache.sqlite", reviews(6)
    job = _job(source, server, tmp_path / "a.parquet", cache, request={**JSON, "json_retries": 1})
    out = _batch(tmp_path, job, tmp_path / "a.parquet")
    assert out["error_type"].unique().to_list() == ["invalid_json"]
    assert cache_stats(cache).entries == 0


def test_sampled_batch_answers_are_not_cached_unless_the_job_says_so(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST)
    cache, source = tmp_path / "cache.sqlite", reviews(5)
    job = _job(source, server, tmp_path / "a.parquet", cache)
    job["request"]["temperature"] = 0.7
    job["request"].pop("seed")
    _batch(tmp_path, job, tmp_path / "a.parquet")
    assert not _batch(tmp_path, job, tmp_path / "b.parquet")["cache_hit"].any()
    assert _lines(server) == 10
    assert not cache.exists()  # not even opened

    job["cache"]["nondeterministic"] = True
    _batch(tmp_path, job, tmp_path / "c.parquet")
    assert _batch(tmp_path, job, tmp_path / "d.parquet")["cache_hit"].all()
    assert _lines(server) == 15


def test_shards_after_a_live_run_send_nothing(tmp_path: Path, fake_server: FakeFactory) -> None:
    server = fake_server()
    cache = tmp_path / "cache.sqlite"
    source = write_parquet(
        tmp_path / "in.parquet",
        {
            "review_id": [f"r{i:03d}" for i in range(24)],
            "text": [f"review {i}: fine" for i in range(24)],
            "product_id": [f"P{i}" for i in range(24)],
        },
    )
    job = _job(source, server, tmp_path / "a.parquet", cache)
    live = _live(tmp_path, job, tmp_path / "a.parquet")
    assert server.stats.received == 24

    job["output"]["path"] = str(tmp_path / "b.parquet")
    path = write_job(tmp_path, job, "sharded.toml")
    for index in range(2):
        assert main(["run", str(path), "--shard", f"{index}/2"]) == 0
    assert main(["merge", str(path)]) == 0

    assert server.stats.received == 24
    merged = pl.read_parquet(tmp_path / "b.parquet")
    assert merged["cache_hit"].all()
    assert merged["id"].to_list() == live["id"].to_list()
    assert merged["content"].to_list() == live["content"].to_list()
    assert merged["cached_cost_usd"].to_list() == live["cost_usd"].to_list()


def test_sharded_batch_runs_fill_the_cache_for_a_live_run(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST)
    cache = tmp_path / "cache.sqlite"
    source = write_parquet(
        tmp_path / "in.parquet",
        {
            "review_id": [f"r{i:03d}" for i in range(16)],
            "text": [f"review {i}: fine" for i in range(16)],
            "product_id": [f"P{i}" for i in range(16)],
        },
    )
    job = _job(source, server, tmp_path / "a.parquet", cache)
    path = write_job(tmp_path, job, "sharded.toml")
    for index in range(2):
        assert main(["run", str(path), "--shard", f"{index}/2", "--batch"]) == 0
    assert main(["merge", str(path)]) == 0
    assert _lines(server) == 16
    received = server.stats.received

    live = _live(tmp_path, job, tmp_path / "b.parquet")
    assert server.stats.received == received
    assert live["cache_hit"].all()


@pytest.mark.usefixtures("in_repo")
def test_azure_live_and_batch_runs_share_entries(
    tmp_path: Path, fake_server: FakeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    fake = fake_server(profile=profile("azure"), api_key=KEY, **FAST)
    cache = tmp_path / "cache.sqlite"
    job = batch_ready(pointed_at(example_job("azure"), fake, tmp_path / "a.parquet"))
    job["cache"] = {"path": str(cache)}
    live = run_job(tmp_path, job, "--limit", "4")
    assert fake.stats.received == 4

    job["output"]["path"] = str(tmp_path / "b.parquet")
    batch = run_job(tmp_path, job, "--limit", "4", "--batch")
    assert _batches(fake)["batches_created"] == 0
    assert batch["cache_hit"].all()
    assert batch["content"].to_list() == live["content"].to_list()

    # and the other way: batch answers serve a live run against the deployment's URL
    job["output"]["path"] = str(tmp_path / "c.parquet")
    fresh = run_job(tmp_path, job, "--limit", "8", "--batch")
    assert _lines(fake) == 4
    received = fake.stats.received
    job["output"]["path"] = str(tmp_path / "d.parquet")
    assert run_job(tmp_path, job, "--limit", "8")["cache_hit"].all()
    assert fake.stats.received == received
    assert fresh["cache_hit"].to_list() == [True] * 4 + [False] * 4


def test_a_submitted_batch_is_collected_even_when_the_cache_has_its_rows_by_then(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(batch_time_scale=0.0002)  # a batch takes 0.72 s
    cache, source = tmp_path / "cache.sqlite", reviews(6)
    job = _job(source, server, tmp_path / "a.parquet", cache)
    path = write_job(tmp_path, job, "batched.toml")
    assert main(["run", str(path), "--batch", "--no-wait"]) == 7
    # meanwhile a live run into another output puts every answer in the cache
    assert _live(tmp_path, dict(job, output={"path": ""}), tmp_path / "live.parquet").height == 6

    deadline = time.monotonic() + 10
    code = 7
    while code == 7 and time.monotonic() < deadline:
        time.sleep(0.3)
        code = main(["run", str(path), "--batch", "--no-wait"])
    assert code == 0
    # the batch was paid for: its answers are written, not replaced by cache hits
    out = pl.read_parquet(tmp_path / "a.parquet")
    assert not out["cache_hit"].any()
    assert out["batch_id"].null_count() == 0
    assert _batches(server)["batches_created"] == 1


def test_a_cached_answer_json_mode_cannot_use_is_asked_again_in_the_batch(
    tmp_path: Path, fake_server: FakeFactory, reviews: Reviews
) -> None:
    server = fake_server(**FAST)
    cache, source = tmp_path / "cache.sqlite", reviews(5)
    job = _job(source, server, tmp_path / "a.parquet", cache, request=JSON)
    # the first requests' hashes, from a run without the cache
    hashes = _live(tmp_path, {**job, "cache": {}}, tmp_path / "plain.parquet")["request_hash"]
    # an entry JSON mode cannot use under each first request (as another job could leave)
    stored = ResponseCache(cache, endpoint_identity(EndpointSpec(base_url=server.base_url)))
    for request_hash in hashes:
        request = ChatRequest(b"{}", 1, request_hash, 3, 200, "gpt-4o-mini")
        stored.store(request, Reply("not json", "stop", "gpt-4o-mini", 200, 1.0), 0.5)
    assert stored.flush() == 5
    stored.close()

    batch = _batch(tmp_path, job, tmp_path / "a.parquet")

    assert batch["status"].to_list() == ["ok"] * 5
    assert batch["json_attempts"].to_list() == [2] * 5
    assert not batch["cache_hit"].any()  # the row's answer was bought, at its re-ask
    assert _lines(server) == 5  # the re-asks only: the first requests were never submitted
    assert batch["request_hash"].to_list() == hashes.to_list()
    received = server.stats.received
    again = _live(tmp_path, job, tmp_path / "b.parquet")
    assert server.stats.received == received
    assert again["cache_hit"].all()
    assert again["parsed_json"].to_list() == batch["parsed_json"].to_list()
