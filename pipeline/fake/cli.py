"""``pipeline fake-server``: run the fake server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from pipeline.fake.config import FakeConfig
from pipeline.fake.profiles import PROFILES, profile
from pipeline.fake.server import serve


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve, and return 0 once signalled."""
    parser = _parser()
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env is not None:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"environment variable {args.api_key_env} is not set or empty")
    try:
        config = FakeConfig(
            latency_s=args.latency_ms / 1000,
            latency_jitter_s=args.jitter_ms / 1000,
            requests_per_minute=args.rpm,
            tokens_per_minute=args.tpm,
            limit_window_s=args.limit_window_s,
            max_concurrency=args.max_concurrency,
            api_key=api_key,
            error_500_rate=args.error_500_rate,
            error_502_rate=args.error_502_rate,
            error_503_rate=args.error_503_rate,
            rate_limit_rate=args.rate_limit_rate,
            retry_after_s=args.retry_after_s,
            drop_rate=args.drop_rate,
            hang_rate=args.hang_rate,
            bad_request_rate=args.bad_request_rate,
            malformed_rate=args.malformed_rate,
            invalid_json_rate=args.invalid_json_rate,
            schema_mismatch_rate=args.schema_mismatch_rate,
            stream_cut_rate=args.stream_cut_rate,
            fault_seed=args.fault_seed,
            profile=profile(args.profile),
            cached_share=args.cached_share,
        )
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(_serve_until_signalled(config, args.host, args.port))
    return 0


async def _serve_until_signalled(config: FakeConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(config, host, port) as server:
        print(f"fake server listening on {server.base_url}", flush=True)
        await stop.wait()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline fake-server",
        description="Serve a fake OpenAI-compatible /chat/completions endpoint.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0, help="extra uniform(0, jitter)")
    parser.add_argument("--rpm", type=int, help="requests per minute")
    parser.add_argument("--tpm", type=int, help="tokens per minute")
    parser.add_argument("--limit-window-s", type=float, default=1.0, help="bucket window")
    parser.add_argument("--max-concurrency", type=int, help="429 beyond this many in flight")
    parser.add_argument(
        "--api-key-env", metavar="NAME", help="require the key held in this environment variable"
    )
    for fault in ("error-500", "error-502", "error-503", "rate-limit", "drop", "hang",
                  "bad-request", "malformed", "invalid-json", "schema-mismatch", "stream-cut"):  # fmt: skip
        parser.add_argument(f"--{fault}-rate", type=float, default=0.0, metavar="P")
    parser.add_argument(
        "--profile",
        default="openai-compatible",
        choices=list(PROFILES),
        help="behave like this server: its path, query, auth styles, headers and models",
    )
    parser.add_argument("--retry-after-s", type=float, default=1.0)
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument(
        "--cached-share", type=float, default=0.0, metavar="S", help="report S of prompt tokens as cached"
    )
    return parser
