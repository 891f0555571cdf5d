"""Run a peer script in this process as ``__main__`` and write what it cost as JSON.

    python -m tests.bench.measure --report FILE [--timeout-s S] SCRIPT [ARG ...]

The report holds the script's CPU seconds (user + system, ``getrusage``) and wall seconds
from just before the script starts to its end, and the process's peak RSS: the same
figures ``tests/bench/client.py`` reports for a pipeline run, except that the script's
own imports are inside them (the benchmark subtracts a run of the script on no
requests). ``--timeout-s`` sets aiohttp's default timeout (a session made without one,
as the cookbook's script makes it), so a hanging request fails after S seconds there as
it does in the pipeline's job.

The cookbook's script reads the endpoint from the URL with patterns that start
``^https://``; the fake server is plain HTTP on loopback, so a script with such patterns
runs from a copy where they read ``^https?://`` (nothing else changes).
"""

from __future__ import annotations

import argparse
import json
import resource
import runpy
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.rss import peak_rss_mb

_HTTPS_ONLY = "^https://"


def _runnable(script: str, folder: str) -> str:
    """``script``, or a copy of it whose https-only URL patterns also accept http."""
    source = Path(script).read_text(encoding="utf-8")
    if _HTTPS_ONLY not in source:
        return script
    copy = Path(folder) / Path(script).name
    copy.write_text(source.replace(_HTTPS_ONLY, "^https?://"), encoding="utf-8")
    return str(copy)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", required=True)
    parser.add_argument("--timeout-s", type=float)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.timeout_s is not None:
        import aiohttp.client

        aiohttp.client.DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=args.timeout_s)  # type: ignore[misc]
    with tempfile.TemporaryDirectory(prefix="peer-") as folder:
        script = _runnable(args.script, folder)
        sys.argv = [script, *args.args]
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        code: object = 0
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as exc:
            code = exc.code
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report = {"cpu_s": cpu, "wall_s": wall, "max_rss_mb": peak_rss_mb(), "exit": code}
    with open(args.report, "w") as out:
        json.dump(report, out)
    return 0 if code in (0, None) else 1


if __name__ == "__main__":
    sys.exit(main())
