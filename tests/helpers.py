"""Plain helpers the test modules share (fixtures live in ``conftest.py``).

Job files from dicts (``make_job``, ``to_toml``, ``write_job``), input files
(``write_parquet``, ``write_jsonl``), a run of ``pipeline run`` read back (``run_job``), the
repository root and the types of the fake-server fixtures.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web

from pipeline.cli import main
from pipeline.fake import FakeServer

REPO = Path(__file__).resolve().parents[1]
"""The repository root (``jobs/``, ``examples/``, and the working directory of subprocesses)."""


class FakeFactory(Protocol):
    """The ``fake_server`` fixture: start a fake server with these ``FakeConfig`` fields."""

    def __call__(self, **config: Any) -> FakeServer: ...


Reviews = Callable[[int], Path]
"""The ``reviews`` fixture: write a Parquet input of N reviews and return its path."""

Start = Callable[..., tuple[FakeServer, httpx.Client]]
"""The fake-server tests' ``start`` fixtures: a started server and a client pointed at it."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
        )
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(job: dict[str, Any]) -> str:
    """A job dict (top-level scalars, then one level of tables) as TOML text."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in job.items() if not isinstance(v, dict)]
    for section, table in job.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def make_job(
    input_path: Path, base_url: str, output: Path, **sections: dict[str, Any]
) -> dict[str, Any]:
    """A job dict with sensible test defaults; ``sections`` override keys per table."""
    job: dict[str, Any] = {
        "name": "test",
        "input": {
            "path": str(input_path),
            "id_column": "review_id",
            "prompt_column": "text",
            "keep_columns": ["product_id"],
        },
        "request": {"model": "gpt-4o-mini", "max_tokens": 32, "seed": 7},
        "endpoint": {"base_url": base_url, "timeout_s": 10},
        # tests of error rows accept any share of them (the default, 0.1, has its own tests)
        "limits": {"concurrency": 32, "max_error_rate": 1.0},
        "retry": {"max_attempts": 8, "initial_backoff_s": 0.01, "max_backoff_s": 0.2},
        "output": {"path": str(output)},
    }
    for name, values in sections.items():
        job.setdefault(name, {}).update(values)
    return job


def write_job(tmp_path: Path, job: dict[str, Any], name: str = "job.toml") -> Path:
    """Write a job dict as a TOML file in ``tmp_path``."""
    path = tmp_path / name
    path.write_text(to_toml(job), encoding="utf-8")
    return path


def run_job(
    tmp_path: Path, job: dict[str, Any], *args: str, name: str = "job.toml"
) -> pl.DataFrame:
    """Write ``job``, run ``pipeline run`` on it (with ``args``), assert it exits 0, and return
    its output."""
    assert main(["run", str(write_job(tmp_path, job, name)), *args]) == 0
    return pl.read_parquet(job["output"]["path"])


def write_parquet(
    path: Path, columns: dict[str, list[Any]], schema: pa.Schema | None = None
) -> Path:
    """Write ``columns`` as Parquet in row groups of 4 rows (so small inputs have several)."""
    pq.write_table(pa.table(columns, schema=schema), path, row_group_size=4)
    return path


def write_jsonl(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    """Write one JSON line per dict; a string is written as it is (a broken line)."""
    text = "\n".join(
        line if isinstance(line, str) else orjson.dumps(line).decode() for line in lines
    )
    path.write_text(text + "\n", encoding="utf-8")
    return path


@contextlib.asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A one-route aiohttp server on a free loopback port; yields its base URL."""
    app = web.Application()
    app.router.add_route("*", "/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()
