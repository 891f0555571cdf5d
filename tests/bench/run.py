"""Benchmarks of the pipeline against the fake server (loopback only). Prints numbers.

    python -m tests.bench                          # all scenarios
    python -m tests.bench a b                      # some of them
    python -m tests.bench --client-root DIR a b    # the pipeline of another checkout
    PEER_SCRIPT=/path/to/api_request_parallel_processor.py python -m tests.bench a

Each client run is its own process (tests/bench/client.py) so that its CPU time and
peak RSS are its own; the fake server runs in another process on the other core. With
``--client-root``, client processes (``tests.bench.client``, ``python -m pipeline``) run
from that checkout (their working directory and ``PYTHONPATH``, this interpreter), while
the fake server, the inputs and the peer come from this one: before and after, side by
side in one sitting. Job files use only keys the pipeline has long known.

The CPU, latency and memory scenarios (a, b, d, e, h, i) send realistic prompts: product
reviews of 200-400 words (``tests/bench/inputs.py``, 250-450 tokens); all but (d) ask for
``max_tokens = 300`` from a fake answering as api.openai.com does (``--realistic``: its
full header set, usage details, 100-300-token contents). Scenarios a, b, h and i run the
pipeline and a peer back to back (``tests/bench/side.py``): ``tests/bench/peer.py``, our
re-implementation of the OpenAI cookbook's ``api_request_parallel_processor.py`` design,
or the real script named by ``PEER_SCRIPT``, measured the same way (its own process).

(a) 20,000 requests at zero latency: requests/s, client CPU-ms per request, peak RSS,
    pipeline vs peer (targets: <= 0.40 CPU-ms/request, >= 2x the peer's requests/s);
    (a2) the same on httpx's default httpcore transport (5,000: it is ten times slower).
(b) 5,000 requests at 500 ms latency, concurrency 256: wall time vs N x latency /
    concurrency (target <= 1.10x), with limits in the job (set high enough not to bind)
    and without; the peer beside it.
(c) 4,000 requests, server enforcing 3,000 requests/min and 600,000 tokens/min at
    300 ms latency: steady-state throughput vs the binding limit, 429s, failed rows;
    (c2) the same with no limits in the job, following the server's x-ratelimit headers;
    (c3) the same limits with ``concurrency = "auto"``.
(d) peak RSS for 200,000 input rows vs 20,000 (realistic inputs, plain fake).
(e) the response cache, 20,000 rows at zero latency: a cold cache on a live run (every
    answer stored) vs no cache, client CPU per request, runs alternated; then a warm
    cache into a new output (nothing sent): rows/s and CPU per row; and the cache's own
    CPU per request measured in process (steadier than the difference of two runs on a
    busy machine).
(f) ``concurrency = "auto"`` on the fake's capacity model (8 slots, per-token time growing
    10% per extra request in the batch): a sweep of fixed concurrency 1..256 for the best
    throughput, then ``auto``: its throughput vs the best, p50 latency vs unloaded, timeouts.
(g) the same server halving its slots mid-run: how fast the limit follows, timeouts,
    and the limit over time.
(h) 2,000 rows, stray faults (5% 500s, 2% 429s with Retry-After 1, 1% drops, 1% hangs),
    100 ms latency, 5 s timeout, no limits binding: wall time, rows ok, rows lost or
    duplicated, pipeline vs peer (target: wall <= the peer's, 0 lost or duplicated).
(i) start-up: a one-row ``pipeline run`` against the fake, from spawn to exit, vs the peer
    on one request; ``pipeline --help`` and ``pipeline validate jobs/demo.toml``
    (medians of 5; targets 1.0 s, 0.3 s and 1.0 s).
(c4) binding limits: the fake enforcing requests/min and tokens/min as token buckets
    holding 1 s of quota, charging prompt tokens as it counts them plus ``max_tokens``
    (what a client can know before sending); the job's limits equal the server's: wall
    vs the limiter's ideal (target <= 1.03x), 429s per request (target <= 0.5%).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from tests.bench.inputs import review

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ROOT = ROOT
"""The checkout client processes run from (``--client-root``)."""
SERVER_START_TIMEOUT_S = 30
RUN_TIMEOUT_S = 900


@contextlib.contextmanager
def fake_server(*args: str) -> Iterator[str]:
    """A fake server process on a free loopback port; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.fake", "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("fake server listening on "):
            raise RuntimeError(f"fake server did not start: {line!r}")
        yield line.removeprefix("fake server listening on ")
    finally:
        process.terminate()
        process.wait(timeout=SERVER_START_TIMEOUT_S)


def server_stats(base_url: str) -> dict[str, Any]:
    """The fake server's counters (read over loopback)."""
    import httpx

    root = base_url.rsplit("/v1", 1)[0]
    data: dict[str, Any] = httpx.get(f"{root}/stats", timeout=30).json()
    return data


