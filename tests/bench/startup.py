"""(i) Start-up: how long a command takes before it does anything. Prints numbers.

    python -m tests.bench.startup

Wall time of ``pipeline --help``, ``pipeline validate jobs/demo.toml`` and a one-row
``pipeline run`` against the built-in fake server (``base_url = "fake"``, no latency),
each the median of 5 runs in a fresh process, against the targets 0.3 s, 1.0 s and
1.0 s; with each, the median CPU time of the process (steadier on a busy machine).

Bytecode caches are on: ``PYTHONDONTWRITEBYTECODE`` is removed from the commands'
environment and one untimed run of each comes first, as an installed package has its
``.pyc`` files (compiling the project's sources on every start adds about 0.2 s that no
user pays). Which modules each command may import is ``tests/test_cli_startup.py``'s.

The environment matters: packages the pipeline does not depend on are imported when they
are installed (numpy by pyarrow, about 0.1 s; pandas by pyarrow's first ``pa.array`` of a
list, about 0.25 s; rich by structlog and httpx), so the line above the numbers says
which of them are present (the ``[ray]`` extra brings numpy and pandas, ``[test]`` rich).
"""

from __future__ import annotations

import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.bench.run import ROOT, make_input, write_job

RUNS = 5
COMMAND_TIMEOUT_S = 120
OPTIONAL = ("numpy", "pandas", "rich")
"""Packages that slow start-up when installed, though the pipeline does not need them."""


def _pipeline() -> list[str]:
    """The ``pipeline`` console script beside this interpreter, else ``python -m pipeline``."""
    script = Path(sys.executable).with_name("pipeline")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline"]


def _timed(argv: list[str]) -> tuple[float, float]:
    """Run ``pipeline ARGV`` from the project's root: (wall s, CPU s of the process)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = _clock()
    done = subprocess.run(
        [*_pipeline(), *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    wall = _clock() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"pipeline {' '.join(argv)}: exit {done.returncode}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _clock() -> float:
    return os.times().elapsed


def _median(argv_for: Callable[[int], list[str]]) -> tuple[float, float]:
    """Median wall and CPU of RUNS runs, after one untimed run (it writes the bytecode)."""
    _timed(argv_for(0))
    runs = [_timed(argv_for(n)) for n in range(1, RUNS + 1)]
    return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)


def bench_i(folder: Path) -> None:
    present = [name for name in OPTIONAL if importlib.util.find_spec(name) is not None]
    print(
        f"(i) start-up: median of {RUNS} runs, each a fresh process;"
        f" installed of {', '.join(OPTIONAL)}: {', '.join(present) or 'none'}"
    )
    rows = make_input(folder, 1)
    job = write_job(folder, "i", "fake", concurrency=16, max_tokens=16)

    def one_row_run(n: int) -> list[str]:
        """A new output each time, so every timed run sends its row."""
        output = folder / f"i-{n}.parquet"
        return ["run", str(job), "--input", str(rows), "--output", str(output)]

    for label, target, argv_for in (
        ("pipeline --help", 0.3, lambda _: ["--help"]),
        ("pipeline validate jobs/demo.toml", 1.0, lambda _: ["validate", "jobs/demo.toml"]),
        ("pipeline run, one row, base_url fake", 1.0, one_row_run),
    ):
        wall, cpu = _median(argv_for)
        verdict = "ok" if wall <= target else "OVER"
        print(
            f"    {label:38s} wall {wall:5.2f} s (target <= {target:.1f}: {verdict}), CPU {cpu:5.2f} s"
        )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp:
        print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        bench_i(Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
