"""One benchmarked client run, in its own process: prints a JSON line of measurements.

CPU and peak RSS are this process's own (``getrusage``); CPU is counted around the
run only, so interpreter start-up and imports are left out of the per-request figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import anyio

from pipeline.absent import keep_out
from tests.bench.rss import peak_rss_mb


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job", type=Path)
    parser.add_argument("--input", type=Path)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--transport", choices=["aiohttp", "httpcore"], default="aiohttp")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help="a response cache file")
    args = parser.parse_args()
    keep_out()  # as ``pipeline run`` does: before the run's modules load
    from pipeline.log import configure_logging
    from pipeline.runner import Runner, api_key_for, plan_run
    from pipeline.spec import load_job

    job = load_job(args.job)
    with args.log.open("w") as log_stream:
        configure_logging(stream=log_stream)
        plan = plan_run(job, input_path=args.input, output_path=args.output)
        transport = None
        if args.transport == "httpcore":
            import httpx

            concurrency = job.limits.most_in_flight
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=concurrency, max_keepalive_connections=concurrency
                )
            )
        runner = Runner(
            plan, api_key=api_key_for(job), transport=transport, fresh=True, cache_path=args.cache
        )
        cpu_before, wall_before = _cpu_s(), time.perf_counter()
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        user_before, sys_before = usage_before.ru_utime, usage_before.ru_stime
        summary = anyio.run(runner.run, backend="asyncio")
        cpu, wall = _cpu_s() - cpu_before, time.perf_counter() - wall_before
    print(
        json.dumps(
            {
                "rows": summary.rows_total,
                "ok": summary.rows_ok,
                "errors": summary.errors_by_type,
                "requests": summary.requests_sent,
                "cache_hits": summary.cache_hits,
                "cpu_s": cpu,
                "user_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime - user_before,
                "sys_s": resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys_before,
                "wall_s": wall,
                "max_rss_mb": peak_rss_mb(),
                "concurrency_history": list(summary.concurrency_history),
            }
        )
    )


if __name__ == "__main__":
    main()