def client_env() -> dict[str, str]:
    """The environment of a client process: ``PYTHONPATH`` at the client checkout."""
    return os.environ | {"PYTHONPATH": str(CLIENT_ROOT)}


def make_input(folder: Path, rows: int, *, realistic: bool = False) -> Path:
    """A Parquet input of ``rows`` reviews: one-line ones, or (``realistic``) of 200-400
    words (``tests/bench/inputs.py``)."""
    path = folder / f"input-{rows}{'-realistic' if realistic else ''}.parquet"
    if not path.exists():
        pl.DataFrame(
            {
                "id": [f"row-{i:07d}" for i in range(rows)],
                "text": [
                    review(i)
                    if realistic
                    else f"Review {i}: sturdy, quiet, a little pricey; arrived in {i % 9 + 1} days."
                    for i in range(rows)
                ],
            }
        ).write_parquet(path)
    return path


def write_job(
    folder: Path,
    name: str,
    base_url: str,
    *,
    concurrency: int | str,
    max_tokens: int,
    limits: str = "",
    timeout_s: float = 60,
    input_path: str = "unused.parquet",
) -> Path:
    """A benchmark job file (``input_path``: for runs without ``--input``)."""
    path = folder / f"{name}.toml"
    path.write_text(
        f"""name = "{name}"
[input]
path = {json.dumps(input_path)}
id_column = "id"
prompt_column = "text"
[request]
model = "bench-model"
max_tokens = {max_tokens}
seed = 1
[endpoint]
base_url = "{base_url}"
timeout_s = {timeout_s}
[limits]
concurrency = {json.dumps(concurrency)}
{limits}
[retry]
max_attempts = 8
initial_backoff_s = 0.5
max_backoff_s = 10
"""
    )
    return path


def run_client(
    job: Path,
    source: Path,
    folder: Path,
    transport: str = "aiohttp",
    *,
    cache: Path | None = None,
    output: Path | None = None,
) -> dict[str, Any]:
    """Run one job in a fresh process; returns its measurements."""
    output = output or folder / f"{job.stem}-{transport}-{source.stem}.parquet"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.client",
            str(job),
            "--input",
            str(source),
            "--output",
            str(output),
            "--transport",
            transport,
            "--log",
            str(folder / f"{job.stem}.log"),
            *(["--cache", str(cache)] if cache is not None else []),
        ],
        cwd=CLIENT_ROOT,
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"client run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["output"] = str(output)
    return result


def bench_a2(folder: Path) -> None:
    print("(a2) zero latency on httpx's default httpcore transport")
    with fake_server("--realistic") as url:
        job = write_job(folder, "a2", url, concurrency=256, max_tokens=300)
        r = run_client(job, make_input(folder, 5_000, realistic=True), folder, "httpcore")
    print(
        f"    httpcore  5,000 requests: {r['requests'] / r['wall_s']:8,.0f} req/s,"
        f" {r['cpu_s'] / r['requests'] * 1000:5.2f} CPU-ms/request, ok {r['ok']:,}"
    )


def bench_c(folder: Path, *, configured: bool = True, concurrency: int | str = 128) -> None:
    how = (
        "limits in the job" if configured else "no limits in the job: following x-ratelimit headers"
    )
    how += f", concurrency {concurrency}"
    print(
        f"(c) 4,000 requests under 3,000 rpm / 600,000 tpm enforced by the server, 300 ms latency; {how}"
    )
    rpm, tpm, max_tokens = 3000, 600_000, 256
    with fake_server("--latency-ms", "300", "--rpm", str(rpm), "--tpm", str(tpm)) as url:
        limits = f"requests_per_minute = {rpm}\ntokens_per_minute = {tpm}" if configured else ""
        job = write_job(
            folder,
            f"c-{configured}-{concurrency}",
            url,
            concurrency=concurrency,
            max_tokens=max_tokens,
            limits=limits,
        )
        r = run_client(job, make_input(folder, 4_000), folder)
        stats = server_stats(url)
    df = pl.read_parquet(r["output"])
    charged = df["prompt_tokens"].mean() + max_tokens
    binding = min(rpm, tpm / charged)
    done = df.sort("finished_at")["finished_at"]
    lo, hi = int(len(done) * 0.1), int(len(done) * 0.9)
    span_s = (done[hi] - done[lo]).total_seconds()
    steady = (hi - lo) / span_s * 60
    received = stats["received"]
    limited = int(stats["by_status"].get("429", 0))
    print(
        f"    binding limit {binding:,.0f} req/min (tokens: {charged:.0f} charged per request);"
        f" steady state {steady:,.0f} req/min = {steady / binding:.1%} (target >= 95%)"
    )
    print(
        f"    429s {limited} of {received:,} sent = {limited / received:.2%} (target < 1%);"
        f" failed rows {r['rows'] - r['ok']}; wall {r['wall_s']:.1f} s"
    )


