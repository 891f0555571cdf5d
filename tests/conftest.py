"""Shared fixtures: a fake server on loopback, and job files written from dicts."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.fake import FakeConfig, FakeServer, serve_in_thread


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


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    """Start fake servers (each on a free loopback port) that stop after the test."""
    with contextlib.ExitStack() as stack:

        def start(**config: Any) -> FakeServer:
            return stack.enter_context(serve_in_thread(FakeConfig(**config)))

        yield start


@pytest.fixture
def reviews(tmp_path: Path) -> Callable[[int], Path]:
    """Write a Parquet input of N rows (id, text, product_id) and return its path."""

    def make(rows: int) -> Path:
        path = tmp_path / f"reviews-{rows}.parquet"
        table = pa.table(
            {
                "review_id": [f"r{i:06d}" for i in range(rows)],
                "text": [
                    f"Review number {i}: the product works, mostly, and arrived on time."
                    for i in range(rows)
                ],
                "product_id": [f"P-{i % 7}" for i in range(rows)],
            }
        )
        pq.write_table(table, path)
        return path

    return make


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
        "limits": {"concurrency": 32},
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
