"""``pipeline fake-server``: run the fake server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from pipeline.fake.config import FakeConfig
from pipeline.fake.profiles import PROFILES, profile
from pipeline.fake.server import serve

_NOT_CONFIG = frozenset({"host", "port", "api_key_env", "profile"})
"""Arguments that are not FakeConfig fields; every other flag's dest is one."""


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
        options = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
        config = FakeConfig.from_options(**options, api_key=api_key, profile=profile(args.profile))
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
    parser.add_argument("--rpm", type=int, dest="requests_per_minute", help="requests per minute")
    parser.add_argument("--tpm", type=int, dest="tokens_per_minute", help="tokens per minute")
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
        "--cached-share",
        type=float,
        default=0.0,
        metavar="S",
        help="report S of prompt tokens as cached",
    )
    return parser