def bench_c2(folder: Path) -> None:
    bench_c(folder, configured=False)


def cache_work(folder: Path, rows: int = 20_000) -> tuple[float, float]:
    """CPU-us per request of the cache's own work in this process, without a server: a cold
    request (miss, store, flush in transactions of 2,000) and a warm one (hit, decoded)."""
    import hashlib
    import time

    from pipeline.cache import ResponseCache
    from pipeline.records import ChatRequest, Reply, Usage

    requests = [
        ChatRequest(
            body=b"{}",
            seed=i,
            request_hash=hashlib.sha256(str(i).encode()).hexdigest(),
            estimated_prompt_tokens=30,
            max_tokens=16,
            model="bench-model",
        )
        for i in range(rows)
    ]
    reply = Reply(
        content="A sturdy, quiet product. " * 4,
        finish_reason="stop",
        model="bench-model",
        http_status=200,
        latency_ms=3.2,
        usage=Usage(30, 16, 46),
        choices=("x",),
        response_id="chatcmpl-1",
    )
    cache = ResponseCache(folder / "work.sqlite", "http://127.0.0.1:1/v1/chat/completions?")
    start = time.process_time()
    for i, request in enumerate(requests):
        assert cache.lookup(request) is None
        cache.store(request, reply, 0.00001)
        if i % 2000 == 1999:
            cache.flush()
    cache.flush()
    cold = (time.process_time() - start) / rows * 1e6
    start = time.process_time()
    for request in requests:
        assert cache.lookup(request) is not None
    warm = (time.process_time() - start) / rows * 1e6
    cache.close()
    return cold, warm


def bench_e(folder: Path) -> None:
    print("(e) response cache, 20,000 rows, zero latency")
    rows = 20_000
    source = make_input(folder, rows, realistic=True)
    cpu: dict[str, list[float]] = {"none": [], "cold": []}
    with fake_server("--realistic") as url:
        job = write_job(folder, "e", url, concurrency=256, max_tokens=300)
        for attempt in range(2):
            for kind in ("none", "cold"):
                cache = folder / f"cold-{attempt}.sqlite" if kind == "cold" else None
                r = run_client(job, source, folder, cache=cache)
                assert r["requests"] == rows, r
                cpu[kind].append(r["cpu_s"] / r["requests"] * 1000)
        warm = [
            run_client(
                job, source, folder, cache=folder / "cold-1.sqlite", output=folder / f"w{i}.parquet"
            )
            for i in range(2)
        ]
    none, cold = sorted(cpu["none"]), sorted(cpu["cold"])
    print(
        f"    live, no cache:   {', '.join(f'{v:.3f}' for v in none)} CPU-ms/request\n"
        f"    live, cold cache: {', '.join(f'{v:.3f}' for v in cold)} CPU-ms/request"
        f" ({sum(cold) / sum(none) - 1:+.1%} on the means; target within 10%)"
    )
    cold_us, warm_us = cache_work(folder)
    print(
        f"    the cache's own work, in process: {cold_us:.1f} CPU-us per cold request"
        f" (miss, store, flush), {warm_us:.1f} CPU-us per hit"
    )
    for r in warm:
        assert r["requests"] == 0, r
        assert r["cache_hits"] == rows, r
        print(
            f"    warm cache: {r['rows'] / r['wall_s']:,.0f} rows/s, {r['cpu_s'] / r['rows'] * 1000:.3f}"
            f" CPU-ms/row, {r['requests']} requests, {r['cache_hits']:,} hits, wall {r['wall_s']:.2f} s"
        )


def bench_c3(folder: Path) -> None:
    bench_c(folder, concurrency="auto")


CAPACITY = ("--slots", "8", "--token-ms", "4", "--batch-slowdown", "0.1")
SWEEP = (1, 2, 4, 6, 8, 10, 12, 16, 24, 32, 64, 128, 256)


def _steady(output: str) -> tuple[float, float, int]:
    """Rows/s between the 10th and 90th percentile of finish times, p50 latency (ms) of those
    rows, and the rows that hit a timeout (error or retried)."""
    df = pl.read_parquet(output).sort("finished_at")
    lo, hi = int(df.height * 0.1), int(df.height * 0.9)
    done = df["finished_at"]
    span_s = (done[hi] - done[lo]).total_seconds()
    middle = df[lo:hi]
    p50 = float(middle["latency_ms"].median() or 0.0)  # type: ignore[arg-type]
    timeouts = df.filter(pl.col("error_type") == "timeout").height
    return (hi - lo) / span_s, p50, timeouts


