"""Memory benchmarks (issue 12, target 4). Prints numbers; registered by tests/bench/run.py.

(d) peak RSS of a zero-latency run of 20,000 rows and of 200,000 rows (realistic prompts
    and answers), and their ratio:
    targets at most 150 MB, and at most 1.1x.
(m) 1,000,000 rows at zero latency, concurrency 256: wall time (target at most 10 min),
    peak RSS including the final merge (target at most 200 MB), and the number of part
    files during the run (the most seen) and before the merge (compaction keeps both small).

Each client run is its own process (tests/bench/client.py): its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.run import ROOT, RUN_TIMEOUT_S, fake_server, make_input, run_client, write_job

_POLL_S = 0.5


def bench_d(folder: Path) -> None:
    print(
        "(d) peak RSS vs input size (zero latency, concurrency 256; 200-400-word prompts,"
        " answers as api.openai.com sends them)"
    )
    rss = {}
    for rows in (20_000, 200_000):
        with fake_server("--realistic") as url:
            job = write_job(folder, "d", url, concurrency=256, max_tokens=300)
            r = run_client(job, make_input(folder, rows, realistic=True), folder)
        rss[rows] = r["max_rss_mb"]
        target = " (target <= 150)" if rows == 20_000 else ""
        print(
            f"    {rows:>7,} rows: peak RSS {r['max_rss_mb']:.0f} MB{target},"
            f" {r['wall_s']:.1f} s, ok {r['ok']:,}"
        )
    print(f"    ratio {rss[200_000] / rss[20_000]:.3f} (target <= 1.1)")


def _watched_run(job: Path, source: Path, folder: Path) -> tuple[dict[str, Any], int, int]:
    """Run one client (as ``run_client`` does) while counting its part files: the result,
    the most part files seen at once, and how many there were at the last look."""
    output = folder / f"{job.stem}-{source.stem}.parquet"
    parts = output.with_name(output.name + ".parts")
    command = [
        sys.executable,
        "-m",
        "tests.bench.client",
        str(job),
        "--input",
        str(source),
        "--output",
        str(output),
        "--log",
        str(folder / f"{job.stem}.log"),
    ]
    most = last = 0
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + RUN_TIMEOUT_S * 2
        while process.poll() is None and time.monotonic() < deadline:
            if parts.is_dir():
                last = sum(1 for p in parts.glob("part-*.parquet"))
                most = max(most, last)
            time.sleep(_POLL_S)
        if process.poll() is None:
            process.kill()
            raise RuntimeError(f"the 1,000,000-row run took over {RUN_TIMEOUT_S * 2} s")
        stdout, _ = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"client failed with exit code {process.returncode}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result, most, last


def bench_m(folder: Path) -> None:
    rows = 1_000_000
    print(f"(m) {rows:,} rows at zero latency, concurrency 256: wall, peak RSS, part files")
    source = make_input(folder, rows)
    with fake_server() as url:
        job = write_job(folder, "m", url, concurrency=256, max_tokens=16)
        r, most, last = _watched_run(job, source, folder)
    print(
        f"    wall {r['wall_s']:.0f} s (target <= 600), peak RSS {r['max_rss_mb']:.0f} MB"
        f" (target <= 200, merge included), ok {r['ok']:,} of {r['rows']:,}"
    )
    print(
        f"    part files: at most {most} at once during the run, {last} at the last look"
        f" (uncompacted it would be about {rows // 500:,})"
    )


SCENARIOS = {"d": bench_d, "m": bench_m}
