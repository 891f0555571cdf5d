"""``--engine ray`` end to end on a local Ray (one session for the module, fractional CPUs)
against the fake server: equal to one process, one global rate limit, a worker killed."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from pipeline.cli import main
from pipeline.fake import FakeConfig, serve_in_thread
from tests.helpers import make_job, write_job, write_parquet

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

pytestmark = pytest.mark.slow

COMPARED = ["id", "status", "content", "request_hash", "seed", "prompt_tokens", "product_id"]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One small local Ray for the module: 2 CPUs, no dashboard, a 200 MB object store."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def _input(path: Path, rows: int) -> Path:
    return write_parquet(
        path,
        {
            "review_id": [f"r{i:05d}" for i in range(rows)],
            "text": [f"review {i}: fine" for i in range(rows)],
            "product_id": [f"P{i % 3}" for i in range(rows)],
        },
    )


def test_ray_run_equals_one_process(tmp_path: Path) -> None:
    source = _input(tmp_path / "in.parquet", 40)
    single, merged = tmp_path / "single.parquet", tmp_path / "merged.parquet"
    assert main(["run", str(write_job(tmp_path, make_job(source, "fake", single), "a.toml"))]) == 0
    job = write_job(tmp_path, make_job(source, "fake", merged), "b.toml")
    assert main(["run", str(job), "--engine", "ray", "--workers", "4"]) == 0
    one, many = pl.read_parquet(single), pl.read_parquet(merged)
    assert one.select(COMPARED).equals(many.select(COMPARED))
    manifest = json.loads((tmp_path / "merged.manifest.json").read_text())
    assert len(manifest["extra"]["shards"]) == 4
    assert manifest["requests_sent"] == 40


def test_global_limit_holds_in_every_second(tmp_path: Path) -> None:
    rpm, tpm = 3000, 120_000  # 50 requests/s, 2,000 tokens/s: the tokens bind
    with serve_in_thread(
        FakeConfig(requests_per_minute=rpm, tokens_per_minute=tpm, limit_window_s=1.0)
    ) as server:
        source = _input(tmp_path / "in.parquet", 160)
        job = make_job(
            source,
            server.base_url,
            tmp_path / "out.parquet",
            limits={"concurrency": 16, "requests_per_minute": rpm, "tokens_per_minute": tpm},
        )
        path = write_job(tmp_path, job)
        assert main(["run", str(path), "--engine", "ray", "--workers", "4"]) == 0
        stats = server.stats.to_dict()
    burst = 0.25  # the client's bucket: a quarter second of the limit
    per_second = stats["tokens_by_second"]
    print(
        f"max tokens/s {max(per_second.values())}, max requests/s {max(stats['admitted_by_second'].values())}, 429s {stats['by_status'].get('429', 0)}"
    )
    assert max(per_second.values()) <= tpm / 60 * (1 + burst) + 60  # + one request's tokens
    assert max(stats["admitted_by_second"].values()) <= rpm / 60 * (1 + burst)
    assert stats["by_status"].get("429", 0) <= 4
    assert pl.read_parquet(tmp_path / "out.parquet")["status"].to_list() == ["ok"] * 160


def _kill_one_worker(shards: Path, killed: list[int]) -> None:
    """SIGKILL the process holding shard 1's lock once it has written a part file."""
    lock = shards / "1-of-2" / "out.parquet.lock"
    parts = shards / "1-of-2" / "out.parquet.parts"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if parts.is_dir() and any(parts.glob("part-*.parquet")) and lock.exists():
            pid = json.loads(lock.read_text() or "{}").get("pid")
            if pid:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
        time.sleep(0.05)


def test_a_killed_worker_is_retried_and_every_row_is_written_once(tmp_path: Path) -> None:
    rows, concurrency = 300, 8
    # each shard sends 150 rows 8 at a time for about 2.8 s: its first part file (written
    # after a second) is there well before it ends (at 50 ms, shards ended at about the
    # first second and the killer missed them now and then)
    with serve_in_thread(FakeConfig(latency_s=0.15)) as server:
        source = _input(tmp_path / "in.parquet", rows)
        out = tmp_path / "out.parquet"
        job = make_job(source, server.base_url, out, limits={"concurrency": concurrency})
        path = write_job(tmp_path, job)
        killed: list[int] = []
        killer = threading.Thread(
            target=_kill_one_worker, args=(tmp_path / "out.parquet.shards", killed)
        )
        killer.start()
        assert main(["run", str(path), "--engine", "ray", "--workers", "2"]) == 0
        killer.join()
        stats = server.stats.to_dict()
    assert killed, "no worker was killed"
    frame = pl.read_parquet(out)
    assert frame.height == rows
    assert frame["id"].n_unique() == rows
    twice = sum(n - 1 for n in stats["completions_by_request"].values() if n > 1)
    throughput = concurrency / 0.05  # one second of the worker's requests at this latency
    print(f"killed pid {killed[0]}; rows sent twice: {twice}")
    assert twice <= concurrency + throughput


@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray Data's own settings
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
def test_python_api_on_a_path_and_on_a_ray_dataset(tmp_path: Path) -> None:
    import pipeline
    from pipeline import RunOptions

    rows = [{"review_id": f"r{i:03d}", "text": f"row {i}", "product_id": "p"} for i in range(12)]
    source = write_parquet(tmp_path / "in.parquet", {k: [r[k] for r in rows] for k in rows[0]})
    single = tmp_path / "single.parquet"
    job = write_job(tmp_path, make_job(source, "fake", single))
    assert main(["run", str(job)]) == 0
    from_path = pipeline.run_on_ray(
        job, tmp_path / "in.parquet", RunOptions(output=tmp_path / "p.parquet"), workers=2
    )
    from_dataset = pipeline.run_on_ray(
        job, ray.data.from_items(rows), RunOptions(output=tmp_path / "d.parquet"), workers=3
    )
    assert from_path.exit_code == from_dataset.exit_code == 0
    assert from_dataset.merged is not None
    assert from_dataset.merged.summary.rows_ok == 12
    one = pl.read_parquet(single).select(COMPARED)
    assert one.equals(pl.read_parquet(tmp_path / "p.parquet").select(COMPARED))
    assert one.equals(pl.read_parquet(tmp_path / "d.parquet").select(COMPARED).sort("id"))