def _capacity_run(
    folder: Path, name: str, concurrency: int | str, rows: int, *extra: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    with fake_server(*CAPACITY, *extra) as url:
        job = write_job(folder, name, url, concurrency=concurrency, max_tokens=32)
        r = run_client(job, make_input(folder, rows), folder)
        stats = server_stats(url)
    return r, stats


def bench_f(folder: Path) -> None:
    print("(f) auto concurrency vs a sweep of fixed ones; fake: 8 slots, 4 ms/token, +10%/request")
    best, unloaded = 0.0, 0.0
    for n in SWEEP:
        rows = 150 if n == 1 else 600
        r, stats = _capacity_run(folder, f"e{n}", n, rows)
        rate, p50, timeouts = _steady(r["output"])
        unloaded = unloaded or p50
        best = max(best, rate)
        print(
            f"    fixed {n:>3}: {rate:6.1f} rows/s, p50 {p50:6.0f} ms ({p50 / unloaded:4.1f}x unloaded),"
            f" timeouts {timeouts}, server peak in flight {stats['peak_in_flight']}"
        )
    r, stats = _capacity_run(folder, "e-auto", "auto", 3000)
    rate, p50, timeouts = _steady(r["output"])
    history = r["concurrency_history"]
    limits = [limit for _, limit in history]
    print(
        f"    auto     : {rate:6.1f} rows/s = {rate / best:.1%} of the best fixed (target >= 90%),"
        f" p50 {p50:.0f} ms = {p50 / unloaded:.2f}x unloaded (target <= 2x), timeouts {timeouts}"
        f" (target 0); limit {limits[-1]} at the end, {min(limits)}-{max(limits)},"
        f" {len(limits) - 1} changes, {r['wall_s']:.0f} s"
    )
    print(f"    limit over time (s: limit): {_condensed(history)}")


def _condensed(history: list[list[float]], every_s: float = 5.0) -> str:
    """The limit at every ``every_s`` seconds."""
    points, limit, index = [], 0, 0
    end = history[-1][0] if history else 0.0
    t = 0.0
    while t <= end + every_s:
        while index < len(history) and history[index][0] <= t:
            limit = int(history[index][1])
            index += 1
        points.append(f"{t:.0f}: {limit}")
        t += every_s
    return ", ".join(points)


def bench_g(folder: Path) -> None:
    print("(g) auto concurrency, the slots halved (8 -> 4) 30 s after the first request")
    r, stats = _capacity_run(folder, "f-auto", "auto", 3000, "--slots-schedule", "30:4")
    history = r["concurrency_history"]
    _, _, timeouts = _steady(r["output"])
    before = [limit for at, limit in history if 15 <= at < 30]
    followed = next((at for at, limit in history if at >= 30 and limit <= 6), None)
    after = [limit for at, limit in history if at >= 45]
    lag = f"{followed - 30:.1f} s" if followed is not None else "never"
    print(
        f"    limit before {min(before, default=0)}-{max(before, default=0)}; at or under 6 {lag} after"
        f" the halving (target <= 10 s); after {min(after, default=0)}-{max(after, default=0)};"
        f" timeouts {timeouts} (target 0), 503s {stats['by_status'].get('503', 0)}, wall {r['wall_s']:.0f} s"
    )
    print(f"    limit over time (s: limit): {_condensed(history)}")


SCENARIOS = {
    "a2": bench_a2,
    "c": bench_c,
    "c2": bench_c2,
    "c3": bench_c3,
    "e": bench_e,
    "f": bench_f,
    "g": bench_g,
}


def main(argv: list[str]) -> int:
    from tests.bench import memory, side  # they use this module's harness

    scenarios = dict(sorted((SCENARIOS | side.SCENARIOS | memory.SCENARIOS).items()))
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument(
        "--client-root", type=Path, help="run the pipeline from this checkout (default: this one)"
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=", ".join(scenarios))
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in scenarios]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (known: {', '.join(scenarios)})")
    global CLIENT_ROOT
    if args.client_root is not None:
        CLIENT_ROOT = args.client_root.resolve()
        if not (CLIENT_ROOT / "pipeline" / "cli.py").is_file():
            parser.error(f"--client-root {args.client_root}: not a checkout of the pipeline")
    imported = subprocess.run(
        [sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
        cwd=CLIENT_ROOT,
        env=client_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(imported).is_relative_to(CLIENT_ROOT):
        parser.error(f"client processes would import the pipeline from {imported}")
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        folder = Path(tmp)
        print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}")
        print(f"client: {_describe(CLIENT_ROOT)}; fake server and peer: {_describe(ROOT)}")
        for name in args.scenarios or list(scenarios):
            scenarios[name](folder)
    return 0


def _describe(root: Path) -> str:
    """A checkout and its commit (with "+changes" when its work tree differs)."""
    head = subprocess.run(
        ["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{root} at {head or '?'}{' +changes' if dirty else ''}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
