"""Scale-out benchmarks: shards vs one process, Ray's start-up cost, a paper estimate.

    python -m tests.bench.shards              # all (200,000 rows: several minutes)
    python -m tests.bench.shards --rows 20000 # a quicker look

(e) N rows (a directory of 8 Parquet files) sent once by one process and once by 4
    shards running at the same time (`--shard I/4`, then `pipeline merge`), against one
    fake server process at zero latency: wall time, CPU per request and peak RSS of each
    process, and the merge's time.
(f) Ray's start-up cost: a local `ray.init` (2 CPUs, no dashboard), the first task, the
    first actor call; then `--engine ray --workers 4` on 2,000 rows vs a local run.
(g) the paper estimate, from (e) and (f): 100M rows on 32 machines against a fleet
    serving 50,000 requests/s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from tests.bench.run import ROOT, fake_server, write_job

FILES = 8


def make_dataset(folder: Path, rows: int) -> Path:
    """``rows`` short reviews in ``FILES`` Parquet files (row groups of 10,000)."""
    root = folder / f"data-{rows}"
    if root.exists():
        return root
    root.mkdir()
    per = rows // FILES
    for f in range(FILES):
        start = f * per
        pl.DataFrame(
            {
                "id": [f"row-{i:08d}" for i in range(start, start + per)],
                "text": [
                    f"Review {i}: sturdy, quiet, a little pricey."
                    for i in range(start, start + per)
                ],
            }
        ).write_parquet(root / f"part-{f:02d}.parquet", row_group_size=10_000)
    return root


_AS_PROGRAM = """
import atexit, os, runpy, sys
from tests.bench.rss import peak_rss_mb
atexit.register(lambda: open(os.environ["BENCH_PEAK_FILE"], "w").write(str(peak_rss_mb())))
sys.argv = ["pipeline", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__")
"""
"""``python -m pipeline ARGS`` that writes its own peak RSS (``VmHWM``) to a file at exit:
``wait4``'s ``ru_maxrss`` carries this benchmark's peak over fork and exec."""


_PEAK_FILES: dict[int, Path] = {}
"""Where each spawned process (by pid) writes its peak RSS."""


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    logging = ["--log-file", str(log)] if args[0] == "run" else []
    peak_file = log.with_suffix(".peak")
    process = subprocess.Popen(
        [sys.executable, "-c", _AS_PROGRAM, *args, *logging],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "BENCH_PEAK_FILE": str(peak_file)},
    )
    _PEAK_FILES[process.pid] = peak_file
    return process


def _reap(processes: list[subprocess.Popen[bytes]]) -> list[tuple[float, float]]:
    """Wait for every process: (CPU seconds by its own rusage, peak RSS in MB as it wrote it)."""
    measured = {}
    pids = {p.pid for p in processes}
    while pids:
        pid, status, usage = os.wait4(-1, 0)
        if pid in pids:
            pids.discard(pid)
            assert os.waitstatus_to_exitcode(status) == 0, f"pid {pid} failed: {status}"
            measured[pid] = usage.ru_utime + usage.ru_stime
    for p in processes:
        p.returncode = 0
    return [(measured[p.pid], float(_PEAK_FILES[p.pid].read_text())) for p in processes]


def bench_e(folder: Path, rows: int) -> dict[str, float]:
    """One process vs 4 shards + merge, the same input and server."""
    source = make_dataset(folder, rows)
    with fake_server() as url:
        job = write_job(folder, "e", url, concurrency=128, max_tokens=16)
        text = job.read_text().replace('path = "unused.parquet"', f'path = "{source}"')
        job.write_text(text)
        start = time.perf_counter()
        ((cpu, rss),) = _reap(
            [_spawn(["run", str(job), "--output", str(folder / "one.parquet")], folder / "one.log")]
        )
        one_wall = time.perf_counter() - start
        out = folder / "sharded.parquet"
        start = time.perf_counter()
        shards = _reap(
            [
                _spawn(
                    ["run", str(job), "--output", str(out), "--shard", f"{i}/4"],
                    folder / f"s{i}.log",
                )
                for i in range(4)
            ]
        )
        shards_wall = time.perf_counter() - start
        start = time.perf_counter()
        ((merge_cpu, merge_rss),) = _reap(
            [_spawn(["merge", str(job), "--output", str(out)], folder / "m.log")]
        )
        merge_wall = time.perf_counter() - start
    assert pl.read_parquet(out).height == rows
    shard_cpu = sum(c for c, _ in shards)
    print(f"(e) {rows:,} rows, zero latency, one fake server process, 2 cores")
    print(
        f"    one process: {one_wall:.1f} s wall, {cpu / rows * 1000:.3f} CPU-ms/request, peak RSS {rss:.0f} MB"
    )
    print(
        f"    4 shards:    {shards_wall:.1f} s wall, {shard_cpu / rows * 1000:.3f} CPU-ms/request,"
        f" peak RSS {', '.join(f'{r:.0f}' for _, r in shards)} MB"
    )
    print(
        f"    merge:       {merge_wall:.1f} s wall ({rows / merge_wall:,.0f} rows/s), {merge_cpu:.1f} s CPU, peak RSS {merge_rss:.0f} MB"
    )
    return {
        "cpu_ms": shard_cpu / rows * 1000,
        "merge_rows_s": rows / merge_wall,
        "shard_overhead_s": max(0.0, shard_cpu / 4 - cpu / 4),
    }


def bench_f(folder: Path) -> dict[str, float]:
    """Ray start-up, first task, first actor call; a small --engine ray run vs local."""
    code = """
import time, ray
t = time.perf_counter(); ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200*1024*1024, log_to_driver=False)
init = time.perf_counter() - t
t = time.perf_counter(); ray.get(ray.remote(lambda: 1).remote()); task = time.perf_counter() - t
class A:
    def f(self): return 1
