"""``pipeline fake-server``: run the fake server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import sys

from pipeline.fake.config import OPTIONS, FakeConfig
from pipeline.fake.profiles import PROFILES, profile
from pipeline.fake.server import serve

_FLAGGED = {option.flag: option for option in OPTIONS.values() if option.flag is not None}
"""The settings that are flags of their own, by flag (``api_key`` and ``profile`` come from
``--api-key-env`` and ``--profile``)."""


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
        options = {option.name: getattr(args, option.name) for option in _FLAGGED.values()}
        config = FakeConfig.from_options(**options, api_key=api_key, profile=profile(args.profile))
    except ValueError as exc:
        parser.error(str(exc))
    warning = exposure_warning(args.host)
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    asyncio.run(_serve_until_signalled(config, args.host, args.port))
    return 0


def exposure_warning(host: str) -> str | None:
    """A warning when ``host`` is not a loopback address: the fake answers anyone who can
    reach it, and records what they send (``/stats`` serves it back)."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        pass  # a host name: it may resolve to anything
    return (
        f"warning: listening on {host}, not a loopback address: anyone who can reach it may"
        " use this server and read /stats; use --host 127.0.0.1 unless that is what you want"
    )


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
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--api-key-env", metavar="NAME", help="require the key held in this environment variable"
    )
    parser.add_argument(
        "--profile",
        default=OPTIONS["profile"].default.name,
        choices=list(PROFILES),
        help=OPTIONS["profile"].help,
    )
    for flag, option in _FLAGGED.items():
        if option.kind is bool:  # --realistic / --no-realistic
            parser.add_argument(
                flag,
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=option.default,
                help=option.help,
            )
            continue
        parser.add_argument(
            flag,
            dest=option.name,
            type=option.kind,
            default=option.default,
            metavar=option.metavar,
            help=option.help,
        )
    return parser
