"""Batch mode vs live mode against the fake server (loopback only). Prints numbers.

    python -m tests.bench.batch

(demo)  the demo job (200 rows, the fake's latency and faults in live mode), live and
        with --batch: rows, batches, wall time, cost.
(20k)   20,000 rows, no latency or faults, concurrency 64 live; in batch mode files limited
        to 5,000 lines (max_requests_per_file = 5000, the provider's 50,000 scaled down).

The fake runs in its own process at its default time scale (a batch takes one simulated
hour, 0.72 s); the batch run polls every 0.2 s. Wall time in batch mode is thus the
fake's simulated processing plus the pipeline's own work (building, uploading,
downloading, parsing, writing).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tests.bench.run import ROOT, RUN_TIMEOUT_S, fake_server, server_stats

BATCH = "\n[batch]\npoll_interval_s = 0.2\nmax_poll_interval_s = 0.5\n"


def run(job: Path, output: Path, *args: str) -> float:
    """``pipeline run`` in its own process; its wall time."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(job), "--output", str(output), *args],
        cwd=ROOT,
        timeout=RUN_TIMEOUT_S,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-3000:]}")
    return time.perf_counter() - started


def report(name: str, output: Path, wall: float, batches: int) -> None:
    frame = pl.read_parquet(output)
    ok = frame.filter(pl.col("status") == "ok").height
    print(
        f"{name:<14} rows {frame.height:>6,} (ok {ok:,})  batches {batches:>2}  "
        f"wall {wall:6.1f} s  cost ${frame['cost_usd'].sum():.4f}"
    )


def demo(work: Path) -> None:
    job = work / "demo.toml"
    text = (ROOT / "jobs" / "demo.toml").read_text()
    job.write_text(
        text.replace('"data/reviews.parquet"', f'"{ROOT / "data/reviews.parquet"}"') + BATCH
    )
    live, batch = work / "demo-live.parquet", work / "demo-batch.parquet"
    report("demo live", live, run(job, live), 0)
    wall = run(job, batch, "--batch")
    report("demo batch", batch, wall, pl.read_parquet(batch)["batch_id"].n_unique())


def twenty_thousand(work: Path) -> None:
    rows = 20_000
    source = work / "rows.parquet"
    pq.write_table(
        pa.table(
            {
                "review_id": [f"r{i:06d}" for i in range(rows)],
                "text": [
                    f"Review {i}: it works, mostly, and it arrived on time." for i in range(rows)
                ],
            }
        ),
        source,
    )
    with fake_server() as base_url:
        job = work / "20k.toml"
        job.write_text(
            f'name = "bench20k"\n[input]\npath = "{source}"\nid_column = "review_id"\n'
            'prompt_column = "text"\n[request]\nmodel = "gpt-4o-mini"\nmax_tokens = 32\n'
            f'[endpoint]\nbase_url = "{base_url}"\n[limits]\nconcurrency = 64\n'
            + BATCH
            + "max_requests_per_file = 5000\n"
        )
        live, batch = work / "20k-live.parquet", work / "20k-batch.parquet"
        report("20k live", live, run(job, live), 0)
        wall = run(job, batch, "--batch")
        created = server_stats(base_url)["batches"]["batches_created"]
        report("20k batch", batch, wall, created)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        demo(work)
        twenty_thousand(work)


if __name__ == "__main__":
    main()