t = time.perf_counter(); a = ray.remote(A).remote(); ray.get(a.f.remote()); actor = time.perf_counter() - t
t = time.perf_counter(); [ray.get(a.f.remote()) for _ in range(200)]; call = (time.perf_counter() - t) / 200
t = time.perf_counter(); ray.shutdown(); down = time.perf_counter() - t
print(init, task, actor, call, down)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    init, task, actor, call, down = map(float, out.stdout.split()[-5:])
    print("(f) Ray on this machine (2 CPUs, no dashboard, 200 MB object store)")
    print(
        f"    ray.init {init:.1f} s, first task {task:.2f} s, first actor call {actor:.2f} s,"
        f" an actor call {call * 1000:.2f} ms, shutdown {down:.1f} s"
    )
    source = make_dataset(folder, 2_000)
    with fake_server() as url:
        job = write_job(folder, "f", url, concurrency=64, max_tokens=16)
        job.write_text(job.read_text().replace('path = "unused.parquet"', f'path = "{source}"'))
        walls = {}
        for name, extra in (("local", []), ("ray", ["--engine", "ray", "--workers", "4"])):
            start = time.perf_counter()
            _reap(
                [
                    _spawn(
                        ["run", str(job), "--output", str(folder / f"f-{name}.parquet"), *extra],
                        folder / f"f-{name}.log",
                    )
                ]
            )
            walls[name] = time.perf_counter() - start
    print(
        f"    2,000 rows: local run {walls['local']:.1f} s, --engine ray --workers 4 {walls['ray']:.1f} s"
        f" (+{walls['ray'] - walls['local']:.1f} s of start-up, workers and merge)"
    )
    return {"startup_s": walls["ray"] - walls["local"], "lease_ms": call * 1000}


def paper(cpu_ms: float, merge_rows_s: float, startup_s: float, lease_ms: float) -> None:
    """100M rows on 32 machines at 50,000 requests/s, from the measured numbers."""
    rows, machines, fleet = 100_000_000, 32, 50_000
    per_machine = fleet / machines
    cores = per_machine * cpu_ms / 1000
    send_s = rows / fleet
    merge_s = rows / merge_rows_s
    grants_s = per_machine / max(1.0, per_machine * 0.05)  # a grant: 50 ms of a worker's share
    print("(g) paper estimate: 100M rows, 32 machines, a fleet serving 50,000 requests/s")
    print(
        f"    per machine {per_machine:,.0f} requests/s x {cpu_ms:.3f} CPU-ms = {cores:.2f} cores busy"
    )
    print(
        f"    sending: {send_s / 60:.0f} min at the fleet's rate; start-up {startup_s:.0f} s; merge"
        f" {merge_s / 60:.1f} min at {merge_rows_s:,.0f} rows/s (one process, streaming)"
    )
    print(
        f"    limiter actor: {grants_s * machines:,.0f} leases/s at most (grants of 50 ms of a worker's share),"
        f" at {lease_ms:.2f} ms a call = {grants_s * machines * lease_ms / 1000:.2f} of a core"
    )
    print(f"    total about {(send_s + startup_s + merge_s) / 60:.0f} min")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.shards")
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        folder = Path(tmp)
        e = bench_e(folder, args.rows)
        f = bench_f(folder)
        paper(e["cpu_ms"], e["merge_rows_s"], f["startup_s"], f["lease_ms"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
