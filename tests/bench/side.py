"""The side-by-side scenarios: the pipeline and a peer script in one sitting, against the
same fake server answering as api.openai.com does (``--realistic``).

The peer is ``tests/bench/peer.py`` (our re-implementation of the OpenAI cookbook's
``api_request_parallel_processor.py`` design), or the real script when ``PEER_SCRIPT``
names it. It runs in its own process under ``tests/bench/measure.py``, which reports its
CPU, wall time and peak RSS as ``tests/bench/client.py`` reports the pipeline's; the
script's start-up (imports) is taken out by subtracting a run on no requests. Its limits
are set far above anything reached (the cookbook script has no concurrency setting: its
aiohttp session holds at most 100 connections).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl

from tests.bench import run as harness
from tests.bench.run import ROOT, RUN_TIMEOUT_S, fake_server, make_input, server_stats, write_job

PEER_SCRIPT = Path(os.environ.get("PEER_SCRIPT") or ROOT / "tests" / "bench" / "peer.py")
REAL_PEER = bool(os.environ.get("PEER_SCRIPT"))
PEER_NAME = "cookbook script" if REAL_PEER else "peer.py"
TURN_NAME = "peer.py, 1 ms a turn"
UNBOUND_RPM = 100_000_000
UNBOUND_TPM = 100_000_000_000
MAX_TOKENS = 300
MODEL = "bench-model"
REPEATS = 5


def _line(name: str, *cells: str) -> None:
    print(f"    {name:<28}" + "".join(f"{cell:>15}" for cell in cells))


def peer_requests(folder: Path, source: Path, max_tokens: int = MAX_TOKENS) -> Path:
    """The requests the pipeline sends for ``source``, as the peer reads them: one JSON body
    a line, the row id in ``metadata``."""
    path = folder / f"{source.stem}-{max_tokens}.requests.jsonl"
    if not path.exists():
        df = pl.read_parquet(source)
        with path.open("w") as out:
            for row_id, text in zip(df["id"], df["text"], strict=True):
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": max_tokens,
                    "seed": 1,
                    "metadata": {"id": row_id},
                }
                out.write(json.dumps(body) + "\n")
    return path


def _measure(
    requests: Path,
    url: str,
    folder: Path,
    *,
    timeout_s: float | None,
    max_attempts: int,
    every_turn: bool = False,
) -> tuple[dict[str, Any], Path]:
    """One run of the peer under ``measure.py``: its report and its output file
    (``every_turn``: ``peer.py`` sleeping 1 ms on every turn of its loop, as the cookbook's)."""
    save = folder / f"{requests.stem}-peer-{time.monotonic_ns()}.jsonl"
    report = save.with_suffix(".report.json")
    command = [
        sys.executable, "-m", "tests.bench.measure", "--report", str(report),
        *(["--timeout-s", str(timeout_s)] if timeout_s is not None else []),
        str(PEER_SCRIPT),
        "--requests_filepath", str(requests), "--save_filepath", str(save),
        "--request_url", f"{url}/chat/completions",
        "--max_requests_per_minute", str(UNBOUND_RPM),
        "--max_tokens_per_minute", str(UNBOUND_TPM),
        "--token_encoding_name", "cl100k_base", "--max_attempts", str(max_attempts),
        "--logging_level", "30",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=ROOT,
        env=os.environ
        | {"OPENAI_API_KEY": "sk-bench-peer", "PEER_SLEEP_EVERY_TURN": "1" if every_turn else ""},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if done.returncode != 0 or not report.exists():
        raise RuntimeError(f"peer run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(report.read_text())
    return result, save


@cache
def _baseline(folder: Path, timeout_s: float | None) -> dict[str, Any]:
    """The peer's start-up: a run on no requests (with the same wrapper settings: with a
    timeout, the wrapper imports aiohttp before the script starts)."""
    empty = folder / "empty.requests.jsonl"
    empty.write_text("")
    result, _ = _measure(
        empty, "http://127.0.0.1:9/v1", folder, timeout_s=timeout_s, max_attempts=1
    )
    return result


def run_peer(
    requests: Path,
    url: str,
    folder: Path,
    *,
    timeout_s: float | None = None,
    max_attempts: int = 8,
    every_turn: bool = False,
) -> dict[str, Any]:
    """Run the peer on ``requests``; its CPU and wall time without start-up, peak RSS, and
    its rows: ok, failed, lost (never written) and duplicated (written more than once)."""
    base = _baseline(folder, timeout_s)
    result, save = _measure(
        requests, url, folder, timeout_s=timeout_s, max_attempts=max_attempts,
        every_turn=every_turn,
    )  # fmt: skip
    ids = Counter[str]()
    ok = 0
    with save.open() as lines:
        for line in lines:
            _, outcome, metadata = json.loads(line)
            ids[metadata["id"]] += 1
            ok += isinstance(outcome, dict) and "choices" in outcome
    with requests.open() as lines:
        sent = sum(1 for _ in lines)
    result |= {
        "cpu_s": max(result["cpu_s"] - base["cpu_s"], 1e-9),
        "wall_s": max(result["wall_s"] - base["wall_s"], 1e-9),
        "rows": sent,
        "ok": ok,
        "lost": sent - len(ids),
        "duplicated": sum(n - 1 for n in ids.values()),
    }
    return result


def _pipeline_rows(result: dict[str, Any], source: Path) -> dict[str, int]:
    """The pipeline's output rows against its input: ok, lost and duplicated."""
    done = pl.read_parquet(result["output"])
    wanted = set(pl.read_parquet(source, columns=["id"])["id"])
    got = set(done["id"])
    return {
        "ok": int((done["status"] == "ok").sum()),
        "lost": len(wanted - got),
        "duplicated": done.height - done["id"].n_unique(),
    }


def bench_a(folder: Path) -> None:
    rows = 20_000
    print(
        f"(a) {rows:,} requests at zero latency; realistic prompts and answers,"
        f" max_tokens {MAX_TOKENS}; pipeline concurrency 256"
    )
    source = make_input(folder, rows, realistic=True)
    with fake_server("--realistic") as url:
        job = write_job(folder, "a", url, concurrency=256, max_tokens=MAX_TOKENS)
        runs = {"pipeline": harness.run_client(job, source, folder)}
    for name, every_turn in ((PEER_NAME, False), (TURN_NAME, True))[: 1 if REAL_PEER else 2]:
        with fake_server("--realistic") as url:
            runs[name] = run_peer(peer_requests(folder, source), url, folder, every_turn=every_turn)
    _line("", "req/s", "CPU-ms/request", "peak RSS MB", "rows ok")
    cells = {}
    for name, r in runs.items():
        sent = r.get("requests", r["rows"])
        cells[name] = (sent / r["wall_s"], r["cpu_s"] / sent * 1000, r["max_rss_mb"])
        rate, cpu, rss = cells[name]
        _line(name, f"{rate:,.0f}", f"{cpu:.3f}", f"{rss:.0f}", f"{r['ok']:,}")
    rate, cpu, rss = cells.pop("pipeline")
    for name, (peer_rate, peer_cpu, peer_rss) in cells.items():
        _line(
            "pipeline vs peer" + (", 1 ms" if name == TURN_NAME else ""),
            f"{rate / peer_rate:.2f}x",
            f"{cpu / peer_cpu:.2f}x",
            f"{rss / peer_rss:.2f}x",
        )
    ratios = ", ".join(f"{rate / peer_rate:.2f}x" for peer_rate, _, _ in cells.values())
    print(
        f"    targets: <= 0.40 CPU-ms/request (now {cpu:.3f}),"
        f" >= 2x the peer's req/s (now {ratios})"
    )


def bench_b(folder: Path) -> None:
    rows, latency_s, concurrency = 5_000, 0.5, 256
    ideal = rows * latency_s / concurrency
    print(
        f"(b) {rows:,} requests at {latency_s * 1000:.0f} ms latency, concurrency {concurrency};"
        f" ideal {ideal:.2f} s (N x latency / concurrency)"
    )
    source = make_input(folder, rows, realistic=True)
    high = "requests_per_minute = 1000000\ntokens_per_minute = 1000000000"
    _line("", "wall s", "wall / ideal", "CPU-ms/request", "rows ok")
    for name, limits in (("pipeline, no limits", ""), ("pipeline, limits", high)):
        with fake_server("--realistic", "--latency-ms", str(latency_s * 1000)) as url:
            job = write_job(
                folder, f"b-{bool(limits)}", url, concurrency=concurrency, max_tokens=MAX_TOKENS,
                limits=limits,
            )  # fmt: skip
            r = harness.run_client(job, source, folder)
        _line(
            name,
            f"{r['wall_s']:.2f}",
            f"{r['wall_s'] / ideal:.3f}x",
            f"{r['cpu_s'] / r['requests'] * 1000:.3f}",
            f"{r['ok']:,}",
        )
    with fake_server("--realistic", "--latency-ms", str(latency_s * 1000)) as url:
        peer = run_peer(peer_requests(folder, source), url, folder)
    _line(
        f"{PEER_NAME} (100 conn.)",
        f"{peer['wall_s']:.2f}",
        f"{peer['wall_s'] / ideal:.3f}x",
        f"{peer['cpu_s'] / rows * 1000:.3f}",
        f"{peer['ok']:,}",
    )
    print("    target: <= 1.10x ideal, with limits (1,000,000 rpm, 10^9 tpm) and without")


FAULT_MIX = (
    "--latency-ms", "100", "--error-500-rate", "0.05", "--rate-limit-rate", "0.02",
    "--retry-after-s", "1", "--drop-rate", "0.01", "--hang-rate", "0.01", "--fault-seed", "7",
)  # fmt: skip


def bench_h(folder: Path) -> None:
    rows, timeout_s = 2_000, 5.0
    print(
        f"(h) {rows:,} rows, stray faults: 5% 500, 2% 429 (Retry-After 1), 1% drops, 1% hangs;"
        f" 100 ms, timeout {timeout_s:.0f} s, 8 attempts, no limits binding"
    )
    source = make_input(folder, rows, realistic=True)
    with fake_server("--realistic", *FAULT_MIX) as url:
        job = write_job(
            folder, "h", url, concurrency=128, max_tokens=MAX_TOKENS, timeout_s=timeout_s
        )
        mine = harness.run_client(job, source, folder)
        mine |= _pipeline_rows(mine, source)
        mine["429s"] = server_stats(url)["by_status"].get("429", 0)
        mine["received"] = server_stats(url)["received"]
    with fake_server("--realistic", *FAULT_MIX) as url:
        peer = run_peer(peer_requests(folder, source), url, folder, timeout_s=timeout_s)
        peer["429s"] = server_stats(url)["by_status"].get("429", 0)
        peer["received"] = server_stats(url)["received"]
    _line("", "wall s", "rows ok", "lost", "duplicated", "requests", "429s")
    for name, r in (("pipeline", mine), (PEER_NAME, peer)):
        _line(
            name,
            f"{r['wall_s']:.1f}",
            f"{r['ok']:,}",
            str(r["lost"]),
            str(r["duplicated"]),
            f"{r['received']:,}",
            str(r["429s"]),
        )
    _line("pipeline vs peer", f"{mine['wall_s'] / peer['wall_s']:.2f}x")
    print("    target: wall <= the peer's, 0 rows lost or duplicated")


def _median_wall(commands: list[list[str]], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Median wall time from spawn to exit of ``commands`` run one after another (each
    must exit 0)."""
    walls = []
    for command in commands:
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
        )
        walls.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return statistics.median(walls)


def bench_i(folder: Path) -> None:
    print(f"(i) start-up: wall from spawn to exit, median of {REPEATS}")
    client, env = harness.CLIENT_ROOT, harness.client_env()
    pipeline = [sys.executable, "-m", "pipeline"]
    source = make_input(folder, 1, realistic=True)
    requests = peer_requests(folder, source)
    with fake_server("--realistic") as url:
        job = write_job(
            folder, "i", url, concurrency=4, max_tokens=MAX_TOKENS, input_path=str(source)
        )
        one_row = _median_wall(
            [
                [*pipeline, "run", str(job), "--output", str(folder / f"i-{n}.parquet")]
                for n in range(REPEATS)
            ],
            client,
            env,
        )
        peer_run = [
            sys.executable, "-m", "tests.bench.measure", "--report", str(folder / "i.json"),
            str(PEER_SCRIPT), "--requests_filepath", str(requests),
            "--save_filepath", str(folder / "i-peer.jsonl"),
            "--request_url", f"{url}/chat/completions", "--logging_level", "30",
        ]  # fmt: skip
        peer = _median_wall(
            [peer_run] * REPEATS, ROOT, os.environ | {"OPENAI_API_KEY": "sk-bench-peer"}
        )
    helped = _median_wall([[*pipeline, "--help"]] * REPEATS, client, env)
    validated = _median_wall([[*pipeline, "validate", "jobs/demo.toml"]] * REPEATS, client, env)
    _line("", "wall s", "target s")
    _line("pipeline run, one row", f"{one_row:.3f}", "1.0")
    _line(f"{PEER_NAME}, one request", f"{peer:.3f}", "")  # under measure.py: a few ms more
    _line("pipeline --help", f"{helped:.3f}", "0.3")
    _line("pipeline validate demo", f"{validated:.3f}", "1.0")


def fake_charge(text: str, max_tokens: int) -> int:
    """Tokens the fake charges a one-message request against tokens/min: its prompt tokens
    (3, plus the message's tokens and 4) plus ``max_tokens``; a client can know it before
    sending by counting as the fake does."""
    from pipeline.fake.content import count_tokens

    return 3 + count_tokens(text) + 4 + max_tokens


def pipeline_estimate(text: str, max_tokens: int) -> int:
    """What this checkout's pipeline reserves for the same request before any answer has
    taught it the true ratio (its offline prompt estimate plus ``max_tokens``)."""
    from pipeline.requests.request import estimate_prompt_tokens

    return estimate_prompt_tokens([{"role": "user", "content": text}]) + max_tokens


def bench_c4(folder: Path) -> None:
    rows, rpm, tpm, latency_s, window_s = 1_000, 3_000, 1_200_000, 0.1, 1.0
    print(
        f"(c4) {rows:,} requests under {rpm:,} rpm / {tpm:,} tpm enforced by the fake as buckets"
        f" holding {window_s:.0f} s of quota, {latency_s * 1000:.0f} ms latency; the same limits"
        " in the job, concurrency 64"
    )
    source = make_input(folder, rows, realistic=True)
    texts = pl.read_parquet(source)["text"].to_list()
    charges = [fake_charge(text, MAX_TOKENS) for text in texts]
    estimates = [pipeline_estimate(text, MAX_TOKENS) for text in texts]
    limits = f"requests_per_minute = {rpm}\ntokens_per_minute = {tpm}"
    server = ("--realistic", "--latency-ms", str(latency_s * 1000), "--rpm", str(rpm))
    with fake_server(*server, "--tpm", str(tpm), "--limit-window-s", str(window_s)) as url:
        job = write_job(folder, "c4", url, concurrency=64, max_tokens=MAX_TOKENS, limits=limits)
        r = harness.run_client(job, source, folder)
        stats = server_stats(url)
    # the buckets start full (window_s of quota) and refill at limit / 60 per second
    last_admitted = max(
        (sum(charges) - tpm / 60 * window_s) / (tpm / 60),
        (rows - rpm / 60 * window_s) / (rpm / 60),
        0.0,
    )
    ideal = last_admitted + latency_s
    admitted_tokens = sum(stats["tokens_by_second"].values())
    received, refused = stats["received"], int(stats["by_status"].get("429", 0))
    print(
        f"    tokens charged per request: {statistics.mean(charges):.1f} by the fake (prompt as it"
        f" counts + max_tokens; it admitted {admitted_tokens:,} in all, computed"
        f" {sum(charges):,}); the pipeline's offline estimate"
        f" {statistics.mean(estimates):.1f} (it learns the ratio from usage)"
    )
    print(
        f"    wall {r['wall_s']:.2f} s, the limiter's ideal {ideal:.2f} s:"
        f" {r['wall_s'] / ideal:.3f}x (target <= 1.03x); 429s {refused} of {received:,}"
        f" requests = {refused / received:.2%} (target <= 0.5%); rows ok {r['ok']:,} of {rows:,}"
    )


SCENARIOS = {"a": bench_a, "b": bench_b, "c4": bench_c4, "h": bench_h, "i": bench_i}
